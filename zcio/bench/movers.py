"""Byte-moving cases: file → TCP socket, TCP → TCP relay, file → file, file → pipe.

Each moves :func:`~zcio.bench.fixtures.data_size` bytes per sample with
:func:`zcio.splice_pipe` and with the stdlib's way (and, where one exists, a
peer: another common way of doing the same job), into the same fixed receiver.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
from collections.abc import Iterator
from typing import Callable

from .. import splice_pipe
from .fixtures import (
    Sink,
    Source,
    data_size,
    finish,
    make_file,
    set_pipe_size,
    spawn_pipe_sink,
    touch,
)
from .harness import Case, Contender, Sample, measure

__all__ = ["CASES"]

_HAVE_OS_SPLICE = hasattr(os, "splice")  # Python 3.10+


def _timed_send(send: Callable[[int, socket.socket], None], sink: Sink, path: str, size: int) -> Callable[[], Sample]:
    def run() -> Sample:
        touch()
        sock = sink.connect()
        fd = os.open(path, os.O_RDONLY)
        try:
            def body() -> int:
                send(fd, sock)
                finish(sock)
                return size

            return measure(body)
        finally:
            os.close(fd)
            sock.close()

    return run


@contextlib.contextmanager
def file_to_socket(tmp: str, quick: bool) -> Iterator[list[Contender]]:
    """A file sent over a TCP connection to the sink."""
    size = data_size(quick)
    path = make_file(tmp, "data.bin", size)
    sink = Sink()
    try:
        def z(fd: int, sock: socket.socket) -> None:
            splice_pipe(fd, sock)

        def std(fd: int, sock: socket.socket) -> None:
            with os.fdopen(os.dup(fd), "rb") as f:
                sock.sendfile(f)

        def rw(fd: int, sock: socket.socket) -> None:
            buf = bytearray(256 << 10)
            view = memoryview(buf)
            while True:
                n = os.readv(fd, [buf])
                if not n:
                    return
                sock.sendall(view[:n])

        yield [
            Contender("zcio", "zcio.splice_pipe", _timed_send(z, sink, path, size)),
            Contender("stdlib", "socket.sendfile", _timed_send(std, sink, path, size)),
            Contender("peer", "read + sendall", _timed_send(rw, sink, path, size)),
        ]
    finally:
        sink.close()


@contextlib.contextmanager
def socket_to_socket(tmp: str, quick: bool) -> Iterator[list[Contender]]:
    """A relay: a source process sends a file to us, we relay it to the sink."""
    size = data_size(quick)
    path = make_file(tmp, "data.bin", size)
    sink = Sink()
    listener = socket.create_server(("127.0.0.1", 0))
    src = Source(path, listener.getsockname()[1])

    def relay(move: Callable[[socket.socket, socket.socket], int]) -> Callable[[], Sample]:
        def run() -> Sample:
            touch()
            out = sink.connect()
            src.go()
            conn, _ = listener.accept()
            try:
                def body() -> int:
                    n = move(conn, out)
                    finish(out)
                    return n

                sample = measure(body)
            finally:
                conn.close()
                out.close()
            src.wait_sent()
            if sample.units != size:
                raise RuntimeError(f"relay moved {sample.units} of {size} bytes")
            return sample

        return run

    def z(a: socket.socket, b: socket.socket) -> int:
        return splice_pipe(a, b)

    def rw(a: socket.socket, b: socket.socket) -> int:
        buf = bytearray(256 << 10)
        view = memoryview(buf)
        total = 0
        while True:
            n = a.recv_into(buf)
            if not n:
                return total
            b.sendall(view[:n])
            total += n

    def spl(a: socket.socket, b: socket.socket) -> int:
        r, w = os.pipe()
        set_pipe_size(w)
        total = 0
        try:
            while True:
                n = os.splice(a.fileno(), w, 1 << 20)
                if not n:
                    return total
                while n:
                    k = os.splice(r, b.fileno(), n)
                    n -= k
                    total += k
        finally:
            os.close(r)
            os.close(w)

    contenders = [
        Contender("zcio", "zcio.splice_pipe", relay(z)),
        Contender("stdlib", "recv_into + sendall", relay(rw)),
    ]
    if _HAVE_OS_SPLICE:
        contenders.append(Contender("peer", "os.splice loop", relay(spl)))
    try:
        yield contenders
    finally:
        src.close()
        listener.close()
        sink.close()


@contextlib.contextmanager
def file_to_file(tmp: str, quick: bool) -> Iterator[list[Contender]]:
    """A file copied to a new file in the same directory."""
    size = data_size(quick)
    path = make_file(tmp, "data.bin", size)
    out = os.path.join(tmp, "copy.bin")

    def run(copy: Callable[[], None]) -> Callable[[], Sample]:
        def timed() -> Sample:
            touch()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(out)

            def body() -> int:
                copy()
                return size

            return measure(body)

        return timed

    def z() -> None:
        with open(path, "rb") as f, open(out, "wb") as g:
            splice_pipe(f, g)

    def std() -> None:
        shutil.copyfile(path, out)

    try:
        yield [
            Contender("zcio", "zcio.splice_pipe", run(z)),
            Contender("stdlib", "shutil.copyfile", run(std)),
        ]
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(out)


@contextlib.contextmanager
def file_to_pipe(tmp: str, quick: bool) -> Iterator[list[Contender]]:
    """A file written into a pipe whose reader splices to /dev/null."""
    size = data_size(quick)
    path = make_file(tmp, "data.bin", size)

    def run(move: Callable[[int, int], None]) -> Callable[[], Sample]:
        def timed() -> Sample:
            touch()
            r, w = os.pipe()
            set_pipe_size(w)
            fd = os.open(path, os.O_RDONLY)
            sink = spawn_pipe_sink(r)
            os.close(r)
            try:
                def body() -> int:
                    move(fd, w)
                    os.close(w)
                    sink.wait()
                    return size

                return measure(body)
            finally:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.close(w)
                sink.wait()

        return timed

    def z(fd: int, w: int) -> None:
        splice_pipe(fd, w)

    def spl(fd: int, w: int) -> None:
        while os.splice(fd, w, 1 << 20):
            pass

    def rw(fd: int, w: int) -> None:
        while True:
            data = os.read(fd, 1 << 20)
            if not data:
                return
            view = memoryview(data)
            while view:
                view = view[os.write(w, view) :]

    if _HAVE_OS_SPLICE:
        yield [
            Contender("zcio", "zcio.splice_pipe", run(z)),
            Contender("stdlib", "os.splice loop", run(spl)),
            Contender("peer", "os.read + os.write", run(rw)),
        ]
    else:  # os.splice is 3.10+: the stdlib's way is then read + write
        yield [
            Contender("zcio", "zcio.splice_pipe", run(z)),
            Contender("stdlib", "os.read + os.write", run(rw)),
        ]


CASES: list[Case] = [
    Case("file → TCP socket", "bytes", file_to_socket),
    Case("TCP → TCP relay", "bytes", socket_to_socket),
    Case("file → file", "bytes", file_to_file),
    Case("file → pipe", "bytes", file_to_pipe),
]
