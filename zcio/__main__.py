"""The ``zcio`` command (also ``python -m zcio``): a thin client of the API."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import signal
import stat
import sys
from typing import Any, Dict, List, Optional

from . import __version__, bench, lowlevel, serve
from ._errors import TransferError
from ._progress import ProgressBar
from .aio import new_event_loop
from .streams import splice_pipe


def _human(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "unknown"
    return str(value)


def _bytes(n: Optional[int]) -> str:
    if n is None:
        return "unlimited"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


def format_features(f: Dict[str, Any]) -> str:
    """features() as an aligned, readable listing."""
    soft, hard = f["rlimit_memlock"]
    lines = [
        ("zcio", __version__),
        ("kernel", f["kernel"]),
        ("sendfile", _human(f["sendfile"])),
        ("splice", _human(f["splice"])),
        ("tee", _human(f["tee"])),
        ("vmsplice", _human(f["vmsplice"])),
        ("copy_file_range", _human(f["copy_file_range"])),
        ("SO_ZEROCOPY on TCP", _human(f["so_zerocopy_tcp"])),
        ("SO_ZEROCOPY on UDP", _human(f["so_zerocopy_udp"])),
        ("io_uring", _human(f["io_uring"])),
        ("pipe size (default)", _bytes(f["pipe_default_size"])),
        ("pipe-max-size", _bytes(f["pipe_max_size"])),
        ("pipe-user-pages-soft", _human(f["pipe_user_pages_soft"]) + " pages (0: no limit)"),
        ("pipe-user-pages-hard", _human(f["pipe_user_pages_hard"]) + " pages (0: no limit)"),
        ("optmem_max (per socket)", _bytes(f["optmem_max"])),
        ("RLIMIT_MEMLOCK", f"{_bytes(soft)} soft, {_bytes(hard)} hard"),
    ]
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="zcio",
        description="Linux zero-copy I/O toolkit: benchmarks, copying and a kernel feature report.",
    )
    p.add_argument("--version", action="version", version=f"zcio {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    b = sub.add_parser("bench", help="measure zcio's paths against the stdlib's (the main job)")
    bench.add_arguments(b)
    sub.add_parser("info", help="what this kernel and process can do (features())")
    c = sub.add_parser("copy", help="copy SRC to DST by the cheapest kernel path ('-' is stdin/stdout)")
    c.add_argument("src", metavar="SRC")
    c.add_argument("dst", metavar="DST")
    c.add_argument("--count", type=int, default=None, help="copy at most this many bytes")
    c.add_argument("--offset", type=int, default=None, help="start at this offset of SRC")
    c.add_argument("--timeout", type=float, default=None, help="give up after this many seconds without progress")
    c.add_argument("--progress", dest="progress", action="store_true", default=None, help="show a progress bar (default: when stderr is a terminal)")
    c.add_argument("--no-progress", dest="progress", action="store_false")
    s = sub.add_parser("serve", help="serve DIR over HTTP/1.1 (GET/HEAD, Range, keep-alive) with sendfile")
    serve.add_arguments(s)
    x = sub.add_parser("proxy", help="relay TCP connections from LISTEN to TARGET (copy or splice, in C)")
    x.add_argument("listen", metavar="LISTEN", help="host:port or port (127.0.0.1) to accept on")
    x.add_argument("target", metavar="TARGET", help="host:port or port (127.0.0.1) to connect to")
    x.add_argument("--max-connections", type=int, default=1000, help="most clients relayed at once (default 1000)")
    x.add_argument("--threads", type=int, default=1, help="relay engine threads (default 1)")
    x.add_argument("--engine", choices=("hub", "asyncio"), default="hub",
                   help="hub: accept and relay in zcio's C engine (default); asyncio: on the event loop")
    x.add_argument("--uvloop", action="store_true", help="run on uvloop (if installed)")
    x.add_argument("-v", "--verbose", action="store_true", help="log each connection to stderr")
    return p


def raise_fd_limit(needed: int) -> int:
    """Lift the soft RLIMIT_NOFILE toward ``needed`` (at most the hard limit).

    A server for N connections needs about 2N fds (a relay) or N plus the
    files it serves; the usual soft limit of 1024 would make it fail with
    EMFILE long before its own bound. Returns the soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    return soft


def proxy(args: argparse.Namespace) -> int:
    """``zcio proxy``: run a Relay until SIGINT or SIGTERM."""
    from .relay import Relay, parse_address

    raise_fd_limit(2 * args.max_connections + 64)  # two sockets a client, pipes, the loop
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    relay = Relay(parse_address(args.listen), parse_address(args.target), max_connections=args.max_connections,
                  engine=args.engine, threads=args.threads, verbose=args.verbose)

    async def run() -> None:
        await relay.start()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        host, port = relay.address
        print(f"zcio proxy: {host}:{port} -> {args.target}", file=sys.stderr, flush=True)
        server = asyncio.ensure_future(relay.serve_forever())
        await stop.wait()
        server.cancel()
        await relay.close()
        await asyncio.gather(server, return_exceptions=True)

    loop, _ = new_event_loop(args.uvloop, warn="zcio proxy")
    try:
        loop.run_until_complete(run())
    finally:
        loop.close()
    return 0


def copy(args: argparse.Namespace) -> int:
    """``zcio copy``: open the two ends and hand them to splice_pipe."""
    src = 0 if args.src == "-" else os.open(args.src, os.O_RDONLY | os.O_CLOEXEC)
    dst = -1
    try:
        st = os.fstat(src)
        if args.dst == "-":
            sys.stdout.flush()
            dst = 1
        else:
            mode = stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else 0o666
            dst = os.open(args.dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        total = None
        if stat.S_ISREG(st.st_mode):
            start = args.offset if args.offset is not None else os.lseek(src, 0, os.SEEK_CUR)
            total = max(0, st.st_size - start)
            if args.count is not None:
                total = min(total, args.count)
        show = sys.stderr.isatty() if args.progress is None else args.progress
        bar = ProgressBar(sys.stderr, total) if show else None
        try:
            splice_pipe(src, dst, args.count, offset=args.offset, timeout=args.timeout, progress=bar)
        finally:
            if bar is not None:
                bar.close()
        return 0
    except TransferError as exc:
        print(
            f"zcio copy: {exc.strerror} after {exc.transferred} bytes "
            f"({len(exc.pending)} read but not written)",
            file=sys.stderr,
        )
        return 1
    finally:
        if args.src != "-":
            os.close(src)
        if dst > 1:
            os.close(dst)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "info":
        print(format_features(lowlevel.features()))
        return 0
    if args.command == "bench":
        return bench.main(args)
    if args.command == "copy":
        try:
            return copy(args)
        except OSError as exc:
            print(f"zcio copy: {exc}", file=sys.stderr)
            return 1
    if args.command == "serve":
        raise_fd_limit(2 * args.max_connections + 64)  # a socket and a file a client
        return serve.main(args)
    if args.command == "proxy":
        try:
            return proxy(args)
        except (OSError, ValueError) as exc:
            print(f"zcio proxy: {exc}", file=sys.stderr)
            return 1
    raise AssertionError(args.command)  # pragma: no cover - argparse rejects others


if __name__ == "__main__":
    sys.exit(main())
