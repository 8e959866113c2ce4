"""Tests for zcio.lowlevel's data-moving wrappers.

sendfile, splice, tee, vmsplice and copy_file_range (send_zerocopy,
read_completions and parse_completions are in test_completions.py) move real
bytes across every kind of fd they support -- regular files, pipes, AF_UNIX
socketpairs, TCP over 127.0.0.1 and ::1 -- and are checked for exact return
values, exact bytes, file positions, argument validation, errno-to-exception
mapping, EINTR handling (PEP 475) and the GIL being released while blocked.

Everything is loopback only, bounded and sleep-free. Waits are polling loops
with a deadline (WATCHDOG) that is only ever reached by a failing test.
Property tests create and close their fds inside each example, because the
fd-leak fixture in conftest.py is per test function, not per example.
"""
from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import mmap
import os
import platform
import random
import resource
import select
import signal
import socket
import struct
import tempfile
import termios
import threading
import time
import traceback
from typing import Any, Callable, Iterator, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _net import needs_ipv6
import zcio
from zcio import lowlevel

WATCHDOG = 10.0  # seconds; reached only when something is broken
PROPERTY = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


# ----------------------------------------------------------------- helpers


STREAM_KINDS = ["unix", "tcp4", pytest.param("tcp6", marks=needs_ipv6)]


@contextlib.contextmanager
def connected(kind: str) -> Iterator[Tuple[socket.socket, socket.socket]]:
    """A connected pair of blocking stream sockets (a, b) of ``kind``."""
    if kind == "unix":
        a, b = socket.socketpair()
    else:
        family, host = (socket.AF_INET, "127.0.0.1") if kind == "tcp4" else (socket.AF_INET6, "::1")
        with socket.socket(family, socket.SOCK_STREAM) as listener:
            listener.bind((host, 0))
            listener.listen(1)
            a = socket.socket(family, socket.SOCK_STREAM)
            try:
                a.connect(listener.getsockname()[:2])
                b, _ = listener.accept()
            except BaseException:
                a.close()
                raise
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@contextlib.contextmanager
def os_pipe() -> Iterator[List[int]]:
    """[r, w]; an end may be closed early by setting its slot to -1."""
    ends = list(os.pipe())
    try:
        yield ends
    finally:
        for fd in ends:
            if fd >= 0:
                os.close(fd)


@contextlib.contextmanager
def regular_file(directory: Any, data: bytes = b"", pos: int = 0) -> Iterator[int]:
    """An unlinked regular file opened O_RDWR, holding ``data``, positioned at ``pos``."""
    fd, path = tempfile.mkstemp(dir=directory)
    os.unlink(path)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, pos, os.SEEK_SET)
        yield fd
    finally:
        os.close(fd)


class FdObj:
    """An object with fileno() that counts how often it is asked."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.calls = 0

    def fileno(self) -> int:
        self.calls += 1
        return self.fd


def position(fd: int) -> int:
    return os.lseek(fd, 0, os.SEEK_CUR)


def contents(fd: int) -> bytes:
    return os.pread(fd, os.fstat(fd).st_size + 1, 0)


def pending(fd: int) -> int:
    """Bytes waiting to be read from a pipe or socket (FIONREAD / SIOCINQ)."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def read_exact(fd: int, n: int) -> bytes:
    """Read exactly n bytes from a pipe, failing (not hanging) if they never come."""
    chunks = []
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while n > 0:
        assert poller.poll(WATCHDOG * 1000), f"{n} bytes never arrived"
        chunk = os.read(fd, n)
        assert chunk, f"EOF with {n} bytes still expected"
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    sock.settimeout(WATCHDOG)
    chunks = []
    while n > 0:
        chunk = sock.recv(n)
        assert chunk, f"EOF with {n} bytes still expected"
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recv_to_eof(sock: socket.socket) -> bytes:
    sock.settimeout(WATCHDOG)
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def overlay(base: bytes, at: int, chunk: bytes) -> bytes:
    """What a file holding ``base`` holds after ``chunk`` is written at ``at``."""
    if not chunk:
        return base
    base = base.ljust(at, b"\0")
    return base[:at] + chunk + base[at + len(chunk):]


def fill_pipe(w: int) -> int:
    """Fill a pipe to capacity with blocking writes; returns how many bytes."""
    size = fcntl.fcntl(w, lowlevel.lib.F_GETPIPE_SZ)
    os.write(w, b"f" * size)
    return size


def fill_socket(sock: socket.socket) -> int:
    """Fill a stream socket's send path until the kernel refuses more."""
    sock.setblocking(False)
    total = 0
    try:
        while True:
            total += sock.send(b"f" * 65536)
    except BlockingIOError:
        pass
    finally:
        sock.setblocking(True)
    return total


def drain_socket(sock: socket.socket) -> bytes:
    """Everything readable from ``sock`` right now, without blocking."""
    chunks = []
    sock.setblocking(False)
    try:
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    except BlockingIOError:
        pass
    finally:
        sock.setblocking(True)
    return b"".join(chunks)


def drain_pipe(r: int) -> bytes:
    chunks = []
    blocking = os.get_blocking(r)
    os.set_blocking(r, False)
    try:
        while True:
            chunk = os.read(r, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    except BlockingIOError:
        pass
    finally:
        os.set_blocking(r, blocking)
    return b"".join(chunks)


# Payloads: mostly small, sometimes up to 16 KiB (which fits a default pipe in
# at most 5 pages, so a single call's return value is exact).
payloads = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda n, seed: random.Random(seed).randbytes(n),
        st.integers(0, 16384),
        st.integers(0, 2**32),
    ),
)
SPLICE_FLAGS = st.sampled_from(
    [0, zcio.SPLICE_F_MOVE, zcio.SPLICE_F_MORE, zcio.SPLICE_F_MOVE | zcio.SPLICE_F_MORE]
)


@st.composite
def file_read_args(draw: Any) -> Tuple[bytes, int, Optional[int], int]:
    """(data, file position, offset or None, count), reaching past EOF at times."""
    data = draw(payloads)
    pos = draw(st.integers(0, len(data) + 10))
    offset = draw(st.none() | st.integers(0, len(data) + 100))
    count = draw(st.integers(0, len(data) + 100))
    return data, pos, offset, count


# ---------------------------------------------------------------- sendfile

SINK_KINDS = ["file", "pipe", "unix", "tcp4", pytest.param("tcp6", marks=needs_ipv6)]


@contextlib.contextmanager
def sink(kind: str, directory: Any) -> Iterator[Tuple[int, Callable[[int], bytes], Callable[[], int]]]:
    """(fd to write to, take(n) -> the next n bytes written, leftover() -> bytes not taken)."""
    if kind == "file":
        with regular_file(directory) as fd:
            taken = [0]

            def take_file(n: int) -> bytes:
                got = os.pread(fd, n, taken[0])
                taken[0] += len(got)
                assert position(fd) == taken[0], "the output file position did not advance"
                return got

            yield fd, take_file, lambda: os.fstat(fd).st_size - taken[0]
    elif kind == "pipe":
        with os_pipe() as (r, w):
            yield w, lambda n: read_exact(r, n), lambda: pending(r)
    else:
        with connected(kind) as (a, b):
            yield a.fileno(), lambda n: recv_exact(b, n), lambda: pending(b.fileno())


@pytest.mark.parametrize("kind", SINK_KINDS)
@PROPERTY
@given(args=file_read_args())
def test_sendfile_moves_bytes(tmp_path: Any, kind: str, args: Tuple[bytes, int, Optional[int], int]) -> None:
    data, pos, offset, count = args
    start = pos if offset is None else offset
    expected = data[start:start + count]
    with regular_file(tmp_path, data, pos) as src, sink(kind, tmp_path) as (dst, take, leftover):
        n = zcio.sendfile(dst, src, offset, count)
        assert n == len(expected)
        assert take(n) == expected
        assert leftover() == 0
        # offset=None uses and advances the position; an int leaves it alone.
        assert position(src) == (pos + n if offset is None else pos)


def test_sendfile_zero_at_eof(tmp_path: Any, pipe: Any) -> None:
    r, w = pipe()
    with regular_file(tmp_path, b"abc", 3) as src:
        assert zcio.sendfile(w, src, None, 10) == 0
        assert zcio.sendfile(w, src, 3, 10) == 0
        assert zcio.sendfile(w, src, 1000, 10) == 0
        assert zcio.sendfile(w, src, 1, 10) == 2  # beyond EOF: what exists
        assert position(src) == 3
    assert read_exact(r, 2) == b"bc"
    assert pending(r) == 0


# ------------------------------------------------------------------ splice

@PROPERTY
@given(args=file_read_args(), flags=SPLICE_FLAGS)
def test_splice_file_to_pipe(tmp_path: Any, args: Tuple[bytes, int, Optional[int], int], flags: int) -> None:
    data, pos, offset, count = args
    start = pos if offset is None else offset
    expected = data[start:start + count]
    with regular_file(tmp_path, data, pos) as src, os_pipe() as (r, w):
        n = zcio.splice(src, w, count, offset, None, flags)
        assert n == len(expected)
        assert read_exact(r, n) == expected
        assert pending(r) == 0
        assert position(src) == (pos + n if offset is None else pos)


@pytest.mark.parametrize("kind", ["pipe", "unix", "tcp4", pytest.param("tcp6", marks=needs_ipv6)])
@PROPERTY
@given(data=payloads, count=st.integers(0, 17000), eof=st.booleans(), flags=SPLICE_FLAGS)
def test_splice_stream_to_pipe(kind: str, data: bytes, count: int, eof: bool, flags: int) -> None:
    """From a pipe or a socket: at most ``count``, never more than is there."""
    target = min(count, len(data))
    with os_pipe() as out:
        if kind == "pipe":
            eof = eof or not data  # an empty pipe with a writer would (rightly) block
            with os_pipe() as src:
                os.write(src[1], data)
                if eof:
                    os.close(src[1])
                    src[1] = -1
                n = zcio.splice(src[0], out[1], count, flags=flags)
                # A pipe hands over everything it holds up to count, in one call.
                assert n == target
                assert read_exact(out[0], n) == data[:n]
                assert pending(out[0]) == 0
                assert drain_pipe(src[0]) == data[n:]
            return
        with connected(kind) as (a, b):
            a.sendall(data)
            if eof:
                a.shutdown(socket.SHUT_WR)
            # A socket may hand over less than it holds (one skb at a time,
            # or data still in flight), never more than asked for.
            moved = 0
            while moved < target:
                n = zcio.splice(b, out[1], count - moved, flags=flags)
                assert 0 < n <= count - moved
                moved += n
            if eof and count > target:
                assert zcio.splice(b, out[1], count - moved, flags=flags) == 0
            assert read_exact(out[0], moved) == data[:moved]
            assert pending(out[0]) == 0
            if not eof:
                a.shutdown(socket.SHUT_WR)
            assert recv_to_eof(b) == data[moved:]


@pytest.mark.parametrize("kind", ["file", "unix", "tcp4", pytest.param("tcp6", marks=needs_ipv6)])
@PROPERTY
@given(
    data=payloads,
    init=st.binary(max_size=64),
    pos=st.integers(0, 80),
    offset=st.none() | st.integers(0, 200),
    count=st.integers(0, 17000),
    eof=st.booleans(),
    flags=SPLICE_FLAGS,
)
def test_splice_pipe_to_sink(
    tmp_path: Any,
    kind: str,
    data: bytes,
    init: bytes,
    pos: int,
    offset: Optional[int],
    count: int,
    eof: bool,
    flags: int,
) -> None:
    eof = eof or not data  # an empty pipe with a writer would (rightly) block
    if kind != "file":
        offset = None  # sockets have no offset: see the ESPIPE cases below
    expected = data[:count]
    with os_pipe() as src:
        os.write(src[1], data)
        if eof:
            os.close(src[1])
            src[1] = -1
        if kind == "file":
            with regular_file(tmp_path, init, pos) as dst:
                n = zcio.splice(src[0], dst, count, None, offset, flags)
                assert n == len(expected)
                at = pos if offset is None else offset
                assert contents(dst) == overlay(init, at, expected)
                assert position(dst) == (pos + n if offset is None else pos)
        else:
            with connected(kind) as (a, b):
                # SPLICE_F_MORE would (rightly) make TCP hold back a partial segment.
                n = zcio.splice(src[0], a, count, flags=flags & ~zcio.SPLICE_F_MORE)
                assert n == len(expected)
                assert recv_exact(b, n) == expected
                a.shutdown(socket.SHUT_WR)
                assert recv_to_eof(b) == b""
        assert pending(src[0]) == len(data) - n
        assert drain_pipe(src[0]) == data[n:]


@PROPERTY
@given(data=payloads, count=st.integers(0, 17000))
def test_splice_pipe_to_pipe_is_a_move(data: bytes, count: int) -> None:
    with os_pipe() as src, os_pipe() as dst:
        os.write(src[1], data)
        if not data:
            os.close(src[1])
            src[1] = -1
        n = zcio.splice(src[0], dst[1], count)
        assert n == min(count, len(data))
        assert pending(src[0]) == len(data) - n
        assert read_exact(dst[0], n) == data[:n]
        assert drain_pipe(src[0]) == data[n:]


def test_splice_zero_at_eof(tmp_path: Any, pipe: Any, socketpair: Any) -> None:
    r, w = pipe()
    with regular_file(tmp_path, b"abc", 3) as f:
        assert zcio.splice(f, w, 10) == 0
        assert zcio.splice(f, w, 10, 3) == 0
        assert zcio.splice(f, w, 10, 1 << 40) == 0
        assert position(f) == 3
    r2, w2 = pipe()
    os.close(w2)  # conftest's factory tolerates ends closed by the test
    assert zcio.splice(r2, w, 10) == 0
    a, b = socketpair()
    a.shutdown(socket.SHUT_WR)
    assert zcio.splice(b, w, 10) == 0
    assert pending(r) == 0


# --------------------------------------------------------------------- tee


@PROPERTY
@given(data=payloads, count=st.integers(0, 17000), flags=st.sampled_from([0, zcio.SPLICE_F_NONBLOCK]))
def test_tee_duplicates_without_consuming(data: bytes, count: int, flags: int) -> None:
    with os_pipe() as src, os_pipe() as dst:
        os.write(src[1], data)
        if not data:
            os.close(src[1])
            src[1] = -1
        n = zcio.tee(src[0], dst[1], count, flags)
        assert n == min(count, len(data))
        assert read_exact(dst[0], n) == data[:n]
        assert pending(dst[0]) == 0
        assert pending(src[0]) == len(data)  # nothing consumed
        assert drain_pipe(src[0]) == data


def test_tee_zero_when_empty_without_writers(pipe: Any) -> None:
    r, w = pipe()
    r2, w2 = pipe()
    os.close(w)
    assert zcio.tee(r, w2, 100) == 0
    assert zcio.tee(r, w2, 100, zcio.SPLICE_F_NONBLOCK) == 0
    assert pending(r2) == 0


# ---------------------------------------------------------------- vmsplice

buffer_kinds = st.sampled_from(["bytes", "bytearray", "memoryview", "array", "slice"])


def as_buffer(kind: str, data: bytes) -> Any:
    if kind == "bytes":
        return data
    if kind == "bytearray":
        return bytearray(data)
    if kind == "memoryview":
        return memoryview(data)
    if kind == "array":
        return array.array("B", data)
    return memoryview(b"xx" + data + b"yy")[2:-2]  # an unaligned slice of a bigger object


@PROPERTY
@given(
    parts=st.lists(st.tuples(buffer_kinds, st.binary(max_size=4096)), max_size=8),
    container=st.sampled_from([list, tuple]),
    flags=st.sampled_from([0, zcio.SPLICE_F_NONBLOCK, zcio.SPLICE_F_GIFT]),
)
def test_vmsplice_moves_bytes(parts: List[Tuple[str, bytes]], container: Any, flags: int) -> None:
    # At most 8 buffers of at most a page each: at most 16 pipe slots, so the
    # whole lot fits a default pipe and the return value is exact.
    buffers = container(as_buffer(kind, data) for kind, data in parts)
    expected = b"".join(data for _, data in parts)
    with os_pipe() as (r, w):
        n = zcio.vmsplice(w, buffers, flags)
        assert n == len(expected)
        assert read_exact(r, n) == expected
        assert pending(r) == 0


def test_vmsplice_empty(pipe: Any) -> None:
    r, w = pipe()
    assert zcio.vmsplice(w, []) == 0
    assert zcio.vmsplice(w, ()) == 0
    assert zcio.vmsplice(w, [b"", bytearray(), memoryview(b"")]) == 0
    assert pending(r) == 0


def test_vmsplice_other_buffer_objects(pipe: Any) -> None:
    r, w = pipe()
    ints = array.array("i", [1, -2, 3])
    with mmap.mmap(-1, 4096) as m:
        m[:5] = b"mmap!"
        n = zcio.vmsplice(w, [ints, memoryview(m)[:5], memoryview(ints).cast("B")[4:8]])
    assert n == ints.itemsize * 3 + 5 + 4
    assert read_exact(r, n) == ints.tobytes() + b"mmap!" + ints.tobytes()[4:8]


@pytest.mark.parametrize("single", [b"abc", b"", bytearray(b"abc"), bytearray(), memoryview(b"abc"), "abc"])
def test_vmsplice_rejects_a_single_buffer(pipe: Any, single: Any) -> None:
    r, w = pipe()
    with pytest.raises(TypeError):
        zcio.vmsplice(w, single)
    assert pending(r) == 0


@pytest.mark.parametrize("bad", [1, None, "text", object()])
def test_vmsplice_rejects_non_buffers(pipe: Any, bad: Any) -> None:
    r, w = pipe()
    first = bytearray(b"first")
    with pytest.raises(TypeError):
        zcio.vmsplice(w, [first, bad])
    assert pending(r) == 0  # nothing written
    first.extend(b"!")  # and the buffer pinned before the failure was released
    assert first == b"first!"


def test_vmsplice_non_contiguous_buffer_is_refused(pipe: Any) -> None:
    r, w = pipe()
    with pytest.raises((BufferError, TypeError)):
        zcio.vmsplice(w, [memoryview(b"abcdef")[::2]])
    assert pending(r) == 0


def test_vmsplice_does_not_keep_a_pin(pipe: Any) -> None:
    r, w = pipe()
    buf = bytearray(b"resizable")
    assert zcio.vmsplice(w, [buf]) == 9
    assert read_exact(r, 9) == b"resizable"
    buf.extend(b" again")  # BufferError if an export were still held
    buf.clear()
    assert buf == b""


def test_vmsplice_nonblock_on_full_pipe(pipe: Any) -> None:
    r, w = pipe()
    size = fill_pipe(w)
    with pytest.raises(BlockingIOError) as info:
        zcio.vmsplice(w, [b"x"], zcio.SPLICE_F_NONBLOCK)
    assert info.value.errno == errno.EAGAIN
    assert pending(r) == size


def test_vmsplice_refuses_the_read_end(pipe: Any) -> None:
    """On a read-only fd the kernel's vmsplice copies pipe data *into* the
    buffers: an immutable bytes object would be overwritten. zcio refuses."""
    r, w = pipe()
    os.write(w, b"EVIL")
    victim = bytes(bytearray(b"good data"))
    with pytest.raises(OSError) as info:
        zcio.vmsplice(r, [victim])
    assert info.value.errno == errno.EBADF
    assert victim == b"good data"
    assert pending(r) == 4


def test_vmsplice_refuses_non_pipes(tmp_path: Any, socketpair: Any) -> None:
    a, _ = socketpair()
    with regular_file(tmp_path, b"x") as f:
        for fd in (f, a.fileno()):
            with pytest.raises(OSError) as info:
                zcio.vmsplice(fd, [b"abc"])
            assert info.value.errno == errno.EBADF
        assert contents(f) == b"x"


# --------------------------------------------------------- copy_file_range


@PROPERTY
@given(
    args=file_read_args(),
    init=st.binary(max_size=64),
    pos_dst=st.integers(0, 80),
    offset_dst=st.none() | st.integers(0, 200),
)
def test_copy_file_range_moves_bytes(
    tmp_path: Any,
    args: Tuple[bytes, int, Optional[int], int],
    init: bytes,
    pos_dst: int,
    offset_dst: Optional[int],
) -> None:
    data, pos_src, offset_src, count = args
    start = pos_src if offset_src is None else offset_src
    expected = data[start:start + count]
    with regular_file(tmp_path, data, pos_src) as src, regular_file(tmp_path, init, pos_dst) as dst:
        n = zcio.copy_file_range(src, dst, count, offset_src, offset_dst)
        assert n == len(expected)
        at = pos_dst if offset_dst is None else offset_dst
        assert contents(dst) == overlay(init, at, expected)
        assert contents(src) == data
        assert position(src) == (pos_src + n if offset_src is None else pos_src)
        assert position(dst) == (pos_dst + n if offset_dst is None else pos_dst)


def test_copy_file_range_within_one_file(tmp_path: Any) -> None:
    with regular_file(tmp_path, b"0123456789") as f:
        assert zcio.copy_file_range(f, f, 3, 0, 20) == 3
        assert contents(f) == b"0123456789" + b"\0" * 10 + b"012"
        with pytest.raises(OSError) as info:  # overlapping ranges
            zcio.copy_file_range(f, f, 5, 0, 2)
        assert info.value.errno == errno.EINVAL
        assert position(f) == 0


def test_copy_file_range_zero_at_eof(tmp_path: Any) -> None:
    with regular_file(tmp_path, b"abc", 3) as src, regular_file(tmp_path) as dst:
        assert zcio.copy_file_range(src, dst, 10) == 0
        assert zcio.copy_file_range(src, dst, 10, 3, 0) == 0
        assert zcio.copy_file_range(src, dst, 10, 1 << 40, None) == 0
        assert zcio.copy_file_range(src, dst, 10, 2, None) == 1
        assert contents(dst) == b"c"
        assert position(src) == 3


# ------------------------------------------- fd objects and argument checks


def test_objects_with_fileno_are_accepted(tmp_path: Any, pipe: Any, socketpair: Any) -> None:
    path = tmp_path / "src"
    path.write_bytes(b"0123456789")
    r, w = pipe()
    r2, w2 = pipe()
    a, b = socketpair()
    with open(path, "rb") as fsrc, open(tmp_path / "dst", "w+b") as fdst:
        # sendfile: socket object out, file object in, with and without offsets.
        assert zcio.sendfile(a, fsrc, 2, 3) == 3
        assert zcio.sendfile(a, fsrc, None, 2) == 2
        assert recv_exact(b, 5) == b"23401"
        # splice: file object -> pipe object, pipe object -> socket object.
        assert zcio.splice(fsrc, FdObj(w), 4, 6) == 4
        assert zcio.splice(FdObj(r), a, 4) == 4
        assert recv_exact(b, 4) == b"6789"
        # splice: socket object -> pipe, with the general (offset) path too.
        b.sendall(b"hello")
        assert zcio.splice(a, FdObj(w), 5) == 5
        # tee and splice between pipe objects, vmsplice on a pipe object.
        assert zcio.tee(FdObj(r), FdObj(w2), 5) == 5
        assert zcio.splice(FdObj(r), fdst, 5, None, 0) == 5
        assert zcio.vmsplice(FdObj(w), [b"vm"]) == 2
        assert read_exact(r, 2) == b"vm"
        assert read_exact(r2, 5) == b"hello"
        # copy_file_range between file objects.
        assert zcio.copy_file_range(fsrc, fdst, 3, 0, 5) == 3
        assert zcio.copy_file_range(fsrc, fdst, 2) == 2
        assert contents(fdst.fileno()) == b"23llo012"
        # Only the calls without offsets moved the positions: sendfile(None, 2)
        # and copy_file_range(None, None, 2) on fsrc, copy_file_range on fdst.
        assert position(fsrc.fileno()) == 4
        assert position(fdst.fileno()) == 2


@pytest.mark.parametrize(
    "call, nargs, result",
    [
        pytest.param(lambda f, g, r, w, s: zcio.sendfile(w, f, None, 3), 2, 3, id="sendfile"),
        pytest.param(lambda f, g, r, w, s: zcio.sendfile(w, f, 0, 3), 2, 3, id="sendfile-offset"),
        pytest.param(lambda f, g, r, w, s: zcio.splice(f, w, 3), 2, 3, id="splice"),
        pytest.param(lambda f, g, r, w, s: zcio.splice(f, w, 3, 0), 2, 3, id="splice-offset"),
        pytest.param(lambda f, g, r, w, s: zcio.tee(r, w, 3), 2, 3, id="tee"),
        pytest.param(lambda f, g, r, w, s: zcio.vmsplice(w, [b"abc"]), 1, 3, id="vmsplice"),
        pytest.param(lambda f, g, r, w, s: zcio.copy_file_range(f, g, 3, 0, 10), 2, 3, id="copy_file_range"),
        pytest.param(lambda f, g, r, w, s: zcio.copy_file_range(f, g, 3), 2, 3, id="copy_file_range-nooffset"),
        pytest.param(lambda f, g, r, w, s: zcio.send_zerocopy(s, b"abc"), 1, 3, id="send_zerocopy"),
        pytest.param(lambda f, g, r, w, s: zcio.read_completions(s), 1, [], id="read_completions"),
    ],
)
def test_fileno_is_resolved_once_per_call(
    tmp_path: Any, pipe: Any, socketpair: Any, call: Any, nargs: int, result: Any
) -> None:
    r, w = pipe()
    r_src, w_src = pipe()
    os.write(w_src, b"xyz")
    a, _ = socketpair()
    with regular_file(tmp_path, b"0123456789") as f, regular_file(tmp_path) as g:
        objs = [FdObj(f), FdObj(g), FdObj(r_src), FdObj(w), FdObj(a.fileno())]
        assert call(*objs) == result
    # Each object passed was asked for its fd exactly once (unused ones: 0).
    used = [o.calls for o in objs]
    assert max(used) == 1 and sum(used) == nargs, used


@pytest.mark.parametrize("bad", [1.5, "3", b"3", None, object()])
def test_non_int_fds_raise_type_error(tmp_path: Any, pipe: Any, bad: Any) -> None:
    r, w = pipe()
    os.write(w, b"data")
    with regular_file(tmp_path, b"0123") as f:
        calls = [
            lambda: zcio.sendfile(bad, f, None, 1),
            lambda: zcio.sendfile(w, bad, None, 1),
            lambda: zcio.sendfile(w, bad, 0, 1),
            lambda: zcio.splice(bad, w, 1),
            lambda: zcio.splice(r, bad, 1),
            lambda: zcio.splice(f, bad, 1, 0),
            lambda: zcio.tee(bad, w, 1),
            lambda: zcio.tee(r, bad, 1),
            lambda: zcio.vmsplice(bad, [b"x"]),
            lambda: zcio.copy_file_range(bad, f, 1),
            lambda: zcio.copy_file_range(f, bad, 1, 0, 0),
            lambda: zcio.send_zerocopy(bad, b"x"),
            lambda: zcio.read_completions(bad),
        ]
        for call in calls:
            with pytest.raises(TypeError):
                call()
        assert position(f) == 0
    assert pending(r) == 4


def test_fileno_returning_non_int_raises_type_error(pipe: Any) -> None:
    r, w = pipe()

    class Weird:
        def fileno(self) -> Any:
            return str(r)

    with pytest.raises(TypeError):
        zcio.splice(Weird(), w, 1)


@pytest.mark.parametrize("bad", [1.5, "1", None])
def test_non_int_counts_flags_offsets_raise_type_error(tmp_path: Any, pipe: Any, bad: Any) -> None:
    r, w = pipe()
    with regular_file(tmp_path, b"0123") as f:
        for call in (
            lambda: zcio.sendfile(w, f, None, bad),
            lambda: zcio.sendfile(w, f, 0, bad),
            lambda: zcio.splice(f, w, bad),
            lambda: zcio.splice(f, w, 1, 0, None, bad),
            lambda: zcio.tee(r, w, bad),
            lambda: zcio.vmsplice(w, [b"x"], bad),
            lambda: zcio.copy_file_range(f, f, bad),
        ):
            with pytest.raises(TypeError):
                call()
        if bad is not None:  # None is a valid offset
            for call in (
                lambda: zcio.sendfile(w, f, bad, 1),
                lambda: zcio.splice(f, w, 1, bad),
                lambda: zcio.copy_file_range(f, f, 1, None, bad),
            ):
                with pytest.raises(TypeError):
                    call()
        assert position(f) == 0
    assert pending(r) == 0


@pytest.mark.parametrize("wrap", [int, FdObj], ids=["int-fds", "fileno-objects"])
def test_negative_counts_offsets_flags_raise_value_error(tmp_path: Any, pipe: Any, wrap: Any) -> None:
    r, w = pipe()
    os.write(w, b"data")
    r2, w2 = pipe()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with regular_file(tmp_path, b"0123456789", 2) as f:
            F, R, W, W2, S = (wrap(x) for x in (f, r, w, w2, s.fileno()))
            calls = {
                "sendfile count": lambda: zcio.sendfile(W2, F, None, -1),
                "sendfile count+offset": lambda: zcio.sendfile(W2, F, 0, -1),
                "sendfile offset": lambda: zcio.sendfile(W2, F, -1, 1),
                "splice count": lambda: zcio.splice(R, W2, -1),
                "splice offset_src": lambda: zcio.splice(F, W2, 1, -1),
                "splice offset_dst": lambda: zcio.splice(R, F, 1, None, -5),
                "splice flags": lambda: zcio.splice(R, W2, 1, flags=-1),
                "splice flags+offset": lambda: zcio.splice(F, W2, 1, 0, None, -1),
                "tee count": lambda: zcio.tee(R, W2, -1),
                "tee flags": lambda: zcio.tee(R, W2, 1, -1),
                "vmsplice flags": lambda: zcio.vmsplice(W2, [b"x"], -1),
                "copy_file_range count": lambda: zcio.copy_file_range(F, F, -1),
                "copy_file_range offset_src": lambda: zcio.copy_file_range(F, F, 1, -1, 0),
                "copy_file_range offset_dst": lambda: zcio.copy_file_range(F, F, 1, 0, -1),
                "send_zerocopy flags": lambda: zcio.send_zerocopy(S, b"x", -1),
            }
            for name, call in calls.items():
                with pytest.raises(ValueError):
                    call()
                # Refused before any system call: nothing moved anywhere.
                assert pending(r) == 4, name
                assert pending(r2) == 0, name
                assert position(f) == 2, name
                assert contents(f) == b"0123456789", name
    finally:
        s.close()


# ------------------------------------------------------- kernel errors


ErrnoCase = Tuple[str, Callable[[], Any], type, int]


def _errno_cases(tmp_path: Any, pipe: Any, socketpair: Any) -> Tuple[List[ErrnoCase], List[int]]:
    """(name, call, exception class, errno) cases, and the fds to close after."""
    r, w = pipe()
    r2, w2 = pipe()
    a, _ = socketpair()
    dead = socket.socket()
    dead.close()  # fileno() is now -1

    def fd(name: str, flags: int, data: bytes = b"") -> int:
        path = tmp_path / name
        path.write_bytes(data)
        fd = os.open(path, flags)
        opened.append(fd)
        return fd

    opened: List[int] = []
    f1 = fd("f1", os.O_RDWR, b"0123456789")
    f2 = fd("f2", os.O_RDWR)
    app = fd("app", os.O_WRONLY | os.O_APPEND)
    wronly = fd("wo", os.O_WRONLY, b"0123456789")
    rdonly = fd("ro", os.O_RDONLY, b"0123456789")
    directory = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    opened.append(directory)
    # Closed last, so that no later open() reuses their numbers.
    closed_r, closed_w = os.pipe()
    os.close(closed_r)
    os.close(closed_w)
    cases = [
        ("sendfile closed in", lambda: zcio.sendfile(w, closed_r, None, 1), OSError, errno.EBADF),
        ("sendfile closed out", lambda: zcio.sendfile(closed_w, f1, 0, 1), OSError, errno.EBADF),
        ("sendfile closed socket", lambda: zcio.sendfile(dead, f1, None, 1), OSError, errno.EBADF),
        ("sendfile from pipe", lambda: zcio.sendfile(f2, r, None, 1), OSError, errno.EINVAL),
        ("sendfile from pipe with offset", lambda: zcio.sendfile(f2, r, 0, 1), OSError, errno.ESPIPE),
        ("sendfile to O_APPEND", lambda: zcio.sendfile(app, f1, 0, 1), OSError, errno.EINVAL),
        ("sendfile from write-only", lambda: zcio.sendfile(w, wronly, 0, 1), OSError, errno.EBADF),
        ("sendfile from directory", lambda: zcio.sendfile(w, directory, 0, 1), OSError, errno.EINVAL),
        ("splice closed", lambda: zcio.splice(closed_r, w, 1), OSError, errno.EBADF),
        ("splice closed with offset", lambda: zcio.splice(f1, closed_w, 1, 0), OSError, errno.EBADF),
        ("splice closed socket", lambda: zcio.splice(dead, w, 1), OSError, errno.EBADF),
        ("splice file to file", lambda: zcio.splice(f1, f2, 1), OSError, errno.EINVAL),
        ("splice file to file offsets", lambda: zcio.splice(f1, f2, 1, 0, 0), OSError, errno.EINVAL),
        ("splice same pipe", lambda: zcio.splice(r, w, 1), OSError, errno.EINVAL),
        ("splice offset on pipe src", lambda: zcio.splice(r, f2, 1, 0), OSError, errno.ESPIPE),
        ("splice offset on pipe dst", lambda: zcio.splice(f1, w, 1, None, 0), OSError, errno.ESPIPE),
        ("splice offsets on pipes", lambda: zcio.splice(r, w2, 1, 0, 0), OSError, errno.ESPIPE),
        ("splice from a write end", lambda: zcio.splice(w2, f2, 1), OSError, errno.EBADF),
        ("splice into a read end", lambda: zcio.splice(f1, r2, 1), OSError, errno.EBADF),
        ("splice unknown flag", lambda: zcio.splice(f1, w, 1, flags=0x10), OSError, errno.EINVAL),
        ("tee closed", lambda: zcio.tee(closed_r, w2, 1), OSError, errno.EBADF),
        ("tee from a file", lambda: zcio.tee(f1, w2, 1), OSError, errno.EINVAL),
        ("tee to a socket", lambda: zcio.tee(r, a, 1), OSError, errno.EINVAL),
        ("tee same pipe", lambda: zcio.tee(r, w, 1), OSError, errno.EINVAL),
        ("tee unknown flag", lambda: zcio.tee(r, w2, 1, 0x10), OSError, errno.EINVAL),
        ("vmsplice closed", lambda: zcio.vmsplice(closed_w, [b"x"]), OSError, errno.EBADF),
        ("vmsplice unknown flag", lambda: zcio.vmsplice(w2, [b"x"], 0x10), OSError, errno.EINVAL),
        ("copy_file_range closed", lambda: zcio.copy_file_range(closed_r, f2, 1), OSError, errno.EBADF),
        ("copy_file_range from pipe", lambda: zcio.copy_file_range(r, f2, 1), OSError, errno.EINVAL),
        ("copy_file_range to pipe", lambda: zcio.copy_file_range(f1, w2, 1), OSError, errno.EINVAL),
        ("copy_file_range to O_APPEND", lambda: zcio.copy_file_range(f1, app, 1), OSError, errno.EBADF),
        ("copy_file_range from write-only", lambda: zcio.copy_file_range(wronly, f2, 1), OSError, errno.EBADF),
        ("copy_file_range to read-only", lambda: zcio.copy_file_range(f1, rdonly, 1, 0, 0), OSError, errno.EBADF),
        ("copy_file_range from directory", lambda: zcio.copy_file_range(directory, f2, 1), IsADirectoryError, errno.EISDIR),
    ]
    return cases, opened


def test_kernel_errors_raise_the_matching_oserror(tmp_path: Any, pipe: Any, socketpair: Any) -> None:
    cases, opened = _errno_cases(tmp_path, pipe, socketpair)
    try:
        failures = []
        for name, call, exc_type, err in cases:
            try:
                result = call()
            except OSError as exc:
                if type(exc) is not exc_type or exc.errno != err:
                    failures.append(f"{name}: {type(exc).__name__} errno={exc.errno}, expected {exc_type.__name__} {errno.errorcode[err]}")
                elif exc.strerror != os.strerror(err):
                    failures.append(f"{name}: strerror {exc.strerror!r}")
            else:
                failures.append(f"{name}: returned {result!r}, expected {errno.errorcode[err]}")
        assert not failures, "\n".join(failures)
    finally:
        for fd in opened:
            os.close(fd)


def test_errno_subclasses(tmp_path: Any, pipe: Any, socketpair: Any) -> None:
    """EPIPE -> BrokenPipeError (SIGPIPE is ignored by Python), EAGAIN ->
    BlockingIOError, ECONNRESET -> ConnectionResetError, with .errno set."""
    # splice / vmsplice / tee / sendfile into a pipe whose reader is gone.
    r, w = pipe()
    rsrc, wsrc = pipe()
    os.write(wsrc, b"data")
    os.close(r)
    with regular_file(tmp_path, b"0123") as f:
        for call in (
            lambda: zcio.splice(f, w, 4),
            lambda: zcio.splice(f, w, 4, 0),
            lambda: zcio.splice(rsrc, w, 4),
            lambda: zcio.tee(rsrc, w, 4),
            lambda: zcio.vmsplice(w, [b"data"]),
            lambda: zcio.sendfile(w, f, 0, 4),
        ):
            with pytest.raises(BrokenPipeError) as info:
                call()
            assert info.value.errno == errno.EPIPE
    assert pending(rsrc) == 4
    # send_zerocopy on a socketpair whose peer is closed.
    a, b = socketpair()
    b.close()
    with pytest.raises(BrokenPipeError) as info:
        zcio.send_zerocopy(a, b"x")
    assert info.value.errno == errno.EPIPE


def test_connection_reset(tcp_pair: Any, pipe: Any) -> None:
    client, server = tcp_pair()
    client.settimeout(None)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    server.close()  # sends RST
    with pytest.raises(ConnectionResetError) as info:
        zcio.send_zerocopy(client, b"after the reset")
    assert info.value.errno == errno.ECONNRESET


def test_eagain_raises_blocking_io_error(tmp_path: Any, pipe: Any, socketpair: Any) -> None:
    r, w = pipe()
    r2, w2 = pipe()
    nb_r, nb_w = pipe()
    os.set_blocking(nb_r, False)
    a, b = socketpair()
    b.setblocking(False)
    with regular_file(tmp_path, b"0123") as f:
        calls = {
            "splice empty O_NONBLOCK pipe": lambda: zcio.splice(nb_r, w2, 10, flags=zcio.SPLICE_F_NONBLOCK),
            "splice empty pipe, SPLICE_F_NONBLOCK": lambda: zcio.splice(r, w2, 10, flags=zcio.SPLICE_F_NONBLOCK),
            "splice to file, SPLICE_F_NONBLOCK": lambda: zcio.splice(r, f, 10, None, 0, zcio.SPLICE_F_NONBLOCK),
            "tee empty pipe, SPLICE_F_NONBLOCK": lambda: zcio.tee(r, w2, 10, zcio.SPLICE_F_NONBLOCK),
            "splice empty O_NONBLOCK socket": lambda: zcio.splice(b, w2, 10),
        }
        for name, call in calls.items():
            with pytest.raises(BlockingIOError) as info:
                call()
            assert info.value.errno == errno.EAGAIN, name
        # Full destinations.
        size = fill_pipe(w2)
        with pytest.raises(BlockingIOError):
            zcio.splice(f, w2, 4, 0, None, zcio.SPLICE_F_NONBLOCK)
        os.write(w, b"abc")
        with pytest.raises(BlockingIOError):
            zcio.tee(r, w2, 3, zcio.SPLICE_F_NONBLOCK)
        with pytest.raises(BlockingIOError):
            zcio.splice(r, w2, 3, flags=zcio.SPLICE_F_NONBLOCK)
        assert pending(r) == 3 and pending(r2) == size
        fill_socket(a)
        a.setblocking(False)
        with pytest.raises(BlockingIOError):
            zcio.sendfile(a, f, 0, 4)
        with pytest.raises(BlockingIOError):
            zcio.send_zerocopy(a, b"x")
        a.setblocking(True)
        with pytest.raises(BlockingIOError):  # flags reach send(): MSG_DONTWAIT
            zcio.send_zerocopy(a, b"x", socket.MSG_DONTWAIT)
        assert position(f) == 0


# ----------------------------------------------------------- EINTR (PEP 475)

# System call numbers, to see in /proc/self/task/TID/syscall that a thread is
# blocked in the call under test (so that signals hit it deterministically).
_SYSCALL_NR = {
    "x86_64": {"sendfile": 40, "sendto": 44, "splice": 275, "tee": 276, "vmsplice": 278},
    "aarch64": {"sendfile": 71, "sendto": 206, "splice": 76, "tee": 77, "vmsplice": 75},
    "riscv64": {"sendfile": 71, "sendto": 206, "splice": 76, "tee": 77, "vmsplice": 75},
}


def blocked_in(tid: int, syscall: str, fd: int) -> bool:
    """Is thread ``tid`` blocked in ``syscall`` with ``fd`` as first argument?"""
    try:
        with open(f"/proc/self/task/{tid}/syscall") as f:
            fields = f.read().split()
        with open(f"/proc/self/task/{tid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except OSError:
        return False
    if state != "S" or len(fields) < 2 or not fields[0].isdigit():
        return False
    table = _SYSCALL_NR.get(platform.machine())
    if table is None:  # unknown architecture: any sleep that is not a futex wait
        try:
            with open(f"/proc/self/task/{tid}/wchan") as f:
                return "futex" not in f.read()
        except OSError:
            return True
    return int(fields[0]) == table[syscall] and int(fields[1], 16) == fd


def wait_until(predicate: Callable[[], bool], timeout: float = WATCHDOG) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
    return True


PAYLOAD = bytes(range(256)) * 16  # 4 KiB


class Blocker:
    """A call that blocks in ``syscall`` on ``fd`` until ``unblock`` runs."""

    syscall = ""
    fd = -1

    def call(self) -> int:
        raise NotImplementedError

    def unblock(self, done: threading.Event) -> None:
        """From another thread: let the call finish (it may run after it did)."""
        raise NotImplementedError

    def check(self, result: int) -> None:
        raise NotImplementedError


class ReadSide(Blocker):
    """Blocks reading an empty pipe; unblocked by writing PAYLOAD into it."""

    def __init__(self, pipe: Any, tmp_path: Any, how: str) -> None:
        self.r, self.w = pipe()
        self.r2, self.w2 = pipe()
        self.how = how
        self.fd = self.r
        self.syscall = "tee" if how == "tee" else "splice"
        self.file = -1
        if how == "splice-to-file":
            fd, path = tempfile.mkstemp(dir=tmp_path)
            os.unlink(path)
            self.file = fd

    def call(self) -> int:
        if self.how == "splice":
            return zcio.splice(self.r, self.w2, 100000)
        if self.how == "tee":
            return zcio.tee(self.r, self.w2, 100000)
        # the general path: objects with fileno() and an offset
        return zcio.splice(FdObj(self.r), FdObj(self.file), 100000, None, 7)

    def unblock(self, done: threading.Event) -> None:
        os.write(self.w, PAYLOAD)

    def check(self, result: int) -> None:
        assert result == len(PAYLOAD)
        if self.how == "splice-to-file":
            assert os.pread(self.file, 2 * len(PAYLOAD), 7) == PAYLOAD
            assert position(self.file) == 0
        else:
            assert read_exact(self.r2, result) == PAYLOAD
        if self.how == "tee":
            assert drain_pipe(self.r) == PAYLOAD
        assert pending(self.r) == 0

    def close(self) -> None:
        if self.file >= 0:
            os.close(self.file)


class WriteSide(Blocker):
    """Blocks writing into a full pipe or socket; unblocked by draining it."""

    def __init__(self, pipe: Any, socketpair: Any, tmp_path: Any, how: str) -> None:
        self.how = how
        self.drained: List[bytes] = []
        self.file = -1
        if how == "vmsplice":
            self.r, self.w = pipe()
            self.filled = fill_pipe(self.w)
            self.fd, self.syscall = self.w, "vmsplice"
        else:
            self.a, self.b = socketpair()
            self.filled = fill_socket(self.a)
            self.fd = self.a.fileno()
            self.syscall = "sendto" if how == "send_zerocopy" else "sendfile"
            if how == "sendfile":
                fd, path = tempfile.mkstemp(dir=tmp_path)
                os.unlink(path)
                os.write(fd, PAYLOAD)
                os.lseek(fd, 100, os.SEEK_SET)
                self.file = fd

    def call(self) -> int:
        if self.how == "vmsplice":
            return zcio.vmsplice(self.w, [PAYLOAD])
        if self.how == "send_zerocopy":
            return zcio.send_zerocopy(self.a, PAYLOAD)
        return zcio.sendfile(self.a, self.file, 0, len(PAYLOAD))

    def _drain(self) -> bytes:
        return drain_pipe(self.r) if self.how == "vmsplice" else drain_socket(self.b)

    def unblock(self, done: threading.Event) -> None:
        deadline = time.monotonic() + WATCHDOG
        while not done.is_set() and time.monotonic() < deadline:
            self.drained.append(self._drain())

    def check(self, result: int) -> None:
        assert 0 < result <= len(PAYLOAD)
        if self.how != "sendfile":
            assert result == len(PAYLOAD)  # blocking writes of a pipe page / socket chunk complete
        got = b"".join(self.drained) + self._drain()
        assert len(got) == self.filled + result
        assert got[self.filled:] == PAYLOAD[:result]
        if self.file >= 0:
            assert position(self.file) == 100  # sendfile with an offset: left alone

    def close(self) -> None:
        if self.file >= 0:
            os.close(self.file)


BLOCKERS = ["splice", "splice-to-file", "tee", "vmsplice", "sendfile", "send_zerocopy"]


@pytest.fixture
def blocker(request: Any, pipe: Any, socketpair: Any, tmp_path: Any) -> Iterator[Blocker]:
    how = request.param
    b: Any = ReadSide(pipe, tmp_path, how) if how in ("splice", "splice-to-file", "tee") else WriteSide(pipe, socketpair, tmp_path, how)
    try:
        yield b
    finally:
        b.close()


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("blocker", BLOCKERS, indirect=True)
@pytest.mark.parametrize("mode", ["handler-raises", "handler-returns"])
def test_eintr(blocker: Blocker, mode: str) -> None:
    """A signal hits the call while it is blocked in the kernel. A handler's
    exception propagates out of the call; a handler that returns gets the call
    retried (PEP 475), which then completes normally."""
    main_tid = threading.get_native_id()
    main_ident = threading.get_ident()
    handled = threading.Event()
    done = threading.Event()
    problems: List[str] = []
    frames: List[str] = []

    def handler(signum: int, frame: Any) -> None:
        frames.append(frame.f_code.co_filename if frame is not None else "")
        handled.set()
        if mode == "handler-raises":
            raise Interrupted()

    def watcher() -> None:
        try:
            if not wait_until(lambda: blocked_in(main_tid, blocker.syscall, blocker.fd)):
                problems.append("the call never blocked in the kernel")
                return
            signal.pthread_kill(main_ident, signal.SIGALRM)
            if not handled.wait(WATCHDOG):
                problems.append("the signal handler never ran")
                return
            if mode == "handler-returns":
                # The call must go back into the kernel: the retry.
                if not wait_until(lambda: done.is_set() or blocked_in(main_tid, blocker.syscall, blocker.fd)):
                    problems.append("the call was not retried")
                elif done.is_set():
                    problems.append("the call returned instead of being retried")
            elif not done.wait(WATCHDOG):
                problems.append("the handler's exception did not end the call")
        finally:
            blocker.unblock(done)  # bounded: the main thread can never hang

    old = signal.signal(signal.SIGALRM, handler)
    thread = threading.Thread(target=watcher)
    thread.start()
    result: Optional[int] = None
    try:
        if mode == "handler-raises":
            with pytest.raises(Interrupted) as info:
                blocker.call()
            raised_in = {f.f_code.co_filename for f, _ in traceback.walk_tb(info.value.__traceback__)}
            assert lowlevel.__file__ in raised_in  # it came out of the wrapper
        else:
            result = blocker.call()
    finally:
        done.set()
        thread.join()
        signal.signal(signal.SIGALRM, old)
    assert not problems, problems
    assert len(frames) == 1
    # The handler ran inside the wrapper: after the system call returned EINTR.
    assert frames[0] == lowlevel.__file__
    if result is not None:
        blocker.check(result)


def test_eintr_setitimer_propagates(pipe: Any) -> None:
    """The classic shape: an interval timer's handler raises while splice()
    blocks on an empty pipe. A watchdog thread unblocks the call (making the
    test fail, not hang) if the exception never comes."""
    r, w = pipe()
    r2, w2 = pipe()
    inside: List[str] = []
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        if frame is not None and frame.f_code.co_filename == lowlevel.__file__:
            inside.append(frame.f_code.co_name)
            raise Interrupted()
        signal.setitimer(signal.ITIMER_REAL, 0.05)  # not in the call yet: again

    def watchdog() -> None:
        if not stop.wait(WATCHDOG):
            os.write(w, b"watchdog")

    old = signal.signal(signal.SIGALRM, handler)
    thread = threading.Thread(target=watchdog)
    thread.start()
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(Interrupted):
            zcio.splice(r, w2, 100)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        stop.set()
        thread.join()
    assert inside
    assert pending(r) == 0 and pending(r2) == 0


# ------------------------------------------------------------------ the GIL


@pytest.mark.parametrize("which", ["splice", "tee", "splice-offset"])
def test_gil_is_released_while_blocked(pipe: Any, tmp_path: Any, which: str) -> None:
    """A thread blocks in the kernel; this thread keeps running Python, then
    unblocks it. If the call held the GIL this thread could not run at all:
    the watchdog is a timer whose signal writes to the pipe from C (no GIL
    needed), which ends the call with a byte the test does not expect."""
    r, w = pipe()
    r2, w2 = pipe()
    os.set_blocking(w, False)  # set_wakeup_fd needs a non-blocking fd
    results: List[Any] = []

    def worker() -> None:
        try:
            if which == "splice":
                results.append(zcio.splice(r, w2, 1000))
            elif which == "tee":
                results.append(zcio.tee(r, w2, 1000))
            else:
                results.append(zcio.splice(FdObj(r), w2, 1000, None, None, zcio.SPLICE_F_MORE))
        except BaseException as exc:  # pragma: no cover - reported below
            results.append(exc)

    alarms: List[int] = []
    old_handler = signal.signal(signal.SIGALRM, lambda signum, frame: alarms.append(signum))
    old_wakeup = signal.set_wakeup_fd(w)
    thread = threading.Thread(target=worker)
    try:
        signal.setitimer(signal.ITIMER_REAL, WATCHDOG)
        thread.start()
        spins = 0
        syscall = "tee" if which == "tee" else "splice"
        while not blocked_in(thread.native_id, syscall, r):  # Python runs meanwhile
            spins += 1
            assert not alarms, "the watchdog fired: the blocked call held the GIL"
            assert thread.is_alive(), f"the call returned without data: {results}"
        work = sum(i * i for i in range(10000))  # more Python while it is blocked
        assert thread.is_alive() and not results
        os.write(w, b"wake up")
        thread.join(WATCHDOG)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.set_wakeup_fd(old_wakeup)
        signal.signal(signal.SIGALRM, old_handler)
        if thread.is_alive():  # pragma: no cover - only when broken
            os.write(w, b"!")
        thread.join()
    assert not alarms, "the watchdog fired: the blocked call held the GIL"
    assert work == sum(i * i for i in range(10000))
    assert results == [7]
    assert read_exact(r2, 7) == b"wake up"


# ----------------------------------------------------------- features()

FEATURE_TYPES = {
    "kernel": str,
    "sendfile": bool,
    "splice": bool,
    "tee": bool,
    "vmsplice": bool,
    "copy_file_range": bool,
    "so_zerocopy_tcp": bool,
    "so_zerocopy_udp": bool,
    "pipe_default_size": (int, type(None)),
    "pipe_max_size": (int, type(None)),
    "pipe_user_pages_soft": (int, type(None)),
    "pipe_user_pages_hard": (int, type(None)),
    "optmem_max": (int, type(None)),
    "rlimit_memlock": tuple,
    "io_uring": bool,
}


def _proc_int(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _accepts_so_zerocopy(kind: int) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            with socket.socket(family, kind) as s:
                s.setsockopt(socket.SOL_SOCKET, zcio.SO_ZEROCOPY, 1)
                return True
        except OSError:
            continue
    return False


def test_features_keys_types_and_values() -> None:
    f = zcio.features()
    assert set(f) == set(FEATURE_TYPES)
    for key, kind in FEATURE_TYPES.items():
        assert isinstance(f[key], kind), (key, f[key])
    assert f["kernel"] == platform.release()
    # This machine has every system call zcio uses (the suite itself uses them).
    for key in ("sendfile", "splice", "tee", "vmsplice", "copy_file_range"):
        assert f[key] is True, key
    assert f["so_zerocopy_tcp"] is _accepts_so_zerocopy(socket.SOCK_STREAM)
    assert f["so_zerocopy_udp"] is _accepts_so_zerocopy(socket.SOCK_DGRAM)
    r, w = os.pipe()
    try:
        assert f["pipe_default_size"] == fcntl.fcntl(w, lowlevel.lib.F_GETPIPE_SZ)
    finally:
        os.close(r)
        os.close(w)
    assert f["pipe_max_size"] == _proc_int("/proc/sys/fs/pipe-max-size")
    assert f["pipe_user_pages_soft"] == _proc_int("/proc/sys/fs/pipe-user-pages-soft")
    assert f["pipe_user_pages_hard"] == _proc_int("/proc/sys/fs/pipe-user-pages-hard")
    assert f["optmem_max"] == _proc_int("/proc/sys/net/core/optmem_max")
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    unlimited = resource.RLIM_INFINITY
    assert f["rlimit_memlock"] == (None if soft == unlimited else soft, None if hard == unlimited else hard)


def test_features_returns_a_fresh_copy() -> None:
    first = zcio.features()
    second = zcio.features()
    assert first == second and first is not second
    saved = dict(first)
    first["splice"] = "mutated"
    first.clear()
    assert zcio.features() == saved


# ------------------------------------------------- constants and exports


def test_constants_match_known_values() -> None:
    assert (zcio.SPLICE_F_MOVE, zcio.SPLICE_F_NONBLOCK, zcio.SPLICE_F_MORE) == (1, 2, 4)
    if hasattr(os, "SPLICE_F_MOVE"):  # Python 3.10+
        assert zcio.SPLICE_F_MOVE == os.SPLICE_F_MOVE
        assert zcio.SPLICE_F_NONBLOCK == os.SPLICE_F_NONBLOCK
        assert zcio.SPLICE_F_MORE == os.SPLICE_F_MORE
    assert zcio.SPLICE_F_GIFT == 8
    assert zcio.MSG_ZEROCOPY == getattr(socket, "MSG_ZEROCOPY", 0x4000000)
    parisc = platform.machine().startswith("parisc")
    assert zcio.SO_ZEROCOPY == getattr(socket, "SO_ZEROCOPY", 0x4035 if parisc else 60)
    assert zcio.SO_EE_ORIGIN_ZEROCOPY == 5
    assert zcio.SO_EE_CODE_ZEROCOPY_COPIED == 1
    for name in (
        "SPLICE_F_MOVE",
        "SPLICE_F_NONBLOCK",
        "SPLICE_F_MORE",
        "SPLICE_F_GIFT",
        "MSG_ZEROCOPY",
        "SO_ZEROCOPY",
        "SO_EE_ORIGIN_ZEROCOPY",
        "SO_EE_CODE_ZEROCOPY_COPIED",
    ):
        assert type(getattr(zcio, name)) is int, name
        assert name in zcio.__all__ and name in lowlevel.__all__


SPEC_NAMES = [
    "sendfile",
    "splice",
    "tee",
    "vmsplice",
    "copy_file_range",
    "send_zerocopy",
    "read_completions",
    "Completion",
    "features",
]


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_top_level_reexports_are_the_lowlevel_objects(name: str) -> None:
    assert name in zcio.__all__
    assert getattr(zcio, name) is getattr(lowlevel, name)


def test_all_lists_only_existing_names() -> None:
    for module in (zcio, lowlevel):
        missing = [name for name in module.__all__ if not hasattr(module, name)]
        assert not missing, (module.__name__, missing)
    shared = set(zcio.__all__) & set(lowlevel.__all__)
    for name in shared:
        assert getattr(zcio, name) is getattr(lowlevel, name), name
