"""``zcio proxy LISTEN TARGET``: run a :class:`zcio.relay.Relay` until SIGINT or SIGTERM."""
from __future__ import annotations

import argparse
import logging

from .errors import fail
from .limits import raise_fd_limit
from .loops import new_event_loop, serve_until_signal
from .options import positive_int

__all__ = ["add_arguments", "run"]

PROG = "zcio proxy"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``zcio proxy``."""
    p.add_argument("listen", metavar="LISTEN", help="host:port or port (127.0.0.1) to accept on")
    p.add_argument("target", metavar="TARGET", help="host:port or port (127.0.0.1) to connect to")
    p.add_argument("--max-connections", type=positive_int, default=1000, metavar="N",
                   help="most clients relayed at once (default 1000)")
    p.add_argument("--threads", type=positive_int, default=1, metavar="N",
                   help="relay engine threads (default 1)")
    p.add_argument("--engine", choices=("hub", "asyncio"), default="hub",
                   help="hub: accept and relay in zcio's C engine (default); asyncio: on the event loop")
    p.add_argument("--uvloop", action="store_true", help="with --engine asyncio: run on uvloop (if installed)")
    p.add_argument("-v", "--verbose", action="store_true", help="log each connection to stderr")


def _relay(args: argparse.Namespace) -> int:
    from ..relay import Relay, parse_address

    raise_fd_limit(2 * args.max_connections + 64)  # two sockets a client, pipes, the loop
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    relay = Relay(parse_address(args.listen), parse_address(args.target), max_connections=args.max_connections,
                  engine=args.engine, threads=args.threads, verbose=args.verbose)

    async def serve() -> BaseException | None:
        await relay.start()
        host, port = relay.address
        return await serve_until_signal(relay.serve_forever(), relay.close, f"{PROG}: {host}:{port} -> {args.target}")

    loop, _ = new_event_loop(args.uvloop, PROG)
    try:
        failed = loop.run_until_complete(serve())
    finally:
        loop.close()
    return 0 if failed is None else fail(PROG, failed)


def run(args: argparse.Namespace) -> int:
    """``zcio proxy``: 0 once stopped by a signal; 1 with one line on stderr
    when it cannot start (a bad address, a port in use)."""
    try:
        return _relay(args)
    except (OSError, ValueError) as exc:
        return fail(PROG, exc)
