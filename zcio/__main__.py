"""The ``zcio`` command (also ``python -m zcio``): a thin client of the API."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, List, Optional

from . import __version__, bench, lowlevel


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
        description="Linux zero-copy I/O toolkit: benchmarks, copying and kernel feature report.",
    )
    p.add_argument("--version", action="version", version=f"zcio {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    b = sub.add_parser("bench", help="measure zcio's paths against the stdlib's (the main job)")
    bench.add_arguments(b)
    sub.add_parser("info", help="what this kernel and process can do (features())")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "info":
        print(format_features(lowlevel.features()))
        return 0
    if args.command == "bench":
        return bench.main(args)
    raise AssertionError(args.command)  # pragma: no cover - argparse rejects others


if __name__ == "__main__":
    sys.exit(main())
