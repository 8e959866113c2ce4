"""Small-call cases: the overhead of one zcio call beside the stdlib's.

Each moves 4 KiB per call, small enough that the call's own cost (argument
checks, fd resolution, errno handling) is what is measured.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Callable

from .. import lowlevel
from .harness import Case, Contender, Sample, measure

__all__ = ["CASES"]

_HAVE_OS_SPLICE = hasattr(os, "splice")  # Python 3.10+


def _calls(fn: Callable[[], object], n: int) -> Callable[[], Sample]:
    def run() -> Sample:
        def body() -> int:
            for _ in range(n):
                fn()
            return n

        return measure(body)

    return run


def _pairs(run: Callable[[], Sample]) -> Callable[[], Sample]:
    """Count each round of a ping-pong as its two calls."""

    def wrapped() -> Sample:
        s = run()
        return Sample(s.wall, s.cpu, s.units * 2)

    return wrapped


@contextlib.contextmanager
def splice_pingpong(tmp: str, quick: bool) -> Iterator[list[Contender]]:
    """4 KiB moved back and forth between two pipes: two calls a round."""
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    try:
        os.write(w1, b"x" * 4096)
        n = 100_000 if quick else 300_000
        zs = lowlevel.splice

        def z() -> None:
            zs(r1, w2, 4096)
            zs(r2, w1, 4096)

        contenders = [Contender("zcio", "zcio.splice", _pairs(_calls(z, n)))]
        if _HAVE_OS_SPLICE:
            oss = os.splice

            def o() -> None:
                oss(r1, w2, 4096)
                oss(r2, w1, 4096)

            contenders.append(Contender("stdlib", "os.splice", _pairs(_calls(o, n))))
        yield contenders
    finally:
        for fd in (r1, w1, r2, w2):
            os.close(fd)


@contextlib.contextmanager
def sendfile_devnull(tmp: str, quick: bool) -> Iterator[list[Contender]]:
    """4 KiB from a file at offset 0 to /dev/null: one call each."""
    path = os.path.join(tmp, "small.bin")
    with open(path, "wb") as f:
        f.write(os.urandom(4096))
    src = os.open(path, os.O_RDONLY)
    dst = os.open(os.devnull, os.O_WRONLY)
    try:
        n = 100_000 if quick else 300_000
        zsf, osf = lowlevel.sendfile, os.sendfile
        yield [
            Contender("zcio", "zcio.sendfile", _calls(lambda: zsf(dst, src, 0, 4096), n)),
            Contender("stdlib", "os.sendfile", _calls(lambda: osf(dst, src, 0, 4096), n)),
        ]
    finally:
        os.close(src)
        os.close(dst)


CASES: list[Case] = [
    Case("splice 4 KiB pipe ping-pong", "calls", splice_pingpong),
    Case("sendfile 4 KiB file→/dev/null", "calls", sendfile_devnull),
]
