"""zcio never writes around TLS: every function that sends or splices refuses
an ssl.SSLSocket (or a file object over one) with TypeError before a byte
moves, and the TLS connection stays usable."""
from __future__ import annotations

import asyncio
import os
import socket
import ssl
import threading
from typing import Any, Callable, Iterator, List

import pytest

import zcio
import zcio.aio as aio
from _servers import tls

__all__ = ["tls"]  # the fixture, imported for the tests below


class TLSPair:
    """A client SSLSocket connected to an echo server thread over TLS."""

    def __init__(self, tls: Any) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.received = bytearray()
        self.thread = threading.Thread(target=self._serve, args=(tls.server_context,), daemon=True)
        self.thread.start()
        raw = socket.create_connection(self.listener.getsockname(), timeout=10)
        self.client = tls.client_context.wrap_socket(raw, server_hostname="127.0.0.1")

    def _serve(self, ctx: ssl.SSLContext) -> None:
        conn, _ = self.listener.accept()
        conn.settimeout(10)
        try:
            with ctx.wrap_socket(conn, server_side=True) as s:
                while True:
                    data = s.recv(65536)
                    if not data:
                        return
                    self.received += data
                    s.sendall(data)
        except (OSError, ssl.SSLError):
            return

    def echo(self, token: bytes) -> bytes:
        """Round trip through TLS: fails if plain bytes got into the stream."""
        self.client.setblocking(True)
        self.client.settimeout(10)
        self.client.sendall(token)
        got = b""
        while len(got) < len(token):
            got += self.client.recv(len(token) - len(got))
        return got

    def close(self) -> None:
        self.client.close()
        self.thread.join(10)
        self.listener.close()


@pytest.fixture(scope="module")
def pair(tls: Any) -> Iterator[TLSPair]:
    p = TLSPair(tls)
    yield p
    p.close()


@pytest.fixture
def material(tmp_path: Any) -> Iterator[Any]:
    """A file with data, a pipe with data in it, an empty pipe, a plain socket."""
    path = tmp_path / "data.bin"
    path.write_bytes(os.urandom(1 << 16))
    f = open(path, "rb")
    full_r, full_w = os.pipe()
    os.write(full_w, b"x" * 1000)
    empty_r, empty_w = os.pipe()
    a, b = socket.socketpair()
    a.setblocking(False)

    class M:
        file = f
        pipe_r = full_r
        pipe_w = empty_w
        mirror_w = empty_w
        plain = a

    yield M
    f.close()
    for fd in (full_r, full_w, empty_r, empty_w):
        os.close(fd)
    a.close()
    b.close()


def _sync_calls() -> List[Any]:
    def wb(s: ssl.SSLSocket) -> Any:
        return s.makefile("wb")

    def rb(s: ssl.SSLSocket) -> Any:
        return s.makefile("rb")

    calls: List[Any] = [
        ("lowlevel.sendfile", lambda s, m: zcio.sendfile(s, m.file, 0, 10)),
        ("lowlevel.sendfile position", lambda s, m: zcio.sendfile(s, m.file, None, 10)),
        ("lowlevel.sendfile makefile", lambda s, m: zcio.sendfile(wb(s), m.file, 0, 10)),
        ("lowlevel.splice to", lambda s, m: zcio.splice(m.pipe_r, s, 10)),
        ("lowlevel.splice from", lambda s, m: zcio.splice(s, m.pipe_w, 10)),
        ("lowlevel.splice offsets", lambda s, m: zcio.splice(m.file, s, 10, 0, None)),
        ("lowlevel.tee", lambda s, m: zcio.tee(s, m.pipe_w, 10)),
        ("lowlevel.send_zerocopy", lambda s, m: zcio.send_zerocopy(s, b"x" * 100)),
        ("splice_pipe to", lambda s, m: zcio.splice_pipe(m.file, s)),
        ("splice_pipe to makefile", lambda s, m: zcio.splice_pipe(m.file, wb(s))),
        ("splice_pipe to unbuffered makefile", lambda s, m: zcio.splice_pipe(m.file, s.makefile("wb", buffering=0))),
        ("splice_pipe from", lambda s, m: zcio.splice_pipe(s, m.pipe_w, 10)),
        ("splice_pipe from makefile", lambda s, m: zcio.splice_pipe(rb(s), m.pipe_w, 10)),
        ("tee_pipe dst", lambda s, m: zcio.tee_pipe(m.file, s, m.mirror_w)),
        ("tee_pipe src", lambda s, m: zcio.tee_pipe(s, m.pipe_w, m.mirror_w)),
        ("proxy a", lambda s, m: zcio.proxy(s, m.plain)),
        ("proxy b", lambda s, m: zcio.proxy(m.plain, s)),
        ("ZeroCopySender", lambda s, m: zcio.ZeroCopySender(s)),
    ]
    return calls


@pytest.mark.parametrize("name,call", _sync_calls(), ids=[c[0] for c in _sync_calls()])
def test_sync_functions_refuse_tls(pair: TLSPair, material: Any, name: str, call: Callable[..., Any]) -> None:
    assert pair.echo(b"before") == b"before"
    del pair.received[:]
    with pytest.raises(TypeError, match="SSLSocket"):
        call(pair.client, material)
    token = b"after " + name.encode()
    assert pair.echo(token) == token
    assert bytes(pair.received) == token  # nothing else reached the server
    assert material.file.tell() == 0


def _async_calls() -> List[Any]:
    return [
        ("aio.splice_pipe to", lambda s, m: aio.splice_pipe(m.file, s)),
        ("aio.splice_pipe from", lambda s, m: aio.splice_pipe(s, m.pipe_w, 10)),
        ("aio.Transfer", lambda s, m: aio.Transfer(m.file, s).run()),
        ("aio.sendfile", lambda s, m: aio.sendfile(s, m.file)),
        ("aio.tee_pipe", lambda s, m: aio.tee_pipe(m.file, s, m.mirror_w)),
        ("aio.proxy", lambda s, m: aio.proxy(s, m.plain)),
    ]


@pytest.mark.parametrize("name,call", _async_calls(), ids=[c[0] for c in _async_calls()])
def test_aio_functions_refuse_tls(pair: TLSPair, material: Any, name: str, call: Callable[..., Any]) -> None:
    assert pair.echo(b"before") == b"before"
    del pair.received[:]
    pair.client.setblocking(False)

    async def main() -> None:
        with pytest.raises(TypeError, match="SSLSocket"):
            await call(pair.client, material)

    asyncio.run(main())
    assert pair.echo(b"after") == b"after"
    assert bytes(pair.received) == b"after"


def test_async_zerocopy_sender_refuses_tls(pair: TLSPair) -> None:
    pair.client.setblocking(False)

    async def main() -> None:
        with pytest.raises(TypeError, match="SSLSocket"):
            aio.AsyncZeroCopySender(pair.client)  # type: ignore[arg-type]

    asyncio.run(main())
    assert pair.echo(b"after") == b"after"


def test_plain_sockets_and_ints_still_pass(material: Any) -> None:
    """The guard only refuses TLS: plain sockets and their makefile() go on."""
    a, b = socket.socketpair()
    with a, b:
        assert zcio.sendfile(a, material.file, 0, 10) == 10
        assert zcio.sendfile(a.fileno(), material.file.fileno(), 10, 10) == 10
        with a.makefile("wb") as w:
            assert zcio.splice_pipe(material.file, w, 100) == 100
        assert len(b.recv(1000)) == 120
