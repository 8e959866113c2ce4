"""Nothing lost, for real: late refusals on every path, failures while setting
up, objects dropped unclosed, and holes kept by file-to-file copies."""
from __future__ import annotations

import asyncio
import errno
import gc
import os
import resource
import select
import signal
import socket
import struct
import warnings
from contextlib import ExitStack, contextmanager
from typing import Callable, Iterator, List, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import zcio
from zcio import _tee, _transfer, aio
from zcio._transfer import COPY_FILE_RANGE, PIPE, RW, SENDFILE, SPLICE, Plan, Xfer

from test_streams import JOIN, Thread, payload, read_all

KiB, MiB = 1 << 10, 1 << 20
# Bytes in flight around the copy buffer (256 KiB) and the pooled pipe (1 MiB).
IN_FLIGHT = [255 * KiB, 256 * KiB, 256 * KiB + 1, MiB - 1, MiB, MiB + 1, 2 * MiB]
FSIZE_LIMIT = 200_001  # where the RLIMIT_FSIZE destination starts refusing
LATE = 100_000  # bytes the closing reader or resetting peer takes first


# ------------------------------------------------- destinations that refuse late


@contextmanager
def _fsize_limit(limit: int) -> Iterator[None]:
    """Files may not grow past ``limit`` in this process for the block (EFBIG;
    SIGXFSZ ignored, as CPython does at start-up anyway)."""
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)


@contextmanager
def refusing(kind: str, tmp: str, late: int = LATE) -> Iterator[Tuple[int, Callable[[int], None], Tuple[int, ...]]]:
    """A destination that refuses after a while (a pipe's reader or a TCP
    peer takes ``late`` bytes first); yields its fd, a check of what it
    received given ``transferred``, and the errnos it fails with."""
    with ExitStack() as stack:
        if kind == "full":
            fd = os.open("/dev/full", os.O_WRONLY)
            stack.callback(os.close, fd)

            def got(transferred: int) -> None:
                assert transferred == 0

            yield fd, got, (errno.ENOSPC,)
        elif kind == "fsize":
            path = os.path.join(tmp, "limited")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            stack.callback(os.close, fd)

            def got_file(transferred: int) -> None:
                assert transferred == FSIZE_LIMIT == os.fstat(fd).st_size
                assert os.lseek(fd, 0, os.SEEK_CUR) == transferred

            stack.enter_context(_fsize_limit(FSIZE_LIMIT))
            yield fd, got_file, (errno.EFBIG,)
        elif kind == "closed_pipe":
            r, w = os.pipe()
            stack.callback(os.close, w)
            reader = Thread(lambda: (_read_exactly(r, late), os.close(r))[0])
            reader.start()
            stack.callback(reader.finish)
            if not late:
                reader.finish()

            def got_pipe(transferred: int) -> None:
                assert transferred >= late  # what the pipe held when closed is gone

            yield w, got_pipe, (errno.EPIPE,)
        else:  # "reset": a TCP peer that reads a little, then resets
            listener = socket.create_server(("127.0.0.1", 0))
            stack.callback(listener.close)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * KiB)
            c = socket.socket()
            stack.callback(c.close)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * KiB)
            c.connect(listener.getsockname())
            d, _ = listener.accept()
            stack.callback(d.close)
            d.settimeout(JOIN)

            def reset_peer() -> bytes:
                got_ = _recv_exactly(d, late)
                d.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                d.close()
                return got_

            peer = Thread(reset_peer)
            peer.start()
            stack.callback(peer.finish)
            if not late:
                peer.finish()
                p = select.poll()
                p.register(c, select.POLLOUT)
                assert p.poll(JOIN * 1000)[0][1] & (select.POLLERR | select.POLLHUP)  # the reset arrived

            def got_sock(transferred: int) -> None:
                assert transferred >= late

            yield c.fileno(), got_sock, (errno.ECONNRESET, errno.EPIPE)


def _read_exactly(fd: int, n: int) -> bytes:
    parts: List[bytes] = []
    while n:
        chunk = os.read(fd, n)
        assert chunk
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    parts: List[bytes] = []
    while n:
        chunk = s.recv(n)
        assert chunk
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def _assert_exact(data: bytes, exc: zcio.TransferError, consumed: int) -> None:
    """source == source[:transferred] + pending + what src still has, where
    ``consumed`` is how far src was read."""
    assert consumed == exc.transferred + len(exc.pending)
    assert exc.pending == data[exc.transferred : consumed]


# Each path first, then what it falls back to (the plan's order).
PATHS = {
    "sendfile": (SENDFILE, PIPE, RW),
    "copy_file_range": (COPY_FILE_RANGE, SENDFILE, PIPE, RW),
    "splice": (SPLICE, RW),
    "splice_via_pipe": (PIPE, RW),
}


def _size_id(n: int) -> str:
    for unit, name in ((MiB, "M"), (KiB, "K")):
        for delta in (0, 1, -1):
            if (n - delta) % unit == 0:
                return f"{(n - delta) // unit}{name}" + {0: "", 1: "+1", -1: "-1"}[delta]
    return str(n)


@pytest.mark.parametrize("size", IN_FLIGHT, ids=_size_id)
@pytest.mark.parametrize("dst_kind", ["full", "fsize", "closed_pipe", "reset"])
@pytest.mark.parametrize("path", list(PATHS))
def test_late_refusal_from_a_file_is_a_clean_exact_transfer_error(tmp_path, path, dst_kind, size):
    data = payload(size, seed=size % 251)
    (tmp_path / "src").write_bytes(data)
    with open(tmp_path / "src", "rb", buffering=0) as f, refusing(dst_kind, str(tmp_path)) as (dst, got, errnos):
        src = f.fileno()
        kinds = {"full": "other", "fsize": "file", "closed_pipe": "pipe", "reset": "socket"}
        plan = Plan(src, dst, "file", kinds[dst_kind], paths=PATHS[path])
        with pytest.raises(zcio.TransferError) as info:
            zcio.splice_pipe(src, dst, plan=plan)
        exc = info.value
        assert exc.errno in errnos
        _assert_exact(data, exc, os.lseek(src, 0, os.SEEK_CUR))
        got(exc.transferred)


@pytest.mark.parametrize("size", [255 * KiB, 256 * KiB + 1, MiB + 1, 2 * MiB], ids=_size_id)
@pytest.mark.parametrize("dst_kind", ["full", "fsize", "closed_pipe", "reset"])
@pytest.mark.parametrize("path", ["splice", "splice_via_pipe"])
def test_late_refusal_from_a_socket_is_a_clean_exact_transfer_error(tmp_path, path, dst_kind, size):
    """A stream source: what was taken and not delivered is in pending, the
    rest is still in the socket. (A pipe fed from a socket may hold far more
    than its size, so here the pipe and the TCP peer refuse from the start:
    with splice via pipe, a chunk is in flight when they do.)"""
    data = payload(size, seed=7)
    a, b = socket.socketpair()
    with a, b, refusing(dst_kind, str(tmp_path), late=0) as (dst, got, errnos):
        feeder = Thread(lambda: (a.sendall(data), a.shutdown(socket.SHUT_WR)))
        feeder.start()
        kinds = {"full": "other", "fsize": "file", "closed_pipe": "pipe", "reset": "socket"}
        plan = Plan(b.fileno(), dst, "socket", kinds[dst_kind], paths=PATHS[path])
        with pytest.raises(zcio.TransferError) as info:
            zcio.splice_pipe(b, dst, plan=plan)
        exc = info.value
        assert exc.errno in errnos
        rest = read_all(b)
        feeder.finish()
        assert data == data[: exc.transferred] + exc.pending + rest
        got(exc.transferred)


@pytest.mark.parametrize("size", [255 * KiB, 256 * KiB + 1, 300_000, MiB + 1, 2 * MiB], ids=_size_id)
def test_file_to_dev_full_carries_a_pipe_over_into_the_copy_buffer(tmp_path, size):
    """sendfile EINVAL -> splice via pipe EINVAL (a pipe's worth in flight) ->
    read/write: the carried bytes are more than one copy buffer. This crashed
    (heap overflow) before the carry-over was sized by what is in flight."""
    data = payload(size, seed=3)
    (tmp_path / "f").write_bytes(data)
    with open(tmp_path / "f", "rb") as f, open("/dev/full", "wb") as full:
        with pytest.raises(zcio.TransferError) as info:
            zcio.splice_pipe(f, full)
        exc = info.value
        assert exc.errno == errno.ENOSPC and exc.transferred == 0
        # All the pipe took was carried over: a pipe's worth, or the file.
        assert f.tell() == len(exc.pending) == min(size, zcio.default_pool().pipe_size)
        assert exc.pending == data[: len(exc.pending)]


async def _arun(coro_fn: Callable[[], object]) -> object:
    return await coro_fn()  # type: ignore[misc]


def test_async_file_to_dev_full_carries_over_too(tmp_path):
    data = payload(MiB + 1, seed=5)
    (tmp_path / "f").write_bytes(data)
    with open(tmp_path / "f", "rb") as f, open("/dev/full", "wb") as full:
        transfer = aio.Transfer(f, full)
        with pytest.raises(zcio.TransferError) as info:
            asyncio.run(_arun(transfer.run))
        assert info.value.errno == errno.ENOSPC
        assert transfer.finished and transfer.transferred == 0
        assert transfer.pending == info.value.pending == data[: f.tell()]
        assert len(transfer.pending) > 256 * KiB


# ------------------------------------------------------- failures while setting up


def _buffered_socket_source(extra: bytes = b"") -> Tuple[socket.socket, socket.socket, object]:
    """(feeder, source socket, its makefile("rb") holding b"header" in its buffer)."""
    a, b = socket.socketpair()
    a.sendall(b"header\nHELD!!")
    reader = b.makefile("rb")
    assert reader.readline() == b"header\n"  # one recv: the reader keeps six bytes
    a.sendall(extra)  # not in the reader's buffer: still in the socket
    return a, b, reader


def test_emfile_at_the_pool_copies_and_is_counted(monkeypatch, tmp_path):
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    with a, b, c, d, zcio.PipePool(max_pipes=4) as pool:

        def no_fds() -> None:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

        monkeypatch.setattr(pool, "acquire", no_fds)
        a.sendall(b"by copy")
        a.shutdown(socket.SHUT_WR)
        before = zcio.stats()["fallbacks"].get("splice_via_pipe:EMFILE", 0)
        assert zcio.splice_pipe(b, c, timeout=1, pool=pool) == 7
        assert zcio.stats()["fallbacks"]["splice_via_pipe:EMFILE"] == before + 1
        c.shutdown(socket.SHUT_WR)
        assert read_all(d) == b"by copy"
        assert os.get_blocking(b.fileno()) and os.get_blocking(c.fileno())


def test_rlimit_nofile_at_the_pool_copies(tmp_path):
    """A real EMFILE: the process has no fd free for a pipe."""
    a, b = socket.socketpair()
    with a, b, open(tmp_path / "d", "wb") as out, zcio.PipePool(max_pipes=4) as pool:
        a.sendall(b"x" * 5000)
        a.shutdown(socket.SHUT_WR)
        lowest_free = os.dup(b.fileno())
        os.close(lowest_free)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
        try:
            with pytest.raises(OSError):
                os.pipe()  # the limit bites
            n = zcio.splice_pipe(b, out, timeout=1, pool=pool)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert n == 5000 and pool.in_use == 0
        assert os.get_blocking(b.fileno())


def test_other_error_at_the_pool_leaves_everything_as_found(monkeypatch):
    """socket -> socket with a timeout: the pool fails with something that is
    not an fd shortage. Both sockets are blocking again and the reader's
    buffered bytes are on the exception (they were taken last, so here: not
    taken at all)."""
    a, b, reader = _buffered_socket_source(b" and more")
    c, d = socket.socketpair()
    with a, b, c, d, reader, zcio.PipePool(max_pipes=4) as pool:  # type: ignore[attr-defined]

        def broken() -> None:
            raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))

        monkeypatch.setattr(pool, "acquire", broken)
        with pytest.raises(OSError) as info:
            zcio.splice_pipe(reader, c, timeout=1, pool=pool)
        assert info.value.errno == errno.ENOMEM
        assert os.get_blocking(b.fileno()) and os.get_blocking(c.fileno())
        taken = getattr(info.value, "pending", b"")
        a.close()
        assert taken + reader.read() == b"HELD!! and more"  # type: ignore[attr-defined]


def test_bad_fd_found_late_restores_modes_and_keeps_the_buffered_bytes():
    """A reused plan for a destination closed since: the bad fd is found
    after the source was switched to non-blocking."""
    a, b, reader = _buffered_socket_source(b"tail")
    c, d = socket.socketpair()
    with a, b, reader, d:  # type: ignore[attr-defined]
        plan = Plan.probe(b, c)
        dead = plan.dst_fd
        c.close()  # its number is free now; the stale plan still names it
        with pytest.raises(OSError) as info:
            zcio.splice_pipe(reader, dead, timeout=1, plan=plan)
        assert info.value.errno == errno.EBADF
        assert os.get_blocking(b.fileno())
        a.close()
        assert getattr(info.value, "pending", b"") + reader.read() == b"HELD!!tail"  # type: ignore[attr-defined]


def test_destination_refusing_the_first_write_reports_the_buffered_bytes(tmp_path):
    """The reader's bytes were taken, then dst (open read-only) refused."""
    a, b, reader = _buffered_socket_source(b"never sent")
    (tmp_path / "ro").write_bytes(b"")
    with a, b, reader, open(tmp_path / "ro", "rb") as ro:  # type: ignore[attr-defined]
        with pytest.raises(zcio.TransferError) as info:
            zcio.splice_pipe(reader, ro.fileno(), timeout=1)
        exc = info.value
        assert exc.errno == errno.EBADF and exc.transferred == 0
        assert exc.pending == b"HELD!!"
        assert os.get_blocking(b.fileno())
        a.close()
        assert reader.read() == b"never sent"  # type: ignore[attr-defined]


@pytest.mark.parametrize("timeout", [None, 1.0])
def test_progress_raising_on_its_first_call_loses_nothing(tmp_path, timeout):
    a, b, reader = _buffered_socket_source(payload(50_000))
    c, d = socket.socketpair()

    class Stop(Exception):
        pass

    def progress(total: int) -> None:
        raise Stop(total)

    with a, b, c, d, reader:  # type: ignore[attr-defined]
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(Stop) as info:
            zcio.splice_pipe(reader, c, timeout=timeout, progress=progress)
        exc = info.value
        assert exc.transferred == 6 and exc.pending == b""  # type: ignore[attr-defined]
        assert os.get_blocking(b.fileno()) and os.get_blocking(c.fileno())
        c.shutdown(socket.SHUT_WR)
        assert read_all(d) == b"HELD!!"
        assert reader.read() == payload(50_000)  # type: ignore[attr-defined]


def test_progress_raising_on_its_first_call_file_to_file(tmp_path):
    data = payload(3 * MiB, 11)
    (tmp_path / "s").write_bytes(data)

    def progress(total: int) -> None:
        raise KeyError(total)

    with open(tmp_path / "s", "rb") as f, open(tmp_path / "d", "wb") as g:
        f.read(10)  # a buffered reader: starts at tell(), not at the fd's position
        with pytest.raises(KeyError) as info:
            zcio.splice_pipe(f, g, progress=progress)
        moved = info.value.transferred  # type: ignore[attr-defined]
        assert info.value.pending == b""  # type: ignore[attr-defined]
        assert f.tell() == 10 + moved and g.tell() == moved
    assert (tmp_path / "d").read_bytes() == data[10 : 10 + moved]


def test_async_progress_raising_on_its_first_call_loses_nothing(tmp_path):
    data = payload(3 * MiB, 17)
    (tmp_path / "s").write_bytes(data)
    a, b = socket.socketpair()
    with a, b, open(tmp_path / "s", "rb") as f:
        a.setblocking(False)
        f.read(100)

        def progress(total: int) -> None:
            raise KeyError(total)

        async def main() -> aio.Transfer:
            transfer = aio.Transfer(f, a, progress=progress)
            with pytest.raises(KeyError):
                await transfer
            return transfer

        transfer = asyncio.run(main())
        assert transfer.finished and transfer.pending == b""
        assert 0 < transfer.transferred and f.tell() == 100 + transfer.transferred
        a.close()
        b.settimeout(JOIN)
        assert read_all(b) == data[100 : 100 + transfer.transferred]


def test_blocking_socket_refused_by_aio_before_anything_is_taken(tmp_path):
    a, b, reader = _buffered_socket_source(b"rest")
    with a, b, reader, open(tmp_path / "d", "wb") as out:  # type: ignore[attr-defined]

        async def main() -> None:
            with pytest.raises(ValueError, match="non-blocking"):
                await aio.splice_pipe(reader, out)

        asyncio.run(main())
        a.close()
        assert reader.read() == b"HELD!!rest"  # type: ignore[attr-defined]


# ------------------------------------------------------------ dropped unclosed


def _closed(*fds: int) -> bool:
    for fd in fds:
        try:
            os.fstat(fd)
        except OSError:
            continue
        return False
    return True


def test_dropped_pipe_is_closed_with_a_resource_warning():
    p = zcio.Pipe()
    fds = (p.r, p.w)
    with pytest.warns(ResourceWarning, match="unclosed"):
        del p
        gc.collect()
    assert _closed(*fds)


def test_dropped_pool_closes_its_free_pipes_with_a_resource_warning():
    pool = zcio.PipePool(max_pipes=3)
    pipes = [pool.acquire() for _ in range(3)]
    fds = [fd for p in pipes for fd in (p.r, p.w)]  # type: ignore[union-attr]
    for p in pipes:
        pool.release(p)  # type: ignore[arg-type]
    del p, pipes
    assert pool.free == 3
    with pytest.warns(ResourceWarning, match="unclosed"):
        del pool
        gc.collect()
    assert _closed(*fds)


def test_pipe_dropped_unreleased_warns_and_gives_its_place_back():
    with zcio.PipePool(max_pipes=1) as pool:
        p = pool.acquire()
        assert p is not None and pool.acquire() is None
        fds = (p.r, p.w)
        with pytest.warns(ResourceWarning, match="never released"):
            del p
            gc.collect()
        assert _closed(*fds)
        assert pool.in_use == 0
        again = pool.acquire()
        assert again is not None
        pool.release(again)
        with pytest.raises(ValueError):
            pool.release(again)  # twice


def test_a_pool_that_owns_nothing_and_closed_objects_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        zcio.PipePool()
        with zcio.Pipe():
            pass
        p = zcio.Pipe()
        p.close()
        del p
        gc.collect()


def test_dropped_transfer_gives_its_pipe_back_with_a_resource_warning():
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    with a, b, c, d, zcio.PipePool(max_pipes=1) as pool:
        t = Xfer(b, c, None, None, pool)
        assert t.method == PIPE and pool.in_use == 1
        with pytest.warns(ResourceWarning, match="unclosed zcio transfer"):
            del t
            gc.collect()
        assert pool.in_use == 0 and pool.free == 1


def test_an_abandoned_async_transfer_gives_everything_back():
    """A coroutine dropped while it waits is closed by Python: the transfer's
    tear-down runs (no warning needed, nothing leaks)."""
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    with a, b, c, d, zcio.PipePool(max_pipes=1) as pool:
        for s in (b, c):
            s.setblocking(False)

        async def main() -> None:
            transfer = aio.Transfer(b, c, pool=pool)
            task = asyncio.ensure_future(transfer.run())
            await asyncio.sleep(0)
            assert pool.in_use == 1  # waiting for src with a pipe checked out
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(main())
        assert pool.in_use == 0


# ---------------------------------------------------------------- plans


def test_aio_sendfile_asks_nothing_about_its_fds(monkeypatch, tmp_path):
    """A served file's slices: one sendfile each, no fstat/fcntl around it."""
    data = payload(64 * KiB, 13)
    (tmp_path / "s").write_bytes(data)
    a, b = socket.socketpair()
    zcio.default_pool()  # made once per process, not per call
    loop = asyncio.new_event_loop()
    with a, b, open(tmp_path / "s", "rb") as f:
        a.setblocking(False)
        calls: List[str] = []

        async def main() -> int:
            total = 0
            for off in range(0, len(data), 4 * KiB):
                total += await aio.sendfile(a, f.fileno(), off, 4 * KiB)
            return total

        try:
            for mod, name in ((os, "fstat"), (os, "get_blocking"), (_transfer.fcntl, "fcntl")):
                real = getattr(mod, name)
                monkeypatch.setattr(mod, name, lambda *args, _real=real, _n=name: (calls.append(_n), _real(*args))[1])
            assert loop.run_until_complete(main()) == len(data)
            monkeypatch.undo()
        finally:
            loop.close()
        assert calls == []
        a.shutdown(socket.SHUT_WR)
        b.settimeout(JOIN)
        assert read_all(b) == data


def test_a_reused_plan_skips_the_probe(monkeypatch, tmp_path):
    (tmp_path / "s").write_bytes(payload(10_000))
    with open(tmp_path / "s", "rb") as f, open(os.devnull, "wb") as out:
        plan = Plan.probe(f, out)
        assert plan.paths == (SENDFILE, PIPE, RW)
        calls: List[int] = []
        real = os.fstat
        monkeypatch.setattr(os, "fstat", lambda fd: (calls.append(fd), real(fd))[1])
        for off in range(0, 10_000, 1000):
            assert zcio.splice_pipe(f, out, 1000, offset=off, plan=plan) == 1000
        assert calls == []
        with pytest.raises(ValueError, match="other fds"):
            zcio.splice_pipe(out, f, plan=plan)


def test_plan_shapes():
    with pytest.raises(ValueError):
        Plan(0, 1, "file", "disk")
    with pytest.raises(ValueError):
        Plan(0, 1, "file", "file", paths=(SENDFILE,))  # must end with the copy path
    assert Plan(0, 1, "file", "file", append=True).paths == (RW,)
    assert not Plan(0, 1, "file", "file", append=True, sparse=True).sparse


# ---------------------------------------------------------------- holes


def _make_sparse(path: str, layout: List[Tuple[int, int]], seed: int = 0) -> bytes:
    """Write (data, hole) extents; returns the file's bytes."""
    out = bytearray()
    with open(path, "wb") as f:
        for i, (data, hole) in enumerate(layout):
            chunk = payload(data, seed + i)
            f.write(chunk)
            out += chunk
            if hole:
                f.seek(hole, os.SEEK_CUR)
                out += bytes(hole)
        f.truncate(len(out))
    return bytes(out)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _allocated(path: str) -> int:
    return os.stat(path).st_blocks * 512


def test_sparse_file_stays_sparse_byte_for_byte(tmp_path):
    src, dst = str(tmp_path / "s"), str(tmp_path / "d")
    data = _make_sparse(src, [(4 * KiB, MiB), (10, 2 * MiB), (8 * KiB, 5 * MiB)])  # trailing hole
    with open(src, "rb") as f, open(dst, "wb") as g:
        assert zcio.splice_pipe(f, g) == len(data)
        assert f.tell() == g.tell() == len(data)
    assert os.path.getsize(dst) == len(data)
    assert _read(dst) == data
    assert _allocated(dst) <= _allocated(src) + 64 * KiB < len(data) // 8


def test_two_gib_sparse_image_stays_sparse():
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "img"), os.path.join(tmp, "copy")
        with open(src, "wb") as f:
            f.write(b"boot")
            f.seek((2 << 30) - 4)
            f.write(b"tail")
        with open(src, "rb") as f, open(dst, "wb") as g:
            assert zcio.splice_pipe(f, g) == 2 << 30
        assert os.path.getsize(dst) == 2 << 30
        assert _allocated(dst) <= 64 * KiB
        with open(dst, "rb") as g:
            assert g.read(4) == b"boot"
            g.seek((2 << 30) - 4)
            assert g.read() == b"tail"


def test_hole_over_old_data_is_written_as_zeros(tmp_path):
    src, dst = str(tmp_path / "s"), str(tmp_path / "d")
    data = _make_sparse(src, [(5000, 3 * MiB), (7, 0)])
    old = b"\xff" * (2 * MiB)
    (tmp_path / "d").write_bytes(old)
    fd = os.open(dst, os.O_WRONLY)  # no O_TRUNC: dst keeps bytes past what is copied
    try:
        with open(src, "rb") as f:
            assert zcio.splice_pipe(f, fd, 1 * MiB) == MiB
        assert os.lseek(fd, 0, os.SEEK_CUR) == MiB
    finally:
        os.close(fd)
    assert _read(dst) == data[:MiB] + old[MiB:]


def test_sparse_failure_inside_a_hole_accounts_exactly(tmp_path):
    """The destination may not grow past the limit; the hole that crosses it
    is refused as a whole (ftruncate), so transferred stops at its start."""
    src, dst = str(tmp_path / "s"), str(tmp_path / "d")
    data = _make_sparse(src, [(100_000, MiB), (10, 0)])
    with open(src, "rb", buffering=0) as f, open(dst, "wb", buffering=0) as g:
        with _fsize_limit(FSIZE_LIMIT):
            with pytest.raises(zcio.TransferError) as info:
                zcio.splice_pipe(f, g)
        exc = info.value
        assert exc.errno == errno.EFBIG and exc.pending == b""
        assert f.tell() == g.tell() == exc.transferred == os.path.getsize(dst)
    assert _read(dst) == data[: exc.transferred]


extents = st.lists(
    st.tuples(st.integers(0, 40_000), st.sampled_from([0, 1, 4095, 4096, 65536, 300_000, MiB + 5])),
    min_size=1,
    max_size=5,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    layout=extents,
    offset=st.one_of(st.none(), st.integers(0, 600_000)),
    count=st.one_of(st.none(), st.integers(0, 2 * MiB)),
    old=st.sampled_from([0, 1, 70_000, MiB]),
    at=st.sampled_from([0, 3, 8192]),
    path=st.sampled_from(sorted(PATHS)),
)
def test_sparse_round_trip(tmp_path, layout, offset, count, old, at, path):
    """Any layout of extents, any offset and count, over a destination with
    older bytes, starting anywhere: the bytes, the sizes and both positions
    are those of a plain copy, by every path."""
    src, dst = str(tmp_path / "s"), str(tmp_path / "d")
    data = _make_sparse(src, layout)
    before = payload(old, 99)
    with open(dst, "wb") as g:
        g.write(before)
    start = 5 if offset is None else offset
    moved = data[start:] if count is None else data[start : start + count]
    s_fd = os.open(src, os.O_RDONLY)
    d_fd = os.open(dst, os.O_WRONLY)
    try:
        os.lseek(s_fd, 5, os.SEEK_SET)
        os.lseek(d_fd, at, os.SEEK_SET)
        plan = Plan.probe(s_fd, d_fd)
        assert plan.sparse
        plan = Plan(s_fd, d_fd, "file", "file", sparse=True, paths=PATHS[path])
        assert zcio.splice_pipe(s_fd, d_fd, count, offset=offset, plan=plan) == len(moved)
        assert os.lseek(s_fd, 0, os.SEEK_CUR) == (5 if offset is not None else 5 + len(moved))
        assert os.lseek(d_fd, 0, os.SEEK_CUR) == at + len(moved)
    finally:
        os.close(s_fd)
        os.close(d_fd)
    # Writing nothing leaves the file alone; writing past its end fills the gap with zeros.
    head = before[:at] + bytes(max(0, at - len(before)))
    expected = head + moved + before[at + len(moved) :] if moved else before
    assert _read(dst) == expected


def test_tee_set_up_takes_both_pipes_or_neither(monkeypatch, tmp_path):
    made: List[zcio.Pipe] = []
    real = _tee.Pipe

    def second_fails() -> zcio.Pipe:
        if made:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        made.append(real())
        return made[-1]

    monkeypatch.setattr(_tee, "Pipe", second_fails)
    r, w = os.pipe()
    with open(tmp_path / "m", "wb") as m, open(os.devnull, "wb") as out:
        try:
            with pytest.raises(OSError) as info:
                zcio.tee_pipe(r, out, m)
        finally:
            os.close(r)
            os.close(w)
    assert info.value.errno == errno.EMFILE
    assert made[0].closed
