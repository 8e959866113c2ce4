"""The ``zcio`` command (also ``python -m zcio``): a thin client of the API."""
from __future__ import annotations

import argparse
import os
import stat
import sys
from typing import Any, Dict, List, Optional

from . import __version__, bench, lowlevel
from ._errors import TransferError
from ._progress import ProgressBar
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
    return p


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
    raise AssertionError(args.command)  # pragma: no cover - argparse rejects others


if __name__ == "__main__":
    sys.exit(main())
