"""Real servers on 127.0.0.1 port 0 in a loop thread, and a small HTTP client.

The server side runs on ``zcio.aio.loop_factory(uvloop=...)`` in a thread of
its own, so the client can be plain blocking sockets in the test's thread and
can ask the server loop to run something (``LoopThread.ping``) while a body is
still in flight: that the loop answers is how the tests see it never blocked.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import ssl
import struct
import threading
from typing import Any, Callable, Coroutine, Dict, Iterator, List, Optional, Tuple

import h11
import pytest

import zcio.aio as aio

LOOPS = [
    pytest.param(False, id="asyncio"),
    pytest.param(True, id="uvloop"),
]
TIMEOUT = 30.0


def has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class LoopThread:
    """An event loop from zcio.aio.loop_factory running in a thread."""

    def __init__(self, uvloop: bool) -> None:
        if uvloop and not has_uvloop():
            pytest.skip("uvloop is not installed")
        self.loop = aio.loop_factory(uvloop=uvloop)
        self.thread = threading.Thread(target=self.loop.run_forever, name="server-loop", daemon=True)

    def __enter__(self) -> "LoopThread":
        self.thread.start()
        return self

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = TIMEOUT) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def ping(self) -> None:
        """Returns once the loop ran a callback: it is not blocked."""
        self.run(asyncio.sleep(0), timeout=10)

    def __exit__(self, *exc: object) -> None:
        async def cancel_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.get_running_loop().shutdown_asyncgens()

        try:
            self.run(cancel_rest())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(TIMEOUT)
            self.loop.close()


def listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


@contextlib.contextmanager
def uvicorn_server(
    lt: LoopThread, app: Any, http: Any, certfile: Optional[str] = None, log_level: str = "warning"
) -> Iterator[int]:
    """uvicorn serving ``app`` with protocol class ``http``; yields the port."""
    import uvicorn

    sock = listener()
    config = uvicorn.Config(
        app, http=http, lifespan="off", log_level=log_level, ssl_certfile=certfile, ssl_keyfile=certfile
    )
    server = uvicorn.Server(config)

    async def start() -> "asyncio.Task[None]":
        task = asyncio.ensure_future(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.005)
        if task.done():
            task.result()
        return task

    try:
        task = lt.run(start())
    except BaseException:
        sock.close()
        raise
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True

        async def stop() -> None:
            await task

        lt.run(stop())
        sock.close()


@contextlib.contextmanager
def aiohttp_server(lt: LoopThread, app: Any, ssl_context: Optional[ssl.SSLContext] = None) -> Iterator[int]:
    """aiohttp serving ``app``; yields the port."""
    from aiohttp import web

    sock = listener()
    runner = web.AppRunner(app, access_log=None, handle_signals=False)

    async def start() -> None:
        await runner.setup()
        await web.SockSite(runner, sock, ssl_context=ssl_context).start()

    lt.run(start())
    try:
        yield sock.getsockname()[1]
    finally:
        lt.run(runner.cleanup())
        sock.close()


# ------------------------------------------------------------------ client


class Response:
    def __init__(self, status: int, headers: Dict[bytes, bytes], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class Client:
    """A blocking HTTP/1.1 keep-alive client on h11 (optionally over TLS)."""

    def __init__(self, port: int, tls: Optional[ssl.SSLContext] = None, rcvbuf: Optional[int] = None) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(TIMEOUT)
        sock.connect(("127.0.0.1", port))
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname="127.0.0.1")
        self.sock = sock
        self.conn = h11.Connection(h11.CLIENT)

    def send(self, method: str, target: str, headers: Optional[List[Tuple[str, str]]] = None) -> None:
        if self.conn.our_state is h11.DONE:
            self.conn.start_next_cycle()
        hdrs = [("Host", "127.0.0.1")] + (headers or [])
        self.sock.sendall(self.conn.send(h11.Request(method=method, target=target, headers=hdrs)))
        self.sock.sendall(self.conn.send(h11.EndOfMessage()))

    def events(self, chunk: int = 1 << 20) -> Iterator[Any]:
        while True:
            ev = self.conn.next_event()
            if ev is h11.NEED_DATA:
                self.conn.receive_data(self.sock.recv(chunk))
                continue
            yield ev
            if isinstance(ev, (h11.EndOfMessage, h11.ConnectionClosed)):
                return

    def request(
        self,
        method: str,
        target: str,
        headers: Optional[List[Tuple[str, str]]] = None,
        on_data: Optional[Callable[[int], None]] = None,
        chunk: int = 1 << 20,
    ) -> Response:
        self.send(method, target, headers)
        status, resp_headers, body = 0, {}, bytearray()
        for ev in self.events(chunk):
            if isinstance(ev, h11.Response):
                status = ev.status_code
                resp_headers = dict(ev.headers)
            elif isinstance(ev, h11.Data):
                body += ev.data
                if on_data is not None:
                    on_data(len(body))
        return Response(status, resp_headers, bytes(body))

    def reset(self) -> None:
        """Close with an RST (SO_LINGER 0) instead of a FIN."""
        raw = self.sock
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.close()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def reset_mid_body(port: int, target: str, after: int = 256 << 10) -> None:
    """Ask for ``target``, read ``after`` bytes of the body, then reset."""
    client = Client(port, rcvbuf=64 << 10)
    try:
        client.send("GET", target)
        got = 0
        for ev in client.events(64 << 10):
            if isinstance(ev, h11.Data):
                got += len(ev.data)
                if got >= after:
                    break
        assert got >= after
    finally:
        client.reset()


def slow_get(lt: LoopThread, port: int, target: str, pings: int = 8) -> bytes:
    """GET ``target`` reading slowly (a small receive buffer) and, while the
    body is still in flight, make the server loop answer ``pings`` times."""
    with Client(port, rcvbuf=64 << 10) as client:
        state = {"next": 1 << 20, "pings": 0}

        def on_data(n: int) -> None:
            if n >= state["next"] and state["pings"] < pings:
                lt.ping()  # the server is mid-body: its loop must still run
                state["pings"] += 1
                state["next"] += 4 << 20

        resp = client.request("GET", target, on_data=on_data, chunk=64 << 10)
        assert resp.status == 200
        assert state["pings"] == pings
        return resp.body


class TLS:
    """A throwaway CA (trustme): the server's cert+key PEM file and contexts."""

    def __init__(self, tmp: Any) -> None:
        trustme = pytest.importorskip("trustme")
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        self.server_pem = str(tmp / "server.pem")
        cert.private_key_and_cert_chain_pem.write_to_path(self.server_pem)
        self.server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(self.server_context)
        self.client_context = ssl.create_default_context()
        ca.configure_trust(self.client_context)


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLS:
    return TLS(tmp_path_factory.mktemp("tls"))


def sendfile_bytes() -> int:
    return int(aio_stats()["bytes"].get("sendfile", 0))


def copied_bytes() -> int:
    return int(aio_stats()["bytes"].get("transport_write", 0))


def aio_stats() -> Dict[str, Any]:
    import zcio

    return zcio.stats()
