"""zcio.relay.Relay and ``zcio proxy``."""
from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, Iterator, List, Optional, Tuple

import pytest

from _net import read_to_eof
from test_streams import payload
from zcio.relay import Relay, parse_address

JOIN = 20.0


def test_parse_address():
    assert parse_address("8000") == ("127.0.0.1", 8000)
    assert parse_address("0.0.0.0:80") == ("0.0.0.0", 80)
    assert parse_address("[::1]:9") == ("::1", 9)
    assert parse_address(":7") == ("127.0.0.1", 7)
    for bad in ("x", "host:port", "1:70000", "-1"):
        with pytest.raises(ValueError):
            parse_address(bad)


class EchoUpper:
    """A blocking target server: reads to EOF, answers the bytes reversed in
    blocks, then closes (so half-close must work through the relay)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(JOIN)
        self.port = self.sock.getsockname()[1]
        self.threads: List[threading.Thread] = []
        self.stop = False
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        while not self.stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(c,), daemon=True)
            t.start()
            self.threads.append(t)

    @staticmethod
    def _serve(c: socket.socket) -> None:
        with c:
            c.settimeout(JOIN)
            data = bytearray()
            while True:
                chunk = c.recv(1 << 20)
                if not chunk:
                    break
                data += chunk
            c.sendall(bytes(data[::-1]))

    def close(self) -> None:
        self.stop = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self.sock.close()
        self.acceptor.join(JOIN)
        for t in self.threads:
            t.join(JOIN)


def client(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=JOIN) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        return read_to_eof(s)


def run_relay_in_thread(relay: Relay) -> Tuple[Callable[[], None], asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    started = threading.Event()

    async def main() -> None:
        await relay.start()
        started.set()
        try:
            await relay.serve_forever()
        except asyncio.CancelledError:
            pass

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    assert started.wait(JOIN)

    def stop() -> None:
        fut = asyncio.run_coroutine_threadsafe(relay.close(), loop)
        fut.result(JOIN)
        thread.join(JOIN)
        assert not thread.is_alive()
        loop.close()

    return stop, loop


def _wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + JOIN
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.001)


ENGINES = [pytest.param({"engine": "hub"}, id="hub"), pytest.param({"engine": "hub", "threads": 2}, id="hub-2-threads"),
           pytest.param({"engine": "asyncio"}, id="asyncio")]


@pytest.mark.parametrize("engine", ENGINES)
def test_relay_exact_data_with_half_close_and_a_connection_bound(engine):
    target = EchoUpper()
    relay = Relay(("127.0.0.1", 0), ("127.0.0.1", target.port), max_connections=3, **engine)
    stop, _ = run_relay_in_thread(relay)
    try:
        port = relay.address[1]
        datas = [payload(300_000 + 7 * i, i) for i in range(12)]
        results: List[bytes] = [b""] * len(datas)

        def one(i: int) -> None:
            results[i] = client(port, datas[i])

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(datas))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(JOIN)
            assert not t.is_alive()
        assert results == [d[::-1] for d in datas]
        # A client sees EOF before the relay's task has done its bookkeeping.
        _wait_for(lambda: relay.served == len(datas))
        assert 1 <= relay.peak <= 3
        assert relay.bytes_up == sum(map(len, datas)) == relay.bytes_down
    finally:
        stop()
        target.close()


@pytest.mark.parametrize("engine", ENGINES)
def test_relay_drops_a_client_when_the_target_refuses(engine):
    with socket.create_server(("127.0.0.1", 0)) as s:
        dead_port = s.getsockname()[1]  # closed right after: nothing listens
    target = EchoUpper()
    relay = Relay(("127.0.0.1", 0), ("127.0.0.1", dead_port), **engine)
    stop, _ = run_relay_in_thread(relay)
    try:
        try:
            answer = client(relay.address[1], b"hello")
        except OSError as exc:  # closed with "hello" unread: RST, seen at any step
            assert exc.errno in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN), exc
            answer = b""
        assert answer == b""
        _wait_for(lambda: relay.served == 1)
        assert relay.active == 0
    finally:
        stop()
        target.close()


@pytest.mark.parametrize("engine", ENGINES)
def test_the_target_is_resolved_at_start_and_again_after_a_failed_connect(engine, monkeypatch):
    calls: List[int] = []
    original = Relay._resolve

    async def counting(self: Relay) -> object:
        calls.append(1)
        return await original(self)

    monkeypatch.setattr(Relay, "_resolve", counting)
    target = EchoUpper()
    relay = Relay(("127.0.0.1", 0), ("127.0.0.1", target.port), **engine)
    stop, _ = run_relay_in_thread(relay)
    try:
        for i in range(5):
            assert client(relay.address[1], b"x" * i) == b"x" * i
        assert len(calls) == 1  # not once per connection
        target.close()  # now connects fail: the relay asks the resolver again
        try:
            client(relay.address[1], b"hello")
        except OSError:
            pass
        _wait_for(lambda: len(calls) == 2)
    finally:
        stop()
        target.close()


@contextlib.contextmanager
def cli_proxy(*args: str, preexec_fn: Optional[Callable[[], None]] = None) -> Iterator[Tuple["subprocess.Popen[str]", int]]:
    """``zcio proxy ARGS... 0 TARGET`` in front of an EchoUpper: yields the
    process once it listens, and the port; SIGTERM must end it with 0."""
    target = EchoUpper()
    proc = subprocess.Popen(
        [sys.executable, "-m", "zcio", "proxy", *args, "0", str(target.port)],
        stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line.startswith("zcio proxy: 127.0.0.1:"), line
        yield proc, int(line.split()[2].rsplit(":", 1)[1])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(JOIN) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
        target.close()


def test_cli_proxy_relays_and_stops_cleanly_on_sigterm():
    with cli_proxy() as (_, port):
        data = payload(2 << 20, 5)
        assert client(port, data) == data[::-1]


def test_cli_proxy_rejects_a_bad_address():
    out = subprocess.run([sys.executable, "-m", "zcio", "proxy", "nope", "1"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "not host:port" in out.stderr


def test_cli_proxy_lifts_a_low_fd_limit_to_what_its_bound_needs():
    import resource

    def low_limit() -> None:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))

    with cli_proxy("--max-connections", "300", preexec_fn=low_limit) as (proc, _):
        with open(f"/proc/{proc.pid}/limits") as f:
            line = next(x for x in f if x.startswith("Max open files"))
        soft = line.split()[3]
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        expected = 2 * 300 + 64 if hard == resource.RLIM_INFINITY else min(2 * 300 + 64, hard)
        assert int(soft) == expected
