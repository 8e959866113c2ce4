"""splice_pipe, tee_pipe, proxy, Pipe, PipePool and stats()."""
from __future__ import annotations

import errno
import os
import platform
import signal
import socket
import struct
import threading
import time
from contextlib import ExitStack, contextmanager
from typing import Callable, Iterator, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import zcio

PAGE = os.sysconf("SC_PAGE_SIZE")
PIPE = 65536
SIZES = [0, 1, PAGE - 1, PAGE, PAGE + 1, PIPE - 1, PIPE + 1, (1 << 20) + 1, (3 << 20) + 17]
JOIN = 20.0  # seconds any helper thread may take before the test fails


def payload(n: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating-looking bytes (cheap for several MiB)."""
    block = bytes((i * 131 + seed * 7 + (i >> 8)) & 0xFF for i in range(4096))
    return (block * (n // 4096 + 1))[:n]


class Thread(threading.Thread):
    """A thread whose exception (or result) is kept for the test to check."""

    def __init__(self, fn: Callable[[], object]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.result: object = None
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # noqa: BLE001 - reported by finish()
            self.error = exc

    def finish(self) -> object:
        self.join(JOIN)
        assert not self.is_alive(), "helper thread hung"
        if self.error is not None:
            raise self.error
        return self.result


def read_all(fd: "int | socket.socket") -> bytes:
    """Everything until EOF, from an fd or a socket (whose timeout applies)."""
    read = fd.recv if isinstance(fd, socket.socket) else (lambda n: os.read(fd, n))  # type: ignore[arg-type]
    parts = []
    while True:
        chunk = read(1 << 20)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def tcp_pair() -> Tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        a = socket.create_connection(listener.getsockname(), timeout=JOIN)
        b, _ = listener.accept()
    b.settimeout(JOIN)
    return a, b


@contextmanager
def source(kind: str, data: bytes, tmp: str) -> Iterator[Tuple[int, Callable[[], bytes]]]:
    """An fd of ``kind`` that yields ``data`` then EOF (a thread feeds pipes
    and sockets), and a function that reads what is left in it."""
    with ExitStack() as stack:
        feeder: Optional[Thread] = None
        if kind == "file":
            path = os.path.join(tmp, "src.bin")
            with open(path, "wb") as f:
                f.write(data)
            fd = os.open(path, os.O_RDONLY)
            stack.callback(os.close, fd)
            rest: Callable[[], bytes] = lambda: read_all(fd)
        elif kind == "pipe":
            fd, w = os.pipe()
            stack.callback(os.close, fd)

            def feed() -> None:
                try:
                    write_all(w, data)
                finally:
                    os.close(w)

            feeder = Thread(feed)
            rest = lambda: read_all(fd)
        else:
            a, b = socket.socketpair() if kind == "unix" else tcp_pair()
            stack.callback(b.close)
            fd = b.fileno()

            def feed_sock() -> None:
                try:
                    a.sendall(data)
                finally:
                    a.close()

            feeder = Thread(feed_sock)
            rest = lambda: read_all(b)
        if feeder:
            feeder.start()
        yield fd, rest
        if feeder:
            feeder.finish()


@contextmanager
def sink(kind: str, tmp: str) -> Iterator[Tuple[int, Callable[[], bytes]]]:
    """An fd of ``kind`` and a function that returns what reached it."""
    with ExitStack() as stack:
        if kind == "file":
            path = os.path.join(tmp, "dst.bin")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            stack.callback(os.close, fd)

            def got() -> bytes:
                with open(path, "rb") as f:
                    return f.read()

            yield fd, got
        elif kind == "devnull":
            fd = os.open(os.devnull, os.O_WRONLY)
            stack.callback(os.close, fd)
            yield fd, lambda: b""
        elif kind == "pipe":
            r, w = os.pipe()
            stack.callback(os.close, r)
            reader = Thread(lambda: read_all(r))
            reader.start()
            closed = [False]

            def got_pipe() -> bytes:
                os.close(w)
                closed[0] = True
                return reader.finish()  # type: ignore[return-value]

            yield w, got_pipe
            if not closed[0]:
                os.close(w)
                reader.finish()
        else:
            a, b = socket.socketpair() if kind == "unix" else tcp_pair()
            stack.callback(b.close)
            stack.callback(a.close)
            reader = Thread(lambda: read_all(b))
            reader.start()
            done = [False]

            def got_sock() -> bytes:
                a.shutdown(socket.SHUT_WR)
                done[0] = True
                return reader.finish()  # type: ignore[return-value]

            yield a.fileno(), got_sock
            if not done[0]:
                a.shutdown(socket.SHUT_WR)
                reader.finish()


SRC_KINDS = ["file", "pipe", "unix", "tcp"]
DST_KINDS = ["file", "pipe", "unix", "tcp", "devnull"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    src_kind=st.sampled_from(SRC_KINDS),
    dst_kind=st.sampled_from(DST_KINDS),
    size=st.sampled_from(SIZES),
    count=st.one_of(st.none(), st.sampled_from([0, 1, PAGE, PIPE + 3, 1 << 20, 10 << 20])),
    offset=st.one_of(st.none(), st.sampled_from([0, 1, PAGE + 5, 2 << 20])),
)
def test_matrix_exact_bytes_counts_and_positions(tmp_path, src_kind, dst_kind, size, count, offset):
    if src_kind != "file":
        offset = None  # offsets on pipes and sockets are covered below
    data = payload(size, seed=size)
    if src_kind == "file":
        # None must start at the current position; an offset must not move it.
        start = 3 if offset is None else offset
    else:
        start = 0
    expected = data[start:] if count is None else data[start : start + count]
    with source(src_kind, data, str(tmp_path)) as (src, rest), sink(dst_kind, str(tmp_path)) as (dst, got):
        if src_kind == "file":
            os.lseek(src, 3, os.SEEK_SET)
        n = zcio.splice_pipe(src, dst, count, offset=offset)
        assert n == len(expected)
        if src_kind == "file":
            assert os.lseek(src, 0, os.SEEK_CUR) == (3 if offset is not None else 3 + n)
        else:
            # Not a byte more than count was taken from the stream.
            assert rest() == data[n:]
        received = got()
    if dst_kind != "devnull":
        assert received == expected


def test_offset_on_pipe_or_socket_source_raises_espipe_before_reading(pipe, socketpair):
    r, w = pipe()
    os.write(w, b"abc")
    with os.fdopen(os.open(os.devnull, os.O_WRONLY), "wb") as out:
        with pytest.raises(OSError) as info:
            zcio.splice_pipe(r, out, 3, offset=0)
        assert info.value.errno == errno.ESPIPE
        a, b = socketpair()
        a.sendall(b"xyz")
        with pytest.raises(OSError) as info:
            zcio.splice_pipe(b, out, offset=1)
        assert info.value.errno == errno.ESPIPE
    assert os.read(r, 10) == b"abc"
    assert b.recv(10) == b"xyz"


def test_bad_arguments(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"x")
    with open(p, "rb") as f, open(os.devnull, "wb") as out:
        with pytest.raises(ValueError):
            zcio.splice_pipe(f, out, -1)
        with pytest.raises(ValueError):
            zcio.splice_pipe(f, out, offset=-1)
        with pytest.raises(ValueError):
            zcio.splice_pipe(f, out, timeout=-1)
        with pytest.raises(TypeError):
            zcio.splice_pipe(f, 1.5)
        with open(p, "r") as text:
            with pytest.raises(TypeError, match="text"):
                zcio.splice_pipe(text, out)
        assert zcio.splice_pipe(f, out, 0) == 0


# ------------------------------------------------------ Python file objects


def test_buffered_reader_starts_at_tell_and_is_seeked_to_the_end(tmp_path):
    data = payload(200_000, 3)
    (tmp_path / "s").write_bytes(data)
    with open(tmp_path / "s", "rb") as f, open(tmp_path / "d", "wb") as g:
        assert f.read(10) == data[:10]  # the raw position is far beyond 10 now
        assert zcio.splice_pipe(f, g, 50_000) == 50_000
        assert f.tell() == 50_010
        assert f.read(5) == data[50_010:50_015]
    assert (tmp_path / "d").read_bytes() == data[10:50_010]


def test_buffered_writer_is_flushed_first_and_resynced(tmp_path):
    (tmp_path / "s").write_bytes(b"0123456789")
    with open(tmp_path / "s", "rb") as f, open(tmp_path / "d", "wb") as g:
        g.write(b"head:")  # still in g's buffer
        assert zcio.splice_pipe(f, g) == 10
        g.write(b":tail")
    assert (tmp_path / "d").read_bytes() == b"head:0123456789:tail"


def test_unseekable_buffered_reader_delivers_its_buffer_first(socketpair, tmp_path):
    a, b = socketpair()
    a.sendall(b"line one\nrest of the stream")
    a.close()
    reader = b.makefile("rb")
    try:
        assert reader.readline() == b"line one\n"  # buffered the rest too
        with open(tmp_path / "d", "wb") as g:
            assert zcio.splice_pipe(reader, g) == len(b"rest of the stream")
    finally:
        reader.close()
    assert (tmp_path / "d").read_bytes() == b"rest of the stream"


def test_nonblocking_socket_destination_waits_with_poll(tcp_pair, tmp_path):
    data = payload(8 << 20, 5)
    (tmp_path / "s").write_bytes(data)
    a, b = tcp_pair()
    a.setblocking(False)
    reader = Thread(lambda: read_all(b))
    reader.start()
    with open(tmp_path / "s", "rb") as f:
        assert zcio.splice_pipe(f, a, timeout=JOIN) == len(data)
    assert a.getblocking() is False  # left as it was
    a.shutdown(socket.SHUT_WR)
    assert reader.finish() == data


# ---------------------------------------------------------------- fallbacks


def test_fallback_o_append_destination(tmp_path):
    data = payload(300_000, 7)
    (tmp_path / "s").write_bytes(data)
    (tmp_path / "d").write_bytes(b"old")
    before = zcio.stats()
    with open(tmp_path / "s", "rb") as f:
        fd = os.open(tmp_path / "d", os.O_WRONLY | os.O_APPEND)
        try:
            assert zcio.splice_pipe(f, fd) == len(data)
        finally:
            os.close(fd)
    assert (tmp_path / "d").read_bytes() == b"old" + data
    after = zcio.stats()
    assert after["fallbacks"].get("dst:O_APPEND", 0) == before["fallbacks"].get("dst:O_APPEND", 0) + 1
    assert after["bytes"].get("read_write", 0) - before["bytes"].get("read_write", 0) == len(data)


def test_fallback_proc_file_source(tmp_path):
    before = zcio.stats()["fallbacks"]
    with open("/proc/self/maps", "rb") as f, open(tmp_path / "d", "wb") as g:
        n = zcio.splice_pipe(f, g)
    # /proc/self/maps differs between two reads only if the mappings changed;
    # compare the copy with a fresh read of the same shape instead.
    copied = (tmp_path / "d").read_bytes()
    assert n == len(copied) > 0
    with open("/proc/self/maps", "rb") as again:
        assert copied.splitlines()[0] == again.read().splitlines()[0]
    after = zcio.stats()["fallbacks"]
    assert after.get("sendfile:EINVAL", 0) > before.get("sendfile:EINVAL", 0)


def _eventfd(initval: int) -> int:
    if hasattr(os, "eventfd"):  # Python 3.10+
        return os.eventfd(initval)
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.eventfd(initval, 0)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "eventfd")
    return int(fd)


def test_fallback_fd_type_without_splice_support(pipe):
    """eventfd supports neither splice_read nor splice_write."""
    efd = _eventfd(5)
    try:
        r, w = pipe()
        before = zcio.stats()["fallbacks"]
        assert zcio.splice_pipe(efd, w, 8) == 8
        assert struct.unpack("Q", os.read(r, 8)) == (5,)
        os.write(w, struct.pack("Q", 7))
        assert zcio.splice_pipe(r, efd, 8) == 8
        assert struct.unpack("Q", os.read(efd, 8)) == (7,)
        after = zcio.stats()["fallbacks"]
        assert after.get("splice:EINVAL", 0) >= before.get("splice:EINVAL", 0) + 2
    finally:
        os.close(efd)


# ------------------------------------------------------------------- faults


def test_reset_destination_accounts_for_every_byte(tmp_path):
    data = payload(32 << 20, 9)
    (tmp_path / "s").write_bytes(data)
    a, b = tcp_pair()
    b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    got = bytearray()

    def read_then_reset() -> None:
        while len(got) < 1 << 20:
            got.extend(b.recv(65536))
        b.close()  # SO_LINGER 0: RST

    peer = Thread(read_then_reset)
    peer.start()
    try:
        with open(tmp_path / "s", "rb") as f:
            with pytest.raises(zcio.TransferError) as info:
                zcio.splice_pipe(f, a, timeout=JOIN)
            exc = info.value
            assert isinstance(exc, OSError)
            assert exc.errno in (errno.ECONNRESET, errno.EPIPE)
            assert isinstance(exc, (ConnectionResetError, BrokenPipeError))
            unread_from = f.tell()
        peer.finish()
        assert 0 < exc.transferred < len(data)
        assert data == data[: exc.transferred] + exc.pending + data[unread_from:]
        assert bytes(got) == data[: len(got)]
    finally:
        a.close()


def test_reset_source_through_pipe_accounts_for_every_byte(tmp_path):
    """socket -> socket through the pooled pipe; the sender resets."""
    data = payload(4 << 20, 11)
    src_a, src_b = tcp_pair()
    dst_a, dst_b = tcp_pair()
    src_a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    received = Thread(lambda: read_all(dst_b))
    received.start()

    def send_then_reset() -> None:
        src_a.sendall(data)
        src_a.close()  # RST, possibly before everything was read

    sender = Thread(send_then_reset)
    sender.start()
    try:
        try:
            n = zcio.splice_pipe(src_b, dst_a, timeout=JOIN)
            pending = b""
        except zcio.TransferError as exc:
            assert exc.errno == errno.ECONNRESET
            n, pending = exc.transferred, exc.pending
        sender.finish()
        dst_a.shutdown(socket.SHUT_WR)
        out = received.finish()
        assert out == data[:n]
        assert data[: n + len(pending)] == out + pending
    finally:
        for s in (src_b, dst_a, dst_b):
            s.close()


def test_stalled_peer_times_out_with_accounting(tcp_pair, tmp_path):
    data = payload(16 << 20, 13)
    (tmp_path / "s").write_bytes(data)
    a, b = tcp_pair()  # b never reads
    with open(tmp_path / "s", "rb") as f:
        with pytest.raises(TimeoutError) as info:
            zcio.splice_pipe(f, a, timeout=0.2)
        exc = info.value
        assert isinstance(exc, zcio.TransferError)
        assert exc.errno == errno.ETIMEDOUT
        assert 0 < exc.transferred < len(data)
        assert exc.pending == b""
        assert f.tell() == exc.transferred
    assert a.getblocking() is True  # restored
    # The peer got exactly the bytes reported.
    a.close()
    assert read_all(b) == data[: exc.transferred]


def test_stalled_source_times_out(socketpair, tmp_path):
    a, b = socketpair()
    a.sendall(b"only this")
    with open(tmp_path / "d", "wb") as g:
        with pytest.raises(TimeoutError) as info:
            zcio.splice_pipe(b, g, timeout=0.1)
    assert info.value.transferred == 9
    assert (tmp_path / "d").read_bytes() == b"only this"


def test_sigint_interrupts_a_long_transfer():
    """/dev/zero -> /dev/null never ends; SIGINT must end it promptly."""
    src = os.open("/dev/zero", os.O_RDONLY)
    dst = os.open(os.devnull, os.O_WRONLY)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        prev_alarm = signal.signal(signal.SIGALRM, lambda *a: os.kill(os.getpid(), signal.SIGINT))
        t0 = time.monotonic()
        try:
            with pytest.raises(KeyboardInterrupt) as info:
                zcio.splice_pipe(src, dst)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, prev_alarm)
        elapsed = time.monotonic() - t0
        assert info.value.transferred > 0
        assert info.value.pending == b""
        assert elapsed < 5  # a hang guard, not a speed test
    finally:
        signal.signal(signal.SIGINT, old)
        os.close(src)
        os.close(dst)


def test_progress_called_with_running_and_final_totals(tmp_path):
    data = payload(100 << 20 | 5, 17)
    (tmp_path / "s").write_bytes(data)
    seen: List[int] = []
    with open(tmp_path / "s", "rb") as f, open(tmp_path / "d", "wb") as g:
        n = zcio.splice_pipe(f, g, progress=seen.append)
    assert n == len(data)
    assert seen[-1] == n
    assert seen == sorted(seen) and len(seen) >= 2


def test_progress_exception_propagates_and_nothing_is_lost(socketpair, tmp_path):
    data = payload(3 << 20, 19)
    a, b = socketpair()
    feeder = Thread(lambda: (a.sendall(data), a.close()))
    feeder.start()

    class Stop(Exception):
        pass

    def progress(total: int) -> None:
        raise Stop

    with open(tmp_path / "d", "wb") as g:
        with pytest.raises(Stop) as info:
            zcio.splice_pipe(b, g, progress=progress)
        exc = info.value
    rest = read_all(b)
    feeder.finish()
    assert (tmp_path / "d").read_bytes() == data[: exc.transferred]  # type: ignore[attr-defined]
    assert data == data[: exc.transferred] + exc.pending + rest  # type: ignore[attr-defined]


def test_no_fd_or_pipe_leaks_over_thousands_of_transfers(tmp_path):
    (tmp_path / "s").write_bytes(payload(10_000))
    pool = zcio.PipePool(max_pipes=2)
    fds_before = len(os.listdir("/proc/self/fd"))
    try:
        for i in range(1500):
            a, b = socket.socketpair()
            try:
                a.sendall(b"x" * 3000)
                if i % 3 == 0:
                    a.close()
                    n = zcio.splice_pipe(b, _DEVNULL[0], pool=pool)
                    assert n == 3000
                else:
                    # fails: the destination is a closed-for-writing socket
                    c, d = socket.socketpair()
                    c.shutdown(socket.SHUT_WR)
                    try:
                        with pytest.raises(zcio.TransferError) as info:
                            zcio.splice_pipe(b, c, 3000, pool=pool)
                        assert info.value.transferred + len(info.value.pending) <= 3000
                    finally:
                        c.close()
                        d.close()
            finally:
                a.close()
                b.close()
        assert pool.in_use == 0
        assert pool.free <= 2
    finally:
        pool.close()
    assert len(os.listdir("/proc/self/fd")) == fds_before


_DEVNULL: List[int] = []


@pytest.fixture(autouse=True, scope="module")
def _devnull() -> Iterator[None]:
    _DEVNULL.append(os.open(os.devnull, os.O_WRONLY))
    yield
    os.close(_DEVNULL.pop())


# ---------------------------------------------------------- Pipe, PipePool


def test_pipe_size_pending_drain_and_close():
    with zcio.Pipe(size=1 << 20) as p:
        assert p.size == 1 << 20
        p.size = 70_000
        assert p.size == 131072  # rounded up to a power of two of pages
        os.write(p.w, b"hello")
        assert p.pending == 5
        assert p.drain() == b"hello"
        assert p.pending == 0
        assert p.drain() == b""
        r, w = p.r, p.w
    assert p.closed and p.r == -1 and p.w == -1
    for fd in (r, w):
        with pytest.raises(OSError):
            os.fstat(fd)
    with pytest.raises(ValueError):
        p.size  # noqa: B018
    p.close()  # idempotent


def test_pipe_pool_bounds_reuse_and_destroys_dirty_pipes():
    with zcio.PipePool(max_pipes=2, pipe_size=1 << 16) as pool:
        created0 = zcio.stats()["pipes"]["created"]
        p1, p2 = pool.acquire(), pool.acquire()
        assert p1 is not None and p2 is not None
        exhausted0 = zcio.stats()["pipes"]["exhausted"]
        assert pool.acquire() is None
        assert zcio.stats()["pipes"]["exhausted"] == exhausted0 + 1
        assert zcio.stats()["pipes"]["created"] == created0 + 2
        os.write(p1.w, b"left over")
        pool.release(p1)  # holds data: destroyed
        assert p1.closed
        pool.release(p2)  # empty: kept
        assert not p2.closed and pool.free == 1 and pool.in_use == 0
        assert pool.acquire() is p2
        pool.release(p2)
    assert p2.closed


def test_exhausted_pool_falls_back_to_copying(socketpair, tmp_path):
    with zcio.PipePool(max_pipes=0) as pool:
        a, b = socketpair()
        a.sendall(b"through the copy path")
        a.close()
        before = zcio.stats()["fallbacks"].get("splice_via_pipe:pool_exhausted", 0)
        with open(tmp_path / "d", "wb") as g:
            assert zcio.splice_pipe(b, g, pool=pool) == 21
        assert (tmp_path / "d").read_bytes() == b"through the copy path"
        assert zcio.stats()["fallbacks"]["splice_via_pipe:pool_exhausted"] == before + 1


def test_pool_drops_inherited_pipes_in_a_forked_child():
    with zcio.PipePool(max_pipes=2) as pool:
        p = pool.acquire()
        assert p is not None
        pool.release(p)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            ok = pool.free == 0 and p.closed
            os.write(w, b"1" if ok else b"0")
            os._exit(0)
        os.close(w)
        assert os.read(r, 1) == b"1"
        os.close(r)
        os.waitpid(pid, 0)
        assert pool.free == 1 and not p.closed


# -------------------------------------------------------------- tee, proxy


@pytest.mark.parametrize("size", [0, 1, PIPE + 1, 3 << 20])
def test_tee_pipe_sends_every_byte_to_both(tmp_path, size):
    data = payload(size, 23)
    with source("unix", data, str(tmp_path)) as (src, _):
        with sink("pipe", str(tmp_path)) as (dst, got_dst):
            mpath = tmp_path / "mirror"
            with open(mpath, "wb") as mirror:
                assert zcio.tee_pipe(src, dst, mirror) == size
            assert got_dst() == data
    assert mpath.read_bytes() == data


def test_tee_pipe_count(tmp_path):
    data = payload(200_000, 29)
    (tmp_path / "s").write_bytes(data)
    with open(tmp_path / "s", "rb") as src, open(tmp_path / "d", "wb") as d, open(tmp_path / "m", "wb") as m:
        assert zcio.tee_pipe(src, d, m, 100_001) == 100_001
    assert (tmp_path / "d").read_bytes() == data[:100_001]
    assert (tmp_path / "m").read_bytes() == data[:100_001]


def test_tee_pipe_seekable_buffered_reader_starts_at_tell(tmp_path):
    """A buffered reader that read ahead: the tee starts at its tell(), not
    at its fd's position, and leaves it at the end; buffered writers are
    flushed first, so their bytes come before the tee's."""
    data = payload(300_000, 41)
    (tmp_path / "s").write_bytes(data)
    with open(tmp_path / "s", "rb") as src, open(tmp_path / "d", "wb") as d, open(tmp_path / "m", "wb") as m:
        assert src.read(5) == data[:5]  # the reader now holds far more than 5 bytes
        d.write(b"D:")
        m.write(b"M:")
        assert zcio.tee_pipe(src, d, m, 100_000) == 100_000
        assert src.tell() == 100_005
        assert src.read(3) == data[100_005:100_008]
    assert (tmp_path / "d").read_bytes() == b"D:" + data[5:100_005]
    assert (tmp_path / "m").read_bytes() == b"M:" + data[5:100_005]


def test_tee_pipe_unseekable_buffered_reader_delivers_its_bytes_first(tmp_path):
    """A socket's makefile() that read a line holds the bytes after it: they
    go first, to both, then the socket's own."""
    a, b = socket.socketpair()
    data = b"HEADER\n" + payload(200_000, 43)
    t = threading.Thread(target=lambda: (a.sendall(data), a.close()))
    t.start()
    try:
        with b.makefile("rb") as f, open(tmp_path / "d", "wb") as d, open(tmp_path / "m", "wb") as m:
            assert f.readline() == b"HEADER\n"
            assert len(f.peek(0)) > 0  # bytes after the line wait in the reader
            assert zcio.tee_pipe(f, d, m) == len(data) - 7
    finally:
        t.join()
        b.close()
    assert (tmp_path / "d").read_bytes() == data[7:]
    assert (tmp_path / "m").read_bytes() == data[7:]


def test_proxy_relays_both_ways_with_half_close():
    c1, s1 = tcp_pair()  # client <-> proxy side a
    s2, c2 = tcp_pair()  # proxy side b <-> server
    up, down = payload(2 << 20, 31), payload(3 << 20, 37)
    relay = Thread(lambda: zcio.proxy(s1, s2))
    relay.start()

    def client() -> bytes:
        c1.sendall(up)
        c1.shutdown(socket.SHUT_WR)  # half-close: the answer still comes
        return read_all(c1)

    def server() -> bytes:
        got = read_all(c2)  # EOF arrives through the proxy
        c2.sendall(down)
        c2.shutdown(socket.SHUT_WR)
        return got

    ct, st_ = Thread(client), Thread(server)
    ct.start()
    st_.start()
    try:
        assert st_.finish() == up
        assert ct.finish() == down
        assert relay.finish() == (len(up), len(down))
    finally:
        for s in (c1, s1, s2, c2):
            s.close()


def test_proxy_returns_or_raises_when_a_peer_resets():
    c1, s1 = tcp_pair()
    s2, c2 = tcp_pair()
    relay = Thread(lambda: zcio.proxy(s1, s2))
    relay.start()
    c1.sendall(b"hello")
    assert c2.recv(5) == b"hello"
    c1.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c1.close()
    relay.join(JOIN)
    assert not relay.is_alive()
    if relay.error is not None:
        assert isinstance(relay.error, zcio.TransferError)
        assert relay.error.errno == errno.ECONNRESET
    for s in (s1, s2, c2):
        s.close()


def test_stats_shape():
    s = zcio.stats()
    assert set(s) == {"bytes", "calls", "fallbacks", "pipes", "transfers"}
    assert set(s["pipes"]) == {"created", "destroyed", "exhausted", "in_use", "free"}
    before = s["bytes"].get("splice", 0)
    r, w = os.pipe()
    try:
        os.write(w, b"abc")
        os.close(w)
        with open(os.devnull, "wb") as out:
            assert zcio.splice_pipe(r, out) == 3
    finally:
        os.close(r)
    assert zcio.stats()["bytes"]["splice"] == before + 3


def test_transfer_error_is_picklable_and_catchable_as_builtin():
    import pickle

    from zcio._errors import transfer_error

    exc = transfer_error(errno.EPIPE, 10, b"xy")
    assert isinstance(exc, BrokenPipeError) and isinstance(exc, zcio.ZcioError)
    again = pickle.loads(pickle.dumps(exc))
    assert type(again) is type(exc)
    assert (again.errno, again.transferred, again.pending) == (errno.EPIPE, 10, b"xy")


def test_tee_pipe_failing_destination_loses_nothing(tmp_path):
    data = payload(300_000, 73)
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    d.close()  # the destination's peer is gone: EPIPE on the first write
    feeder = Thread(lambda: (a.sendall(data), a.close()))
    feeder.start()
    try:
        with open(tmp_path / "m", "wb") as m:
            with pytest.raises(zcio.TransferError) as info:
                zcio.tee_pipe(b, c, m)
        exc = info.value
        assert isinstance(exc, BrokenPipeError)
        rest = read_all(b)
        feeder.finish()
        assert exc.transferred == 0
        assert data == exc.pending + rest
        # The mirror got the chunk that dst refused.
        assert (tmp_path / "m").read_bytes() == exc.pending
    finally:
        for s in (a, b, c):
            s.close()


WATCHDOG = 10.0  # seconds: a hang guard, never a speed assertion


def wait_until(predicate: Callable[[], bool], timeout: float = WATCHDOG) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


# poll/ppoll system call numbers, to see where a blocked transfer sleeps.
_POLL_NR = {"x86_64": {7, 271}, "aarch64": {73}, "riscv64": {73}}


def _sleeping_syscall(tid: int) -> Optional[int]:
    """The system call thread ``tid`` sleeps in (None while it runs or waits on a lock)."""
    try:
        with open(f"/proc/self/task/{tid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
        with open(f"/proc/self/task/{tid}/syscall") as f:
            fields = f.read().split()
    except OSError:
        return None
    if state != "S" or not fields or not fields[0].isdigit():
        return None
    nr = int(fields[0])
    return None if nr == 202 and platform.machine() == "x86_64" else nr  # futex: the GIL


@pytest.mark.skipif(platform.machine() not in _POLL_NR, reason="system call numbers known for this architecture only")
@pytest.mark.parametrize("kind", ["pipe", "tcp"])
def test_a_blocked_transfer_sleeps_in_poll_never_in_the_data_call(tmp_path, tcp_pair, kind):
    """On the main thread, a transfer between blocking fds waits in poll() (at
    most 50 ms at a time), never inside splice/sendfile/read: a signal that
    arrives while the C loop runs between two system calls would otherwise
    wait for the next byte (Ctrl-C held up for ever by an idle peer). The
    fds are blocking again afterwards."""
    if kind == "pipe":
        r, w = os.pipe()
        feed, src = (lambda data: os.write(w, data)), r
        close_feed = lambda: os.close(w)  # noqa: E731
        closers = [lambda: os.close(r)]
    else:
        a, b = tcp_pair()
        b.setblocking(True)
        feed, src = a.sendall, b
        close_feed = a.close
        closers = []
    main = threading.get_native_id()
    seen: List[Optional[int]] = []

    def watch() -> None:  # records where the main thread sleeps, then ends the transfer
        wait_until(lambda: _sleeping_syscall(main) is not None)
        seen.append(_sleeping_syscall(main))
        feed(b"late bytes")
        close_feed()

    watcher = threading.Thread(target=watch)
    try:
        with open(tmp_path / "out", "wb") as out:
            watcher.start()
            assert zcio.splice_pipe(src, out) == 10
        assert seen and seen[0] in _POLL_NR[platform.machine()]
        assert os.get_blocking(src if isinstance(src, int) else src.fileno())
    finally:
        watcher.join(WATCHDOG)
        for c in closers:
            c()
    assert (tmp_path / "out").read_bytes() == b"late bytes"
