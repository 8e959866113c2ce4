"""zcio.aio: the same test bodies on the stdlib loop and on uvloop."""
from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
from typing import Any, Awaitable, Callable, List, Tuple

import pytest

import zcio
from zcio import aio

from _net import read_to_eof
from test_streams import payload

LOOPS = ["asyncio"]
try:
    import uvloop

    LOOPS.append("uvloop")
except ImportError:  # pragma: no cover - uvloop is in the test extra
    uvloop = None

DEADLINE = 30.0  # seconds: a hang guard on every test body


@pytest.fixture(params=LOOPS)
def run(request) -> Callable[[Callable[[], Awaitable[Any]]], Any]:
    def runner(body: Callable[[], Awaitable[Any]]) -> Any:
        loop = uvloop.new_event_loop() if request.param == "uvloop" else asyncio.new_event_loop()
        try:
            return loop.run_until_complete(asyncio.wait_for(body(), DEADLINE))
        finally:
            loop.close()

    return runner


def nb_pair() -> Tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


async def recv_all(s: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    parts = []
    while True:
        chunk = await loop.sock_recv(s, 1 << 20)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)


async def send_all(s: socket.socket, data: bytes, close: bool = True) -> None:
    await asyncio.get_running_loop().sock_sendall(s, data)
    if close:
        s.shutdown(socket.SHUT_WR)


@pytest.mark.parametrize("size", [0, 1, 65537, 5 << 20])
def test_file_to_socket_and_socket_to_file(run, tmp_path, size):
    data = payload(size, 41)
    (tmp_path / "s").write_bytes(data)
    a, b = nb_pair()
    c, d = nb_pair()

    async def body() -> None:
        with open(tmp_path / "s", "rb") as f, open(tmp_path / "d", "wb") as g:
            reader = asyncio.ensure_future(aio.splice_pipe(b, g))
            assert await aio.splice_pipe(f, a) == size
            assert f.tell() == size
            a.shutdown(socket.SHUT_WR)
            assert await reader == size

    try:
        run(body)
    finally:
        for s in (a, b, c, d):
            s.close()
    assert (tmp_path / "d").read_bytes() == data


def test_socket_to_socket_and_pipe_to_pipe(run):
    data = payload(3 << 20, 43)
    a, b = nb_pair()
    c, d = nb_pair()
    r1, w1 = os.pipe2(os.O_NONBLOCK)
    r2, w2 = os.pipe2(os.O_NONBLOCK)

    async def body() -> None:
        got = asyncio.ensure_future(recv_all(d))
        sender = asyncio.ensure_future(send_all(a, data))
        assert await aio.splice_pipe(b, c) == len(data)
        c.shutdown(socket.SHUT_WR)
        await sender
        assert await got == data
        # pipe -> pipe, fed and drained by the loop
        loop = asyncio.get_running_loop()
        feeder = loop.run_in_executor(None, lambda: (_write_blocking(w1, data), os.close(w1)))
        drained = loop.run_in_executor(None, _read_blocking, r2)
        assert await aio.splice_pipe(r1, w2) == len(data)
        os.close(w2)
        await feeder
        assert await drained == data

    try:
        run(body)
    finally:
        for s in (a, b, c, d):
            s.close()
        for fd in (r1, r2):
            os.close(fd)


def _write_blocking(fd: int, data: bytes) -> None:
    import select

    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            select.select([], [fd], [], DEADLINE)


def _read_blocking(fd: int) -> bytes:
    import select

    parts = []
    while True:
        try:
            chunk = os.read(fd, 1 << 20)
        except BlockingIOError:
            select.select([fd], [], [], DEADLINE)
            continue
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)


def test_loop_stays_responsive_during_a_big_transfer(run, tmp_path):
    (tmp_path / "s").write_bytes(payload(96 << 20, 47))
    a, b = nb_pair()
    ticks: List[int] = []

    async def body() -> None:
        stop = asyncio.Event()

        async def ticker() -> None:
            while not stop.is_set():
                ticks.append(1)
                await asyncio.sleep(0)

        t = asyncio.ensure_future(ticker())
        sink = asyncio.ensure_future(aio.splice_pipe(b, _null))
        with open(tmp_path / "s", "rb") as f:
            assert await aio.splice_pipe(f, a) == 96 << 20
        a.shutdown(socket.SHUT_WR)
        assert await sink == 96 << 20
        stop.set()
        await t

    _null = os.open(os.devnull, os.O_WRONLY)
    try:
        run(body)
    finally:
        os.close(_null)
        a.close()
        b.close()
    assert len(ticks) >= 12  # at least one tick per 8 MiB slice


def test_cancellation_leaves_exact_accounting(run):
    """socket -> socket through the pipe; the destination stalls; cancel."""
    data = payload(16 << 20, 53)
    a, b = nb_pair()  # source: a sends, b is read by zcio
    c, d = nb_pair()  # destination: zcio writes c, d never reads (stall)

    async def body() -> Tuple[int, bytes]:
        progressed = asyncio.Event()
        sender = asyncio.ensure_future(send_all(a, data))
        transfer = aio.Transfer(b, c, progress=lambda n: progressed.set())
        task = asyncio.ensure_future(transfer.run())
        await progressed.wait()
        # Let it fill the destination's buffers and block.
        for _ in range(50):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError) as info:
            await task
        sender.cancel()
        assert transfer.finished
        if hasattr(info.value, "transferred"):  # Python 3.11+: the same exception
            assert info.value.transferred == transfer.transferred  # type: ignore[attr-defined]
            assert info.value.pending == transfer.pending  # type: ignore[attr-defined]
        return transfer.transferred, transfer.pending

    try:
        transferred, pending = run(body)
        a.close()  # stop the source; read what zcio did not take
        b.setblocking(True)
        b.settimeout(DEADLINE)
        rest = read_to_eof(b)
        c.shutdown(socket.SHUT_WR)
        d.setblocking(True)
        d.settimeout(DEADLINE)
        delivered = read_to_eof(d)
        assert 0 < transferred == len(delivered)
        assert delivered == data[:transferred]
        sent = transferred + len(pending) + len(rest)
        assert data[:sent] == delivered + pending + rest
    finally:
        for s in (a, b, c, d):
            s.close()


def test_progress_exception_propagates_with_accounting(run, tmp_path):
    """progress runs from the loop's readiness callbacks; what it raises
    still comes out of the awaited call, with the bytes accounted for."""
    data = payload(32 << 20, 61)
    (tmp_path / "s").write_bytes(data)
    a, b = nb_pair()
    seen: List[int] = []
    raised: List[int] = []

    class Stop(Exception):
        pass

    def progress(n: int) -> None:
        seen.append(n)
        if n >= 1 << 20 and not raised:
            raised.append(n)
            raise Stop  # once: a later call must not be what raises

    async def body() -> None:
        got = asyncio.ensure_future(recv_all(b))
        with open(tmp_path / "s", "rb") as f:
            with pytest.raises(Stop) as info:
                await aio.splice_pipe(f, a, progress=progress)
        a.shutdown(socket.SHUT_WR)
        received = await got
        assert info.value.transferred == len(received) == raised[0] == seen[-1] < len(data)  # type: ignore[attr-defined]
        assert info.value.pending == b""  # type: ignore[attr-defined]
        assert received == data[: len(received)]

    try:
        run(body)
    finally:
        a.close()
        b.close()


def test_sendfile_like_loop_sock_sendfile(run, tmp_path):
    data = payload(1 << 20, 59)
    (tmp_path / "s").write_bytes(data)
    a, b = nb_pair()

    async def body() -> None:
        got = asyncio.ensure_future(recv_all(b))
        with open(tmp_path / "s", "rb") as f:
            assert await aio.sendfile(a, f, 100, 5000) == 5000
            assert f.tell() == 5100
            assert await aio.sendfile(a, f, 6000) == len(data) - 6000
            assert f.tell() == len(data)
        a.shutdown(socket.SHUT_WR)
        assert await got == data[100:5100] + data[6000:]

    try:
        run(body)
    finally:
        a.close()
        b.close()


def test_blocking_socket_is_refused(run, tmp_path):
    (tmp_path / "s").write_bytes(b"x")
    a, b = socket.socketpair()

    async def body() -> None:
        with open(tmp_path / "s", "rb") as f:
            with pytest.raises(ValueError, match="non-blocking"):
                await aio.splice_pipe(f, a)

    try:
        run(body)
    finally:
        a.close()
        b.close()


def test_tee_pipe(run, tmp_path):
    data = payload(2 << 20 | 3, 61)
    a, b = nb_pair()
    c, d = nb_pair()

    async def body() -> None:
        got = asyncio.ensure_future(recv_all(d))
        sender = asyncio.ensure_future(send_all(a, data))
        with open(tmp_path / "m", "wb") as m:
            assert await aio.tee_pipe(b, c, m) == len(data)
        c.shutdown(socket.SHUT_WR)
        await sender
        assert await got == data

    try:
        run(body)
    finally:
        for s in (a, b, c, d):
            s.close()
    assert (tmp_path / "m").read_bytes() == data


def test_proxy_half_close_both_ways(run):
    up, down = payload(1 << 20, 67), payload(3 << 20, 71)
    c1, s1 = nb_pair()
    s2, c2 = nb_pair()

    async def body() -> None:
        relay = asyncio.ensure_future(aio.proxy(s1, s2))

        async def client() -> bytes:
            await send_all(c1, up)
            return await recv_all(c1)

        async def server() -> bytes:
            got = await recv_all(c2)
            await send_all(c2, down)
            return got

        ct, st = asyncio.ensure_future(client()), asyncio.ensure_future(server())
        assert await st == up
        assert await ct == down
        assert await relay == (len(up), len(down))

    try:
        run(body)
    finally:
        for s in (c1, s1, s2, c2):
            s.close()


def test_proxy_reset_raises_not_hangs(run):
    c1, s1 = nb_pair()
    s2, c2 = nb_pair()

    async def body() -> None:
        relay = asyncio.ensure_future(aio.proxy(s1, s2))
        await send_all(c1, b"hello", close=False)
        loop = asyncio.get_running_loop()
        assert await loop.sock_recv(c2, 5) == b"hello"
        c1.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c1.close()
        with pytest.raises(zcio.TransferError) as info:
            await relay
        assert info.value.errno == errno.ECONNRESET

    try:
        run(body)
    finally:
        for s in (s1, s2, c2):
            s.close()


def test_a_hundred_concurrent_relays(run):
    n = 100
    pairs = [(nb_pair(), nb_pair()) for _ in range(n)]

    async def body() -> None:
        async def one(i: int) -> None:
            (c1, s1), (s2, c2) = pairs[i]
            up, down = payload(100_000 + i, i), payload(50_000 + i, i + 1)
            relay = asyncio.ensure_future(aio.proxy(s1, s2))

            async def server() -> bytes:
                got = await recv_all(c2)
                await send_all(c2, down)
                return got

            st = asyncio.ensure_future(server())
            await send_all(c1, up)
            assert await recv_all(c1) == down
            assert await st == up
            assert await relay == (len(up), len(down))

        await asyncio.gather(*(one(i) for i in range(n)))

    try:
        run(body)
        assert zcio.default_pool().in_use == 0
        assert zcio.default_pool().free <= zcio.default_pool().max_pipes
    finally:
        for (c1, s1), (s2, c2) in pairs:
            for s in (c1, s1, s2, c2):
                s.close()


# ------------------------------------------------------ AsyncZeroCopySender


def test_async_zerocopy_sender_exact_bytes_pins_and_completions(run):
    a, b = nb_pair()
    sizes = [100, 20_000, 65_536, 1 << 20, 3_000_000, 17, 300_000]
    blobs = [bytearray(payload(n, i)) for i, n in enumerate(sizes)]

    async def body() -> None:
        got = asyncio.ensure_future(recv_all(b))
        async with aio.AsyncZeroCopySender(a, policy="always") as sender:
            tickets = [await sender.sendall(blob) for blob in blobs]
            big = blobs[3]
            if not tickets[3].done():
                with pytest.raises(BufferError):
                    big.extend(b"x")  # pinned until the kernel is done with it
            for t in tickets:
                assert await t.wait(DEADLINE)
            big.extend(b"x")  # released
            assert tickets[3].copied  # loopback always copies
            assert sender.in_flight == 0
            assert sender.stats["zerocopy_sends"] > 0
        a.shutdown(socket.SHUT_WR)  # the sender left the socket open
        assert await got == b"".join(bytes(x[: n]) for x, n in zip(blobs, sizes))

    try:
        run(body)
    finally:
        a.close()
        b.close()


def test_async_zerocopy_sender_waits_on_the_loop_for_a_stalled_peer(run):
    a, b = nb_pair()
    data = payload(24 << 20, 79)
    ticks: List[int] = []

    async def body() -> None:
        stop = asyncio.Event()

        async def ticker() -> None:
            while not stop.is_set():
                ticks.append(1)
                await asyncio.sleep(0.001)

        t = asyncio.ensure_future(ticker())
        async with aio.AsyncZeroCopySender(a, policy="auto") as sender:
            sending = asyncio.ensure_future(sender.sendall(data))
            # Nobody reads yet: the send must be waiting, not blocking the loop.
            while len(ticks) < 20:
                await asyncio.sleep(0.001)
            assert not sending.done()
            got = asyncio.ensure_future(recv_all(b))
            ticket = await sending
            assert await ticket.wait(DEADLINE)
            assert await sender.flush(DEADLINE)
        a.shutdown(socket.SHUT_WR)
        assert await got == data
        stop.set()
        await t

    try:
        run(body)
    finally:
        a.close()
        b.close()


def test_async_zerocopy_sender_udp_one_datagram(run):
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(rx.getsockname())
    tx.setblocking(False)
    rx.settimeout(DEADLINE)

    async def body() -> None:
        async with aio.AsyncZeroCopySender(tx, policy="always", threshold=1024) as sender:
            ticket = await sender.sendall(payload(30_000, 83))
            assert await ticket.wait(DEADLINE)

    try:
        run(body)
        assert rx.recv(65536) == payload(30_000, 83)
    finally:
        rx.close()
        tx.close()


def test_async_zerocopy_sender_refuses_a_blocking_socket(run):
    a, b = socket.socketpair()

    async def body() -> None:
        with pytest.raises(ValueError, match="non-blocking"):
            aio.AsyncZeroCopySender(a)

    try:
        run(body)
    finally:
        a.close()
        b.close()
