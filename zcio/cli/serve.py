"""``zcio serve``: the command-line face of :class:`zcio.http.FileServer`.

``add_arguments(parser)`` adds the options (every number checked by an
argparse type, so a bad one is a one-line usage error); ``run(args)`` serves
until SIGINT or SIGTERM and returns the exit status.
"""
from __future__ import annotations

import argparse
import logging
import sys

from ..http import FileServer
from .errors import fail
from .limits import raise_fd_limit
from .loops import new_event_loop, serve_until_signal
from .options import port, positive_int, timeout

__all__ = ["add_arguments", "run"]

PROG = "zcio serve"
log = logging.getLogger("zcio.serve")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``zcio serve`` to ``parser``."""
    p = parser
    p.add_argument("directory", nargs="?", default=".", metavar="DIR", help="directory to serve (default: .)")
    p.add_argument("--bind", "-b", default="127.0.0.1", metavar="ADDRESS",
                   help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", "-p", type=port, default=8000, help="TCP port (default: 8000; 0 picks a free one)")
    p.add_argument("--uvloop", action="store_true", help="run on uvloop if it is installed (default: asyncio's loop)")
    p.add_argument("--quiet", "-q", action="store_true", help="no access log")
    p.add_argument("--no-listing", dest="listing", action="store_false",
                   help="404 for directories without index.html")
    p.add_argument("--max-connections", type=positive_int, default=1000, metavar="N",
                   help="open connections at most (default: 1000)")
    p.add_argument("--header-timeout", type=timeout, default=10.0, metavar="S",
                   help="seconds to receive a request head (default: 10)")
    p.add_argument("--idle-timeout", type=timeout, default=15.0, metavar="S",
                   help="keep-alive idle seconds (default: 15)")
    p.add_argument("--send-timeout", type=timeout, default=60.0, metavar="S",
                   help="seconds a client may stall a download (default: 60)")


def run(args: argparse.Namespace) -> int:
    """Run ``zcio serve`` with parsed ``args`` until SIGINT or SIGTERM.

    The access log and connection notes go to stderr (unless ``--quiet``).
    The soft RLIMIT_NOFILE is lifted to what ``--max-connections`` needs (a
    socket and a file per client).

    Returns:
        The exit status: 0 after a signal, 1 if the server could not start
        or failed.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.WARNING if args.quiet else logging.INFO)
    log.propagate = False
    raise_fd_limit(2 * args.max_connections + 64)
    loop, kind = new_event_loop(args.uvloop, prog=PROG)
    try:
        return loop.run_until_complete(_serve(args, kind))
    finally:
        loop.close()
        log.removeHandler(handler)


async def _serve(args: argparse.Namespace, kind: str) -> int:
    try:
        server = FileServer(
            args.directory, args.bind, args.port,
            max_connections=args.max_connections, header_timeout=args.header_timeout,
            idle_timeout=args.idle_timeout, send_timeout=args.send_timeout,
            listing=args.listing, access_log=not args.quiet,
        )
        await server.start()
    except (OSError, ValueError) as exc:
        return fail(PROG, exc)
    host, port = server.address
    shown = f"[{host}]" if ":" in host else host
    banner = f"{PROG}: {server.root} on http://{shown}:{port}/ ({kind}); Ctrl-C stops"
    failed = await serve_until_signal(server.serve_forever(), server.close, banner)
    if failed is not None:
        return fail(PROG, failed)
    return 0
