"""``zcio info``: what this kernel and process can do, from ``features()``."""
from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from .. import __version__, features

__all__ = ["add_arguments", "format_features", "run"]


def _human(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "unknown"
    return str(value)


def _bytes(n: int | None) -> str:
    if n is None:
        return "unlimited"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


def format_features(f: Mapping[str, Any]) -> str:
    """``features()`` as an aligned, readable listing."""
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


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``zcio info`` takes no options."""


def run(args: argparse.Namespace) -> int:
    """Print the listing; 0."""
    print(format_features(features()))
    return 0
