"""MSG_ZEROCOPY cases: sends over TCP loopback.

Contenders, per buffer size (64 KiB and 1 MiB): ``socket.sendall`` (the
stdlib), :class:`zcio.ZeroCopySender` with ``policy="always"`` and with
``policy="auto"``. Each contender has its own connection to one fixed
receiver -- a separate process that reads with ``recv_into`` and discards,
started once per case and identical for everyone. CPU is that of the sending
thread (:func:`~zcio.bench.harness.measure` uses RUSAGE_THREAD); a zcio run
ends with ``flush()``, so it includes reaping every completion.

Loopback always copies MSG_ZEROCOPY data (the completions say COPIED), so
"always" shows the cost of the notification machinery without its benefit,
and "auto" shows that the sender gets out of the way once it learned that.
The real gain needs a NIC (up to 70% fewer sender cycles in the kernel's
numbers).

:data:`CASES` holds one case per size, so each size has its own stdlib
baseline in the ratio column.
"""
from __future__ import annotations

import contextlib
import functools
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from typing import Callable

from .. import ZeroCopySender
from .harness import Case, Contender, Sample, measure

__all__ = ["CASES", "zerocopy_case"]

KiB = 1 << 10
MiB = 1 << 20

_RECEIVER = r"""
import os, socket, sys, threading
listener = socket.create_server(("127.0.0.1", 0), backlog=16)
print(listener.getsockname()[1], flush=True)
def drain(conn):
    buf = bytearray(1 << 20)
    with conn:
        while conn.recv_into(buf):
            pass
def accept():
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=drain, args=(conn,), daemon=True).start()
threading.Thread(target=accept, daemon=True).start()
sys.stdin.read()  # exit when the bench closes our stdin
os._exit(0)
"""


def _label(size: int) -> str:
    return f"{size // MiB} MiB" if size >= MiB else f"{size // KiB} KiB"


@contextlib.contextmanager
def _receiver() -> Iterator[tuple[str, int]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _RECEIVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield "127.0.0.1", port
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@contextlib.contextmanager
def zerocopy_case(
    tmp: str, quick: bool, sizes: Sequence[int] = (64 * KiB, 1 * MiB)
) -> Iterator[list[Contender]]:
    """TCP loopback sends of each buffer size: stdlib vs ZeroCopySender.

    Args:
        tmp: the bench's temp dir (unused: the data is generated in memory).
        quick: 256 MiB per sample instead of 1 GiB.
        sizes: buffer sizes; with more than one, every size's rows share the
            first stdlib row as baseline in ``harness.ratios`` -- register one
            case per size (see :data:`CASES`) for per-size ratios.

    Yields:
        Contenders: ``socket.sendall`` (stdlib), ``ZeroCopySender always`` and
        ``ZeroCopySender auto`` (zcio) for each size.
    """
    total = (256 if quick else 1024) * MiB
    with contextlib.ExitStack() as stack:
        address = stack.enter_context(_receiver())
        contenders: list[Contender] = []
        for size in sizes:
            buf = bytearray(os.urandom(size))
            count = max(1, total // size)
            for kind in ("stdlib", "always", "auto"):
                sock = stack.enter_context(socket.create_connection(address))
                sock.settimeout(None)
                if kind == "stdlib":
                    contenders.append(
                        Contender("stdlib", f"socket.sendall {_label(size)}", _stdlib(sock, buf, count))
                    )
                else:
                    z = stack.enter_context(ZeroCopySender(sock, policy=kind))
                    contenders.append(
                        Contender("zcio", f"ZeroCopySender {kind} {_label(size)}", _zcio(z, buf, count))
                    )
        yield contenders


def _stdlib(sock: socket.socket, buf: bytearray, count: int) -> Callable[[], Sample]:
    def run() -> Sample:
        buf[::4096] = buf[::4096]  # touch every page before the timed run

        def body() -> int:
            send = sock.sendall
            for _ in range(count):
                send(buf)
            return count * len(buf)

        return measure(body)

    return run


def _zcio(z: ZeroCopySender, buf: bytearray, count: int) -> Callable[[], Sample]:
    def run() -> Sample:
        z.flush()  # nothing from an earlier run may pin buf
        buf[::4096] = buf[::4096]

        def body() -> int:
            send = z.sendall
            for _ in range(count):
                send(buf)
            z.flush()
            return count * len(buf)

        return measure(body)

    return run


CASES: list[Case] = [
    Case(
        f"MSG_ZEROCOPY TCP send {_label(size)}",
        "bytes",
        functools.partial(zerocopy_case, sizes=(size,)),
    )
    for size in (64 * KiB, 1 * MiB)
]
