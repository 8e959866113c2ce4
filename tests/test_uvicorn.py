"""zcio.uvicorn: uvicorn's protocols with pathsend and zerocopysend, served by
real uvicorn + Starlette on the stdlib loop and on uvloop."""
from __future__ import annotations

import os
from typing import Any, Iterator, List, Tuple

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("httptools")
pytest.importorskip("starlette")

from starlette.applications import Starlette  # noqa: E402
from starlette.responses import FileResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

import zcio.uvicorn as zu  # noqa: E402
from _servers import (  # noqa: E402
    LOOPS,
    Client,
    LoopThread,
    copied_bytes,
    reset_mid_body,
    sendfile_bytes,
    sha,
    slow_get,
    tls,
    uvicorn_server,
)

PROTOCOLS = [
    pytest.param(zu.HttpToolsProtocol, id="httptools"),
    pytest.param(zu.H11Protocol, id="h11"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Tuple[str, bytes, str]:
    d = tmp_path_factory.mktemp("uvicorn")
    small = os.urandom((3 << 20) + 123)
    (d / "small.bin").write_bytes(small)
    with open(d / "big.bin", "wb") as f:
        block = os.urandom(1 << 20)
        for _ in range(64):
            f.write(block)
    return str(d / "small.bin"), small, str(d / "big.bin")


def make_app(small_path: str, big_path: str) -> Any:
    async def small(request: Any) -> FileResponse:
        return FileResponse(small_path)

    async def big(request: Any) -> FileResponse:
        return FileResponse(big_path)

    starlette = Starlette(routes=[Route("/small", small), Route("/big", big)])

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/zc":
            # zerocopysend with an explicit range and Content-Length framing.
            q = dict(kv.split("=") for kv in scope["query_string"].decode().split("&"))
            offset, count = int(q["offset"]), int(q["count"])
            with open(small_path, "rb") as f:
                await send(
                    {"type": "http.response.start", "status": 206, "headers": [(b"content-length", str(count).encode())]}
                )
                await send({"type": "http.response.zerocopysend", "file": f, "offset": offset, "count": count})
                assert f.tell() == offset + count
        elif scope["type"] == "http" and scope["path"] == "/chunked":
            # No Content-Length: chunked framing around two zerocopysends, the
            # second from the file's current position to its end.
            with open(small_path, "rb") as f:
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": b"<", "more_body": True})
                await send(
                    {"type": "http.response.zerocopysend", "file": f, "offset": 0, "count": 1000, "more_body": True}
                )
                await send({"type": "http.response.body", "body": b"|", "more_body": True})
                f.seek(5000)
                await send({"type": "http.response.zerocopysend", "file": f.fileno(), "more_body": True})
                await send({"type": "http.response.body", "body": b">", "more_body": False})
        else:
            await starlette(scope, receive, send)

    return app


@pytest.fixture(params=LOOPS)
def loop_thread(request: Any) -> Iterator[LoopThread]:
    with LoopThread(request.param) as lt:
        yield lt


@pytest.mark.parametrize("http", PROTOCOLS)
def test_files_ranges_head_keepalive(loop_thread: LoopThread, http: Any, files: Any) -> None:
    small_path, small, big_path = files
    before = sendfile_bytes()
    with uvicorn_server(loop_thread, make_app(small_path, big_path), http) as port, Client(port) as c:
        whole = c.request("GET", "/small")  # Starlette FileResponse -> pathsend
        head = c.request("HEAD", "/small")
        ranged = c.request("GET", "/zc?offset=1000&count=70000")
        starlette_range = c.request("GET", "/small", headers=[("Range", "bytes=10-99")])  # copied by Starlette
        chunked = c.request("GET", "/chunked")
        again = c.request("GET", "/small")  # still the same connection
        loop_thread.ping()
    assert whole.status == 200 and sha(whole.body) == sha(small)
    assert whole.headers[b"content-length"] == str(len(small)).encode()
    assert head.status == 200 and head.body == b""
    assert head.headers[b"content-length"] == str(len(small)).encode()
    assert ranged.status == 206 and ranged.body == small[1000:71000]
    assert starlette_range.status == 206 and starlette_range.body == small[10:100]
    assert chunked.headers.get(b"transfer-encoding") == b"chunked"
    assert chunked.body == b"<" + small[:1000] + b"|" + small[5000:] + b">"
    assert sha(again.body) == sha(small)
    sent_by_sendfile = 2 * len(small) + 70000 + 1000 + len(small) - 5000
    assert sendfile_bytes() - before == sent_by_sendfile


@pytest.mark.parametrize("http", PROTOCOLS)
def test_big_body_to_slow_reader_keeps_loop_running(loop_thread: LoopThread, http: Any, files: Any) -> None:
    small_path, _, big_path = files
    with open(big_path, "rb") as f:
        expected = sha(f.read())
    with uvicorn_server(loop_thread, make_app(small_path, big_path), http) as port:
        body = slow_get(loop_thread, port, "/big")
    assert len(body) == 64 << 20 and sha(body) == expected


@pytest.mark.parametrize("http", PROTOCOLS)
def test_client_reset_mid_body(loop_thread: LoopThread, http: Any, files: Any) -> None:
    small_path, small, big_path = files
    with uvicorn_server(loop_thread, make_app(small_path, big_path), http) as port:
        reset_mid_body(port, "/big")
        with Client(port) as c:  # the server lives on
            assert sha(c.request("GET", "/small").body) == sha(small)
            assert sha(c.request("GET", "/small").body) == sha(small)


def test_tls_serves_exact_bytes_by_copying(loop_thread: LoopThread, files: Any, tls: Any) -> None:
    small_path, small, big_path = files
    before_sendfile, before_copied = sendfile_bytes(), copied_bytes()
    for http in (zu.HttpToolsProtocol, zu.H11Protocol):
        app = make_app(small_path, big_path)
        with uvicorn_server(loop_thread, app, http, certfile=tls.server_pem) as port:
            with Client(port, tls=tls.client_context) as c:
                whole = c.request("GET", "/small")
                chunked = c.request("GET", "/chunked")
                loop_thread.ping()
        assert sha(whole.body) == sha(small)
        assert chunked.body == b"<" + small[:1000] + b"|" + small[5000:] + b">"
    assert sendfile_bytes() == before_sendfile
    assert copied_bytes() - before_copied == 2 * (2 * len(small) + 1000 - 5000)


def test_import_string_and_extensions_offered(loop_thread: LoopThread) -> None:
    import uvicorn.config

    assert uvicorn.config.import_from_string("zcio.uvicorn:HttpToolsProtocol") is zu.HttpToolsProtocol
    # uvicorn takes an import string for --http since 0.3x; older ones only their own names.
    http: Any = "zcio.uvicorn:H11Protocol"
    try:
        uvicorn.config.Config(lambda *a: None, http=http).load()
    except KeyError:
        http = zu.H11Protocol
    seen = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.update(scope.get("extensions", {}))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with uvicorn_server(loop_thread, app, http) as port, Client(port) as c:
        assert c.request("GET", "/").status == 204
    assert zu.PATHSEND in seen and zu.ZEROCOPYSEND in seen


@pytest.mark.parametrize("http", PROTOCOLS)
def test_access_log_still_written(loop_thread: LoopThread, http: Any, files: Any) -> None:
    import logging

    small_path, small, big_path = files
    lines: List[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    keep = Keep()
    access = logging.getLogger("uvicorn.access")
    with uvicorn_server(loop_thread, make_app(small_path, big_path), http, log_level="info") as port:
        access.addHandler(keep)  # after uvicorn configured its logging
        try:
            with Client(port) as c:
                assert sha(c.request("GET", "/small").body) == sha(small)
                assert c.request("HEAD", "/small").body == b""
        finally:
            access.removeHandler(keep)
    assert any('"GET /small HTTP/1.1" 200' in line for line in lines), lines
    assert any('"HEAD /small HTTP/1.1" 200' in line for line in lines), lines
