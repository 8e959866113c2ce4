"""zcio.aio.transport_sendfile, loop_factory and detach on asyncio streams,
each on the stdlib loop and on uvloop."""
from __future__ import annotations

import asyncio
import os
import socket
import sys
from typing import Any, Awaitable, Callable, List, Tuple

import pytest

import zcio
import zcio.aio as aio
from _servers import LOOPS, has_uvloop, tls

__all__ = ["tls"]  # the fixture, imported for the tests below


@pytest.fixture(params=LOOPS)
def run(request: Any) -> Any:
    """Run a coroutine to completion on a fresh loop_factory() loop."""
    if request.param and not has_uvloop():
        pytest.skip("uvloop is not installed")
    loops: List[asyncio.AbstractEventLoop] = []

    def runner(coro: Awaitable[Any]) -> Any:
        loop = aio.loop_factory(uvloop=request.param)
        loops.append(loop)
        return loop.run_until_complete(asyncio.wait_for(coro, 30))

    yield runner
    for loop in loops:
        loop.close()


@pytest.fixture
def data_file(tmp_path: Any) -> Any:
    data = os.urandom((8 << 20) + 5)
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    with open(path, "rb") as f:
        yield f, data


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve_one(handler: Handler, **kwargs: Any) -> Tuple[asyncio.AbstractServer, Tuple[str, int]]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0, **kwargs)
    return server, server.sockets[0].getsockname()[:2]


async def read_all(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    while True:
        block = await reader.read(1 << 20)
        if not block:
            return bytes(out)
        out += block


def test_buffered_writes_first_body_then_later_writes(run: Any, data_file: Any) -> None:
    f, data = data_file
    head = os.urandom(8 << 20)  # more than the sockets hold: the transport buffers the rest

    async def main() -> None:
        loop = asyncio.get_running_loop()
        result: "asyncio.Future[Any]" = loop.create_future()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(head)
            buffered = writer.transport.get_write_buffer_size()
            n = await aio.transport_sendfile(writer.transport, f, 123, 5 << 20)
            reading = writer.transport.is_reading()
            writer.write(b"TAIL")
            line = await reader.readline()  # the transport still reads
            writer.write(line)
            await writer.drain()
            writer.close()
            result.set_result((buffered, n, f.tell(), reading))

        server, addr = await serve_one(handler)
        async with server:
            client = socket.socket()
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)  # no autotuning
            client.setblocking(False)
            with client:
                await loop.sock_connect(client, addr)
                await loop.sock_sendall(client, b"ping\n")
                got = bytearray()
                while True:
                    block = await loop.sock_recv(client, 1 << 20)
                    if not block:
                        break
                    got += block
            buffered, n, position, reading = await result
        assert buffered > 0  # so the body had to wait for the head
        assert n == 5 << 20 and position == 123 + (5 << 20) and reading
        assert bytes(got) == head + data[123 : 123 + (5 << 20)] + b"TAIL" + b"ping\n"

    run(main())


def test_count_none_to_end_offset_past_end_and_fd(run: Any, data_file: Any) -> None:
    f, data = data_file

    async def main() -> None:
        results: List[Any] = []

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            results.append(await aio.transport_sendfile(writer.transport, f, len(data) - 1000))
            results.append(f.tell())
            results.append(await aio.transport_sendfile(writer.transport, f, len(data) + 10))
            results.append(await aio.transport_sendfile(writer.transport, f.fileno(), 0, 10))
            results.append(os.lseek(f.fileno(), 0, os.SEEK_CUR))
            writer.close()

        server, addr = await serve_one(handler)
        async with server:
            reader, writer = await asyncio.open_connection(*addr)
            got = await read_all(reader)
            writer.close()
        assert results == [1000, len(data), 0, 10, 10]
        assert got == data[-1000:] + data[:10]

    run(main())


def test_unix_stream_transport(run: Any, data_file: Any, tmp_path: Any) -> None:
    f, data = data_file
    path = str(tmp_path / "sock")

    async def main() -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await aio.transport_sendfile(writer.transport, f)
            writer.close()

        before = zcio.stats()["bytes"].get("sendfile", 0)
        server = await asyncio.start_unix_server(handler, path)
        async with server:
            reader, writer = await asyncio.open_unix_connection(path)
            got = await read_all(reader)
            writer.close()
        assert got == data
        assert zcio.stats()["bytes"].get("sendfile", 0) - before == len(data)

    run(main())


def test_tls_copies_or_refuses(run: Any, data_file: Any, tls: Any) -> None:
    f, data = data_file

    async def main() -> None:
        results: List[Any] = []

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with pytest.raises(TypeError):  # its socket would bypass the encryption
                await aio.detach(writer, reader)
            f.seek(7)
            try:
                await aio.transport_sendfile(writer.transport, f, 0, 10, fallback=False)
            except asyncio.SendfileNotAvailableError:
                results.append(("refused", f.tell()))
            results.append(await aio.transport_sendfile(writer.transport, f, 100))
            results.append(f.tell())
            writer.close()

        before = zcio.stats()["bytes"].get("sendfile", 0)
        server, addr = await serve_one(handler, ssl=tls.server_context)
        async with server:
            reader, writer = await asyncio.open_connection(*addr, ssl=tls.client_context, server_hostname="127.0.0.1")
            got = await read_all(reader)
            writer.close()
        assert results == [("refused", 7), len(data) - 100, len(data)]
        assert got == data[100:]
        assert zcio.stats()["bytes"].get("sendfile", 0) == before

    run(main())


def test_reset_mid_body_raises_and_aborts(run: Any, data_file: Any) -> None:
    f, data = data_file

    async def main() -> None:
        outcome: "asyncio.Future[Any]" = asyncio.get_running_loop().create_future()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await aio.transport_sendfile(writer.transport, f, 1)
            except BaseException as exc:
                outcome.set_result((exc, f.tell(), writer.transport.is_closing()))
                raise
            outcome.set_result((None, f.tell(), False))

        server, addr = await serve_one(handler)
        async with server:
            loop = asyncio.get_running_loop()
            client = socket.socket()
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 10)
            client.setblocking(False)
            await loop.sock_connect(client, addr)
            got = 0
            while got < 256 << 10:
                got += len(await loop.sock_recv(client, 64 << 10))
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            client.close()
            exc, position, closing = await outcome
        assert isinstance(exc, ConnectionError) and isinstance(exc, zcio.TransferError)
        assert 0 < exc.transferred < len(data) - 1
        assert position == 1 + exc.transferred and closing

    run(main())


def test_cancel_leaves_position_consistent(run: Any, data_file: Any) -> None:
    f, data = data_file

    async def main() -> None:
        loop = asyncio.get_running_loop()
        started: "asyncio.Future[Any]" = loop.create_future()
        outcome: "asyncio.Future[Any]" = loop.create_future()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            send = asyncio.ensure_future(aio.transport_sendfile(writer.transport, f, 50))
            started.set_result(send)
            try:
                await send
            except asyncio.CancelledError:
                outcome.set_result((f.tell() - 50, writer.transport.is_reading()))
            writer.close()

        server, addr = await serve_one(handler)
        async with server:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)  # far less than the body
            sock.setblocking(False)
            await loop.sock_connect(sock, addr)
            reader, writer = await asyncio.open_connection(sock=sock)
            first = await reader.readexactly(64 << 10)  # mid-body: the rest waits
            (await started).cancel()
            sent, reading = await outcome
            got = first + await read_all(reader)
            writer.close()
        assert reading  # restored after the cancellation
        assert 64 << 10 <= sent < len(data) - 50
        assert got == data[50 : 50 + sent]

    run(main())


def test_arguments(run: Any, data_file: Any, tmp_path: Any) -> None:
    f, _ = data_file

    async def main() -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            t = writer.transport
            with pytest.raises(ValueError):
                await aio.transport_sendfile(t, f, -1)
            with pytest.raises(ValueError):
                await aio.transport_sendfile(t, f, 0, -1)
            with open(tmp_path / "t.txt", "w") as text, pytest.raises(TypeError):
                await aio.transport_sendfile(t, text)
            r, w = os.pipe()
            try:
                with pytest.raises(ValueError):
                    await aio.transport_sendfile(t, r)
            finally:
                os.close(r)
                os.close(w)
            writer.close()
            with pytest.raises(RuntimeError):
                await aio.transport_sendfile(t, f)

        server, addr = await serve_one(handler)
        async with server:
            reader, writer = await asyncio.open_connection(*addr)
            assert await read_all(reader) == b""
            writer.close()

    run(main())


def test_loop_factory_kinds() -> None:
    loop = aio.loop_factory(uvloop=False)
    try:
        assert isinstance(loop, asyncio.SelectorEventLoop)
    finally:
        loop.close()
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=aio.loop_factory) as runner:
            assert type(runner.get_loop()).sendfile is not asyncio.AbstractEventLoop.sendfile
            assert runner.run(asyncio.sleep(0, "ok")) == "ok"
    if has_uvloop():
        import uvloop

        loop = aio.loop_factory()
        try:
            assert isinstance(loop, uvloop.Loop)
        finally:
            loop.close()
    if sys.version_info >= (3, 12):
        assert asyncio.run(asyncio.sleep(0, 1), loop_factory=aio.loop_factory) == 1  # type: ignore[call-arg]


def test_detach_then_proxy_loses_nothing(run: Any) -> None:
    part1 = os.urandom(200 << 10)
    part2 = os.urandom(3 << 20)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        upstream = socket.socket()
        upstream.bind(("127.0.0.1", 0))
        upstream.listen(1)
        upstream.setblocking(False)
        early_seen: List[int] = []

        async def upstream_side() -> bytes:
            conn, _ = await loop.sock_accept(upstream)
            with conn:
                conn.setblocking(False)
                got = bytearray()
                while True:
                    block = await loop.sock_recv(conn, 1 << 20)
                    if not block:
                        break
                    got += block
                await loop.sock_sendall(conn, b"REPLY")
                return bytes(got)

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            line = await reader.readline()
            writer.write(b"OK " + line)
            sock, early = await aio.detach(writer, reader)
            early_seen.append(len(early))
            up = socket.socket()
            up.setblocking(False)
            with sock, up:
                await loop.sock_connect(up, upstream.getsockname())
                await loop.sock_sendall(up, early)
                await aio.proxy(sock, up)

        up_task = asyncio.ensure_future(upstream_side())
        server, addr = await serve_one(handler)
        async with server:
            reader, writer = await asyncio.open_connection(*addr)
            writer.write(b"HELLO\n" + part1)
            await writer.drain()
            assert await reader.readexactly(9) == b"OK HELLO\n"
            writer.write(part2)
            writer.write_eof()
            reply = await read_all(reader)
            writer.close()
            got = await up_task
        upstream.close()
        assert early_seen and early_seen[0] > 0  # the reader held bytes past the line
        assert got == part1 + part2
        assert reply == b"REPLY"

    run(main())
