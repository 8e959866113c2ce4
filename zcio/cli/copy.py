"""``zcio copy SRC DST``: open the two ends and hand them to ``splice_pipe``."""
from __future__ import annotations

import argparse
import contextlib
import errno
import os
import stat
import sys
from collections.abc import Iterator

from .. import splice_pipe
from .errors import accounting, fail
from .options import byte_count, seconds
from .progress import ProgressBar

__all__ = ["add_arguments", "run"]

PROG = "zcio copy"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``zcio copy``."""
    p.add_argument("src", metavar="SRC", help="file to read ('-': standard input)")
    p.add_argument("dst", metavar="DST", help="file to write, created or truncated ('-': standard output)")
    p.add_argument("--count", type=byte_count, metavar="N", help="copy at most N bytes")
    p.add_argument("--offset", type=byte_count, metavar="N", help="start at byte N of SRC")
    p.add_argument("--timeout", type=seconds, metavar="S", help="give up after S seconds without progress")
    p.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="show a progress bar (default: when stderr is a terminal)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


class SameFile(Exception):
    """SRC and DST are one file: copying would destroy it."""


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    """One regular file (or block device) seen twice: a copy onto it would
    truncate or overwrite what it is about to read. (A socket on both stdin
    and stdout is one inode too, and copying it to itself is an echo.)"""
    kind = stat.S_IFMT(a.st_mode)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino) and kind in (stat.S_IFREG, stat.S_IFBLK)


@contextlib.contextmanager
def _opened(args: argparse.Namespace) -> Iterator[tuple[int, int, os.stat_result]]:
    """The source and destination fds, and the source's stat.

    The destination is opened without O_TRUNC and compared with the source
    (device and inode, so a hard link, a symlink or a /proc/self/fd path to
    the source is caught too) before it is truncated: nothing is lost when
    they turn out to be the same file.
    """
    with contextlib.ExitStack() as stack:
        if args.src == "-":
            src = 0
        else:
            src = os.open(args.src, os.O_RDONLY | os.O_CLOEXEC)
            stack.callback(os.close, src)
        st = os.fstat(src)
        if args.dst == "-":
            sys.stdout.flush()
            dst = 1
        else:
            mode = stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else 0o666
            dst = os.open(args.dst, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, mode)
            stack.callback(os.close, dst)
        dst_st = os.fstat(dst)
        if _same(st, dst_st):
            raise SameFile(f"{args.src!r} and {args.dst!r} are the same file")
        if args.dst != "-" and stat.S_ISREG(dst_st.st_mode):
            try:
                os.ftruncate(dst, 0)
            except OSError as exc:  # a file system whose files have no size to cut
                if exc.errno != errno.EINVAL:  # (where O_TRUNC is ignored): go on
                    raise
        yield src, dst, st


def _expected(src: int, st: os.stat_result, args: argparse.Namespace) -> int | None:
    """The bytes a regular file source will give (for the bar), else None."""
    if not stat.S_ISREG(st.st_mode):
        return None
    start = args.offset if args.offset is not None else os.lseek(src, 0, os.SEEK_CUR)
    total = max(0, st.st_size - start)
    return total if args.count is None else min(total, args.count)


def copy(args: argparse.Namespace) -> int:
    """Copy as ``args`` says; return the bytes that reached DST."""
    with _opened(args) as (src, dst, st):
        show = sys.stderr.isatty() if args.progress is None else args.progress
        bar = ProgressBar(sys.stderr, _expected(src, st, args)) if show else None
        try:
            return splice_pipe(src, dst, args.count, offset=args.offset, timeout=args.timeout, progress=bar)
        finally:
            if bar is not None:
                bar.close()


def run(args: argparse.Namespace) -> int:
    """``zcio copy``: 0 when done; 1 with one line on stderr when it failed
    (how many bytes were copied, when it got that far); 130 on Ctrl-C."""
    try:
        copy(args)
        return 0
    except KeyboardInterrupt as exc:  # splice_pipe sets the accounting on it
        moved = getattr(exc, "transferred", 0)
        pending = getattr(exc, "pending", b"")
        print(f"{PROG}: interrupted {accounting(moved, pending)}", file=sys.stderr)
        return 130
    except (OSError, ValueError, SameFile) as exc:  # TransferError included
        return fail(PROG, exc)
