"""Stock aiohttp web.FileResponse on zcio.aio.loop_factory(): sendfile on the
stdlib loop and on uvloop (which has no loop.sendfile of its own)."""
from __future__ import annotations

import os
from typing import Any, Iterator, Tuple

import pytest

pytest.importorskip("aiohttp")

from aiohttp import web  # noqa: E402

from _servers import (  # noqa: E402
    LOOPS,
    Client,
    LoopThread,
    aiohttp_server,
    copied_bytes,
    reset_mid_body,
    sendfile_bytes,
    sha,
    slow_get,
    tls,
)

__all__ = ["tls"]  # the fixture, imported for the tests below


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Tuple[str, bytes, str]:
    d = tmp_path_factory.mktemp("aiohttp")
    small = os.urandom((3 << 20) + 77)
    (d / "small.bin").write_bytes(small)
    with open(d / "big.bin", "wb") as f:
        block = os.urandom(1 << 20)
        for _ in range(64):
            f.write(block)
    return str(d / "small.bin"), small, str(d / "big.bin")


def make_app(small_path: str, big_path: str) -> web.Application:
    async def small(request: web.Request) -> web.FileResponse:
        return web.FileResponse(small_path)

    async def big(request: web.Request) -> web.FileResponse:
        return web.FileResponse(big_path)

    app = web.Application()
    app.router.add_get("/small", small)
    app.router.add_get("/big", big)
    return app


@pytest.fixture(params=LOOPS)
def loop_thread(request: Any) -> Iterator[LoopThread]:
    with LoopThread(request.param) as lt:
        yield lt


def test_file_range_head_keepalive_by_sendfile(loop_thread: LoopThread, files: Any) -> None:
    small_path, small, big_path = files
    before = sendfile_bytes()
    with aiohttp_server(loop_thread, make_app(small_path, big_path)) as port, Client(port) as c:
        whole = c.request("GET", "/small")
        head = c.request("HEAD", "/small")
        ranged = c.request("GET", "/small", headers=[("Range", "bytes=1000-70999")])
        tail = c.request("GET", "/small", headers=[("Range", "bytes=-4096")])
        again = c.request("GET", "/small")  # the same keep-alive connection
        loop_thread.ping()
    assert whole.status == 200 and sha(whole.body) == sha(small)
    assert head.status == 200 and head.body == b""
    assert head.headers[b"content-length"] == str(len(small)).encode()
    assert ranged.status == 206 and ranged.body == small[1000:71000]
    assert tail.status == 206 and tail.body == small[-4096:]
    assert sha(again.body) == sha(small)
    assert sendfile_bytes() - before == 2 * len(small) + 70000 + 4096


def test_big_body_to_slow_reader_keeps_loop_running(loop_thread: LoopThread, files: Any) -> None:
    small_path, _, big_path = files
    with open(big_path, "rb") as f:
        expected = sha(f.read())
    with aiohttp_server(loop_thread, make_app(small_path, big_path)) as port:
        body = slow_get(loop_thread, port, "/big")
    assert len(body) == 64 << 20 and sha(body) == expected


def test_client_reset_mid_body(loop_thread: LoopThread, files: Any) -> None:
    small_path, small, big_path = files
    with aiohttp_server(loop_thread, make_app(small_path, big_path)) as port:
        reset_mid_body(port, "/big")
        with Client(port) as c:
            assert sha(c.request("GET", "/small").body) == sha(small)
            assert sha(c.request("GET", "/small").body) == sha(small)


def test_tls_serves_exact_bytes_by_copying(loop_thread: LoopThread, files: Any, tls: Any) -> None:
    small_path, small, big_path = files
    before_sendfile, before_copied = sendfile_bytes(), copied_bytes()
    app = make_app(small_path, big_path)
    with aiohttp_server(loop_thread, app, ssl_context=tls.server_context) as port:
        with Client(port, tls=tls.client_context) as c:
            whole = c.request("GET", "/small")
            ranged = c.request("GET", "/small", headers=[("Range", "bytes=10-19")])
            loop_thread.ping()
    assert sha(whole.body) == sha(small)
    assert ranged.body == small[10:20]
    assert sendfile_bytes() == before_sendfile
    assert copied_bytes() - before_copied == len(small) + 10
