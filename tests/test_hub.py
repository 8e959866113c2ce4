"""zcio.RelayHub and zcio.aio.relay: the relay engine in C."""
from __future__ import annotations

import asyncio
import errno
import gc
import os
import resource
import selectors
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import warnings
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import pytest
from _net import read_to_eof
from test_streams import payload

import zcio
from zcio import RelayHub, TransferError, aio
from zcio.hub import default_hub

JOIN = 30.0

Pair = Tuple[socket.socket, socket.socket]


@pytest.fixture
def hub() -> Iterator[RelayHub]:
    with RelayHub() as h:
        yield h


@pytest.fixture
def tcp_pairs() -> Iterator[Callable[[], Pair]]:
    """Connected TCP sockets over loopback, closed after the test (those the
    hub took are detached and close as a no-op)."""
    made: List[socket.socket] = []
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)

    def make() -> Pair:
        c = socket.create_connection(listener.getsockname()[:2], timeout=JOIN)
        s, _ = listener.accept()
        s.settimeout(JOIN)
        made.extend((c, s))
        return c, s

    yield make
    listener.close()
    for s in made:
        s.close()


def relayed(make: Callable[[], Pair]) -> Tuple[socket.socket, socket.socket, socket.socket, socket.socket]:
    """client <-> a  (hub)  b <-> server: returns (client, a, b, server)."""
    client, a = make()
    b, server = make()
    return client, a, b, server


def recv_exact(s: socket.socket, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        chunk = s.recv(min(n - got, 1 << 20))
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def send_and_close(s: socket.socket, data: bytes) -> threading.Thread:
    def run() -> None:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=run)
    t.start()
    return t


def wait_for(condition: Callable[[], bool], what: str = "condition") -> None:
    deadline = time.monotonic() + JOIN
    while not condition():
        assert time.monotonic() < deadline, f"{what} not met in time"
        time.sleep(0.002)


# ------------------------------------------------------------------ basics


def test_threads_must_be_at_least_one():
    with pytest.raises(ValueError):
        RelayHub(0)
    with pytest.raises(ValueError):
        RelayHub(-3)
    with RelayHub(2) as h:
        assert h.threads == 2 and h.stats()["threads"] == 2


@pytest.mark.parametrize("size_ab,size_ba", [(0, 0), (1, 0), (64, 512), (100_000, 3), (5 << 20, 3 << 20)])
def test_exact_data_both_ways(hub, tcp_pairs, size_ab, size_ba):
    client, a, b, server = relayed(tcp_pairs)
    up, down = payload(size_ab, 1), payload(size_ba, 2)
    fut = hub.relay(a, b)
    assert a.fileno() == -1 and b.fileno() == -1  # detached: the hub owns them
    ts = [send_and_close(client, up), send_and_close(server, down)]
    assert read_to_eof(server) == up
    assert read_to_eof(client) == down
    for t in ts:
        t.join(JOIN)
    assert fut.result(JOIN) == (size_ab, size_ba)
    st = hub.stats()
    assert st["bytes"]["copy"] + st["bytes"]["splice"] == size_ab + size_ba
    assert st["relays"] == {"started": 1, "active": 0, "ended": 1, "failed": 0}


def test_unix_socketpairs_and_blocking_sockets(hub):
    c, a = socket.socketpair()
    b, s = socket.socketpair()
    assert a.getblocking()
    with c, s:
        fut = hub.relay(a, b)
        data = payload(1 << 20, 3)
        t = send_and_close(c, data)
        assert read_to_eof(s) == data
        s.shutdown(socket.SHUT_WR)
        assert c.recv(1) == b""
        t.join(JOIN)
        assert fut.result(JOIN) == (len(data), 0)


def test_dropping_the_socket_objects_changes_nothing(hub, tcp_pairs):
    client, a, b, server = relayed(tcp_pairs)
    fut = hub.relay(a, b)
    del a, b
    gc.collect()
    client.sendall(b"ping")
    assert server.recv(4) == b"ping"
    server.sendall(b"pong")
    assert client.recv(4) == b"pong"
    client.shutdown(socket.SHUT_WR)
    server.shutdown(socket.SHUT_WR)
    assert server.recv(1) == b"" and client.recv(1) == b""
    assert fut.result(JOIN) == (4, 4)


def test_bad_arguments_take_nothing(hub, tcp_pairs):
    client, a, b, server = relayed(tcp_pairs)
    with pytest.raises(TypeError):
        hub.relay(a.fileno(), b)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        hub.relay(a, a)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with u, pytest.raises(ValueError):
        hub.relay(a, u)
    assert a.fileno() >= 0 and b.fileno() >= 0
    a.sendall(b"still mine")
    assert client.recv(10) == b"still mine"


def test_tls_sockets_are_refused_and_left_usable(hub, tcp_pairs):
    client, a, b, server = relayed(tcp_pairs)
    ctx = ssl.create_default_context()
    tls = ctx.wrap_socket(a, server_hostname="localhost", do_handshake_on_connect=False)
    try:
        with pytest.raises(TypeError, match="TLS"):
            hub.relay(tls, b)
        with pytest.raises(TypeError, match="TLS"):
            hub.relay(b, tls)
        assert tls.fileno() >= 0 and b.fileno() >= 0
        b.sendall(b"x")
        assert server.recv(1) == b"x"
        assert hub.stats()["relays"]["started"] == 0
    finally:
        tls.close()


# -------------------------------------------------------------- half-close


@pytest.mark.parametrize("first", ["client", "server"])
def test_half_close_either_order(hub, tcp_pairs, first):
    client, a, b, server = relayed(tcp_pairs)
    fut = hub.relay(a, b)
    one, other = (client, server) if first == "client" else (server, client)
    one.sendall(b"request")
    one.shutdown(socket.SHUT_WR)
    assert read_to_eof(other) == b"request"
    # The other direction still flows after the first EOF.
    for _ in range(3):
        other.sendall(b"more")
        assert one.recv(4) == b"more"
    other.shutdown(socket.SHUT_WR)
    assert one.recv(1) == b""
    expected = (7, 12) if first == "client" else (12, 7)
    assert fut.result(JOIN) == expected


def test_without_half_close_the_first_eof_ends_the_relay(hub, tcp_pairs):
    client, a, b, server = relayed(tcp_pairs)
    fut = hub.relay(a, b, half_close=False)
    client.sendall(b"bye")
    client.shutdown(socket.SHUT_WR)
    assert read_to_eof(server) == b"bye"  # delivered, then the relay closed b
    try:
        assert client.recv(1) == b""
    except ConnectionResetError:
        pass
    assert fut.result(JOIN) == (3, 0)


def test_ping_pong_needs_both_directions_at_once(hub, tcp_pairs):
    """A relay that served one direction at a time would deadlock here: each
    side waits for the answer before sending again, and nobody closes."""
    client, a, b, server = relayed(tcp_pairs)
    fut = hub.relay(a, b)
    for i in range(300):
        msg = b"%05d" % i
        client.sendall(msg)
        assert server.recv(5) == msg
        server.sendall(msg[::-1])
        assert client.recv(5) == msg[::-1]
    client.shutdown(socket.SHUT_WR)
    server.shutdown(socket.SHUT_WR)
    assert client.recv(1) == b"" and server.recv(1) == b""
    assert fut.result(JOIN) == (1500, 1500)


# ------------------------------------------------------------------ resets


def _reset(s: socket.socket) -> None:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()


def flood_until_stalled(hub: RelayHub, client: socket.socket, data: bytes, sent: int) -> int:
    """Send ``data`` from ``sent`` on, non-blocking, until the client's socket
    is full while the hub holds bytes in flight (it stops reading a only while
    it holds bytes that b cannot take); returns the bytes sent in all."""
    client.setblocking(False)

    def stalled() -> bool:
        nonlocal sent
        try:
            sent += client.send(data[sent: sent + (1 << 20)])
            return False
        except BlockingIOError:
            st = hub.stats()
            return st["pipes"]["in_use"] + st["buffers"] >= 1

    wait_for(stalled, "the relay stalled with bytes in flight")
    return sent


def test_a_reset_ends_both_directions_with_exact_accounting(hub, tcp_pairs):
    client, a, b, server = relayed(tcp_pairs)
    for s in (client, server):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    data = payload(64 << 20, 9)
    fut = hub.relay(a, b)
    client.sendall(data[: 1 << 20])
    got = recv_exact(server, 64 << 10)  # the server reads a little, then never again
    sent = flood_until_stalled(hub, client, data, 1 << 20)
    _reset(server)
    with pytest.raises(TransferError) as info:
        fut.result(JOIN)
    exc = info.value
    assert isinstance(exc, OSError) and exc.errno in (errno.ECONNRESET, errno.EPIPE)
    (ab, ba), (pend_ab, pend_ba) = exc.relayed, exc.pendings
    assert (exc.transferred, exc.pending) in ((ab, pend_ab), (ba, pend_ba))
    assert ba == 0 and pend_ba == b""
    # What the server took is a prefix of what the relay delivered, and what
    # was read but not delivered follows it: nothing lost, nothing invented.
    assert data.startswith(got) and len(got) <= ab
    assert len(pend_ab) > 0
    assert data[ab: ab + len(pend_ab)] == pend_ab
    assert ab + len(pend_ab) <= sent
    # The client sees the end too.
    client.setblocking(True)
    with pytest.raises(OSError):
        while client.recv(1 << 16):
            pass
        client.sendall(b"x" * (1 << 20))
    st = hub.stats()
    assert st["relays"]["failed"] == 1 and st["pipes"]["in_use"] == 0 and st["buffers"] == 0


def test_a_reset_of_the_side_read_ends_the_relay_while_it_waits_to_deliver(hub, tcp_pairs):
    """The client floods, the server stops reading, then the client resets:
    the direction reading from the client holds bytes it cannot deliver and
    would not read again, yet the relay ends (a reset ends both directions),
    with exact accounting."""
    client, a, b, server = relayed(tcp_pairs)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # never read
    data = payload(64 << 20, 17)
    fut = hub.relay(a, b)
    sent = flood_until_stalled(hub, client, data, 0)
    _reset(client)
    with pytest.raises(TransferError) as info:
        fut.result(JOIN)
    exc = info.value
    assert exc.errno == errno.ECONNRESET
    (ab, ba), (pend_ab, _) = exc.relayed, exc.pendings
    assert ba == 0 and len(pend_ab) > 0
    assert data[ab: ab + len(pend_ab)] == pend_ab and ab + len(pend_ab) <= sent
    assert hub.stats()["pipes"]["in_use"] == 0


def test_urgent_data_does_not_stall_a_spliced_direction(hub, tcp_pairs):
    """splice() stops at TCP's urgent mark for good; a direction that saw
    urgent data copies from then on, so what follows still arrives."""
    client, a, b, server = relayed(tcp_pairs)
    fut = hub.relay(a, b)
    blob = payload(4 << 20, 19)
    sender = threading.Thread(target=client.sendall, args=(blob,))
    sender.start()
    assert recv_exact(server, len(blob)) == blob
    sender.join()
    assert hub.stats()["switches"]["to_splice"] >= 1  # the bulk went by splice
    client.send(b"!", socket.MSG_OOB)  # not inline: the relay does not carry it
    client.sendall(b"after")
    client.shutdown(socket.SHUT_WR)
    assert recv_exact(server, 5) == b"after"
    server.shutdown(socket.SHUT_WR)
    assert fut.result(JOIN) == (len(blob) + 5, 0)


def test_the_hub_relays_duplicates_and_frees_the_callers_fd_numbers(hub, tcp_pairs):
    """relay() hands the engine duplicates and closes the caller's fds in the
    call: a Ctrl-C landing between the two can leave the objects open, but
    never two owners closing one fd number (the next user of that number
    would lose its file)."""
    client, a, b, server = relayed(tcp_pairs)
    numbers = (a.fileno(), b.fileno())
    fut = hub.relay(a, b)
    for fd in numbers:
        with pytest.raises(OSError) as info:
            os.fstat(fd)  # free: closed by the call, not held by the hub
        assert info.value.errno == errno.EBADF
    client.sendall(b"still relayed")
    assert recv_exact(server, 13) == b"still relayed"
    client.shutdown(socket.SHUT_WR)
    server.shutdown(socket.SHUT_WR)
    assert fut.result(JOIN) == (13, 0)


def test_a_lingering_close_is_not_left_to_the_engine(hub, tcp_pairs):
    """SO_LINGER with a timeout makes close() block even on a non-blocking
    socket; the engine closes sockets on its own thread, where that would
    hold up every relay. The hub clears it when it takes a socket (a reset
    on close, a zero timeout, is kept)."""
    client, a, b, server = relayed(tcp_pairs)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 4))
    a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    b_view, a_view = b.dup(), a.dup()  # the same sockets, seen after the hub took them
    try:
        fut = hub.relay(a, b)
        assert struct.unpack("ii", b_view.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8))[0] == 0
        assert struct.unpack("ii", a_view.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8)) == (1, 0)
    finally:
        b_view.close()
        a_view.close()
    client.shutdown(socket.SHUT_WR)
    server.shutdown(socket.SHUT_WR)
    assert fut.result(JOIN) == (0, 0)


def test_a_reset_after_eof_fails_the_direction_that_still_writes(hub, tcp_pairs):
    client, a, b, server = relayed(tcp_pairs)
    fut = hub.relay(a, b)
    server.shutdown(socket.SHUT_WR)  # b to a is done...
    assert client.recv(1) == b""
    _reset(server)  # ...and the client never sends: the relay must still end
    with pytest.raises(TransferError) as info:
        fut.result(JOIN)
    assert info.value.errno in (errno.ECONNRESET, errno.EPIPE)
    assert info.value.relayed == (0, 0)


# ------------------------------------------------- backpressure, no spinning


def test_a_stalled_reader_holds_the_writer_back_without_spinning(hub, tcp_pairs):
    client, a, b, server = relayed(tcp_pairs)
    fut = hub.relay(a, b)
    client.setblocking(False)
    data = payload(1 << 20, 4)
    sent = 0
    deadline = time.monotonic() + JOIN
    blocked_since: Optional[float] = None
    while blocked_since is None or time.monotonic() - blocked_since < 0.2:
        assert time.monotonic() < deadline
        try:
            sent += client.send(data)
            blocked_since = None
        except BlockingIOError:
            blocked_since = blocked_since or time.monotonic()
            time.sleep(0.01)
    st = hub.stats()
    assert st["pipes"]["in_use"] + st["buffers"] <= 1  # one thing in flight
    assert sent < 256 << 20  # bounded by socket buffers plus one pipe
    # Stalled: the engine waits in epoll, it does not poll.
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    time.sleep(0.5)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    used = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    assert used < 0.25, f"{used:.3f} s of CPU while stalled"
    server.settimeout(JOIN)
    total = 0
    client.shutdown(socket.SHUT_WR)
    while True:
        chunk = server.recv(1 << 20)
        if not chunk:
            break
        total += len(chunk)
    assert total == sent
    server.shutdown(socket.SHUT_WR)
    assert fut.result(JOIN) == (sent, 0)


# ------------------------------------------------------- copy/splice switch


def _fill(s: socket.socket, data: bytes) -> int:
    """Queue as much of data as the socket takes without blocking."""
    s.setblocking(False)
    sent = 0
    try:
        while sent < len(data):
            sent += s.send(data[sent: sent + (256 << 10)])
    except BlockingIOError:
        pass
    s.setblocking(True)
    return sent


def _delivered(hub: RelayHub) -> int:
    st = hub.stats()
    return int(st["bytes"]["copy"] + st["bytes"]["splice"])


def test_small_messages_are_never_spliced(hub, tcp_pairs):
    client, a, b, server = relayed(tcp_pairs)
    fut = hub.relay(a, b)
    for i in range(200):
        client.sendall(bytes([i % 251]) * 64)
        assert len(recv_exact(server, 64)) == 64
        server.sendall(b"k" * 64)
        assert len(recv_exact(client, 64)) == 64
    client.shutdown(socket.SHUT_WR)
    server.shutdown(socket.SHUT_WR)
    assert fut.result(JOIN) == (200 * 64, 200 * 64)
    st = hub.stats()
    assert st["bytes"] == {"copy": 2 * 200 * 64, "splice": 0}
    assert st["switches"] == {"to_splice": 0, "to_copy": 0}
    assert st["pipes"]["created"] == 0


def test_a_bulk_stream_switches_to_splice_and_back_when_it_turns_interactive(hub, tcp_pairs):
    client, a, b, server = relayed(tcp_pairs)
    data = payload(8 << 20, 6)
    queued = _fill(client, data)  # bytes already waiting: the first reads are full
    assert queued > 3 * 16384
    fut = hub.relay(a, b)
    t = threading.Thread(target=client.sendall, args=(data[queued:],))
    t.start()
    got = recv_exact(server, len(data))
    t.join(JOIN)
    assert got == data
    # The engine counts a delivery after send() returns: the peer may have
    # the bytes a moment before the counters do.
    wait_for(lambda: _delivered(hub) == len(data), "the counters caught up")
    st = hub.stats()
    assert st["switches"]["to_splice"] >= 1
    assert st["bytes"]["splice"] > len(data) // 2
    # Now the same direction carries 64-byte messages: back to copying.
    copied = st["bytes"]["copy"]
    for _ in range(50):
        client.sendall(b"m" * 64)
        assert len(recv_exact(server, 64)) == 64
    wait_for(lambda: _delivered(hub) == len(data) + 50 * 64, "the counters caught up")
    wait_for(lambda: hub.stats()["switches"]["to_copy"] >= 1, "the switch back to copying")
    st = hub.stats()
    # The first turn of small reads (one splice under 4 KiB) demotes; a
    # message or two may still ride in the turn that read the bulk's tail.
    assert st["bytes"]["copy"] - copied >= 40 * 64
    client.shutdown(socket.SHUT_WR)
    server.shutdown(socket.SHUT_WR)
    assert fut.result(JOIN) == (len(data) + 50 * 64, 0)
    assert hub.stats()["pipes"]["in_use"] == 0


# ----------------------------------------------------------- 1,000 at once


def _pipe_fds() -> int:
    n = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{name}").startswith("pipe:")
        except OSError:
            pass
    return n


def _drive(socks: List[socket.socket], outs: Dict[socket.socket, bytes]) -> Dict[socket.socket, bytes]:
    """Send each socket's bytes then SHUT_WR, read each to EOF; one thread."""
    sel = selectors.DefaultSelector()
    views = {s: memoryview(outs[s]) for s in socks}
    got: Dict[socket.socket, bytearray] = {s: bytearray() for s in socks}
    open_ = set(socks)
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
    deadline = time.monotonic() + 120
    while open_:
        assert time.monotonic() < deadline, "pairs did not finish"
        for key, ev in sel.select(1.0):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            if ev & selectors.EVENT_WRITE and views[s] is not None:
                try:
                    n = s.send(views[s][: 1 << 16])
                    views[s] = views[s][n:]
                except BlockingIOError:
                    pass
                if not len(views[s]):
                    s.shutdown(socket.SHUT_WR)
                    views[s] = None  # type: ignore[assignment]
                    sel.modify(s, selectors.EVENT_READ)
            if ev & selectors.EVENT_READ:
                try:
                    chunk = s.recv(1 << 16)
                except BlockingIOError:
                    continue
                if chunk:
                    got[s] += chunk
                elif views[s] is None:
                    sel.unregister(s)
                    open_.discard(s)
                else:
                    sel.modify(s, selectors.EVENT_WRITE)
    sel.close()
    return {s: bytes(v) for s, v in got.items()}


def test_a_thousand_pairs_at_once_with_bounded_fds_and_pipes():
    n = 1000
    need = 4 * n + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"the hard fd limit ({hard}) is below the {need} this test needs")
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    fds_before = len(os.listdir("/proc/self/fd"))
    pipes_before = _pipe_fds()
    ends: List[socket.socket] = []
    try:
        with RelayHub(2) as h:
            futs = []
            outs: Dict[socket.socket, bytes] = {}
            pairs = []
            for i in range(n):
                c, a = socket.socketpair()
                b, s = socket.socketpair()
                ends += [c, s]
                # Every 10th pair streams (and wants a pipe), the rest chat.
                size = 256 << 10 if i % 10 == 0 else 64 + i % 400
                outs[c], outs[s] = payload(size, i), payload(size // 2 + 1, i + 1)
                pairs.append((c, s))
                futs.append(h.relay(a, b))
            assert len(os.listdir("/proc/self/fd")) <= fds_before + 4 * n + 8
            got = _drive(ends, outs)
            for (c, s), fut in zip(pairs, futs):
                assert got[s] == outs[c] and got[c] == outs[s]
                assert fut.result(JOIN) == (len(outs[c]), len(outs[s]))
            st = h.stats()
            assert st["relays"]["ended"] == n
            assert st["pipes"]["created"] <= st["pipes"]["max"]
            assert _pipe_fds() - pipes_before <= 2 * st["pipes"]["max"]
            assert st["bytes"]["splice"] > 0
        assert _pipe_fds() == pipes_before
    finally:
        for s in ends:
            s.close()
    assert len(os.listdir("/proc/self/fd")) == fds_before


# ------------------------------------------------------------ close, Ctrl-C


def test_close_ends_every_relay_and_the_peers_see_it(tcp_pairs):
    h = RelayHub(2)
    ends = []
    futs = []
    for i in range(10):
        client, a, b, server = relayed(tcp_pairs)
        futs.append(h.relay(a, b))
        ends.append((client, server))
        client.sendall(b"x" * i)
        assert recv_exact(server, i) == b"x" * i
    h.close()
    for i, (fut, (client, server)) in enumerate(zip(futs, ends)):
        assert fut.done()
        exc = fut.exception()
        assert isinstance(exc, ConnectionAbortedError) and isinstance(exc, TransferError)
        assert exc.relayed == (i, 0)
        for s in (client, server):
            try:
                assert s.recv(1) == b""
            except ConnectionResetError:
                pass
    h.close()  # idempotent
    assert h.closed
    client, a, b, server = relayed(tcp_pairs)
    with pytest.raises(RuntimeError):
        h.relay(a, b)
    assert a.fileno() >= 0
    assert h.stats()["relays"]["failed"] == 10


def test_close_from_a_futures_callback(tcp_pairs):
    """A callback that closes the hub returns before its collector thread
    releases its fds; a close() elsewhere waits for that (the fd-leak check
    after the test fails otherwise: the callback lingers to make it show)."""
    h = RelayHub()
    client, a, b, server = relayed(tcp_pairs)
    fut = h.relay(a, b)
    fut.add_done_callback(lambda f: (h.close(), time.sleep(0.2)))
    client.shutdown(socket.SHUT_WR)
    server.shutdown(socket.SHUT_WR)
    assert fut.result(JOIN) == (0, 0)
    h.close()
    assert h.closed


def test_ctrl_c_while_waiting_on_a_future(hub, tcp_pairs):
    client, a, b, server = relayed(tcp_pairs)
    fut = hub.relay(a, b)  # never ends by itself
    main = threading.get_ident()
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        timer = threading.Timer(0.2, signal.pthread_kill, args=(main, signal.SIGINT))
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            fut.result(timeout=JOIN)
        timer.join()
    finally:
        signal.signal(signal.SIGINT, old)
    assert not fut.done()
    client.sendall(b"still relaying")
    assert recv_exact(server, 14) == b"still relaying"


def test_a_hub_dropped_unclosed_is_closed_with_a_resource_warning(tcp_pairs):
    h = RelayHub()
    client, a, b, server = relayed(tcp_pairs)
    fut = h.relay(a, b)
    with pytest.warns(ResourceWarning, match="unclosed"):
        del h
        gc.collect()
    assert isinstance(fut.exception(JOIN), ConnectionAbortedError)
    assert client.recv(1) == b"" and server.recv(1) == b""


def test_a_hub_does_not_keep_the_interpreter_alive():
    code = (
        "import socket, zcio\n"
        "h = zcio.RelayHub(2)\n"
        "c, a = socket.socketpair(); b, s = socket.socketpair()\n"
        "f = h.relay(a, b)\n"
        "c.sendall(b'x'); assert s.recv(1) == b'x'\n"
        "print('ok', flush=True)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "ok\n"


# -------------------------------------------------------------------- fork


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_child_cannot_use_the_parents_hub_and_holds_none_of_its_fds(tcp_pairs):
    h = RelayHub()
    try:
        client, a, b, server = relayed(tcp_pairs)
        fut = h.relay(a, b)
        client.sendall(b"before")
        assert recv_exact(server, 6) == b"before"
        parent_default = default_hub()
        go_r, go_w = os.pipe()
        res_r, res_w = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
            pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                c2, a2, b2, s2 = socket.socketpair() + socket.socketpair()
                try:
                    h.relay(a2, b2)
                except RuntimeError:
                    fresh = default_hub()
                    assert fresh is not parent_default
                    f2 = fresh.relay(a2, b2)
                    c2.sendall(b"child")
                    assert recv_exact(s2, 5) == b"child"
                    c2.shutdown(socket.SHUT_WR)
                    s2.shutdown(socket.SHUT_WR)
                    assert f2.result(JOIN) == (5, 0)
                    code = 0
                os.write(res_w, b"%d" % code)
                os.read(go_r, 1)  # hold on until the parent checked its peers
            finally:
                os._exit(code)
        os.close(res_w)
        os.close(go_r)
        assert os.read(res_r, 1) == b"0"
        # The parent's relay still runs...
        server.sendall(b"after")
        assert recv_exact(client, 5) == b"after"
        # ...and when the parent ends it, its peers see the end while the
        # child lives: the child kept no copy of the relayed sockets.
        h.close()
        assert isinstance(fut.exception(), ConnectionAbortedError)
        for s in (client, server):
            s.settimeout(JOIN)
            assert s.recv(1) == b""
        os.write(go_w, b"x")
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    finally:
        h.close()
        for fd in (locals().get("go_w"), locals().get("res_r")):
            if fd is not None:
                os.close(fd)
        default_hub().close()


# -------------------------------------------------------------------- aio


def _loop_factories() -> List[Tuple[str, Callable[[], asyncio.AbstractEventLoop]]]:
    out: List[Tuple[str, Callable[[], asyncio.AbstractEventLoop]]] = [("asyncio", asyncio.new_event_loop)]
    try:
        import uvloop
    except ImportError:
        pass
    else:
        out.append(("uvloop", uvloop.new_event_loop))
    return out


@pytest.fixture(params=_loop_factories(), ids=lambda p: p[0])
def run(request) -> Iterator[Callable]:
    factory = request.param[1]

    def runner(coro):
        loop = factory()
        try:
            return loop.run_until_complete(coro)
        finally:
            loop.close()

    yield runner


def test_aio_relay_exact_data_many_at_once(run, hub, tcp_pairs):
    pairs = [relayed(tcp_pairs) for _ in range(20)]
    datas = [(payload(1000 * i + 1, i), payload(700 * i, i + 50)) for i in range(20)]

    async def main() -> List[Tuple[int, int]]:
        tasks = [asyncio.ensure_future(aio.relay(a, b, hub=hub)) for _, a, b, _ in pairs]
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()

        def clients() -> None:
            ts = []
            for (client, _, _, server), (up, down) in zip(pairs, datas):
                ts += [send_and_close(client, up), send_and_close(server, down)]
            for (client, _, _, server), (up, down) in zip(pairs, datas):
                assert read_to_eof(server) == up and read_to_eof(client) == down
            for t in ts:
                t.join(JOIN)

        await loop.run_in_executor(None, clients)
        return await asyncio.gather(*tasks)

    results = run(main())
    assert results == [(len(u), len(d)) for u, d in datas]


def test_aio_relay_failure_carries_the_accounting(run, hub, tcp_pairs):
    client, a, b, server = relayed(tcp_pairs)

    async def main() -> None:
        task = asyncio.ensure_future(aio.relay(a, b, hub=hub))
        await asyncio.sleep(0)
        client.sendall(b"hello")
        assert recv_exact(server, 5) == b"hello"
        server.shutdown(socket.SHUT_WR)
        assert client.recv(1) == b""
        _reset(server)
        with pytest.raises(TransferError) as info:
            await task
        assert info.value.relayed == (5, 0)

    run(main())


def test_aio_relay_cancel_ends_the_relay_and_closes_its_sockets(run, hub, tcp_pairs):
    client, a, b, server = relayed(tcp_pairs)

    async def main() -> None:
        task = asyncio.ensure_future(aio.relay(a, b, hub=hub))
        loop = asyncio.get_running_loop()
        client.sendall(b"abc")
        await loop.run_in_executor(None, lambda: recv_exact(server, 3))
        task.cancel()
        with pytest.raises(asyncio.CancelledError) as info:
            await task
        if sys.version_info >= (3, 11):  # older ones hand the awaiter a fresh CancelledError
            assert info.value.transferred == (3, 0)  # type: ignore[attr-defined]
            assert info.value.pending == (b"", b"")  # type: ignore[attr-defined]

    run(main())
    for s in (client, server):
        try:
            assert s.recv(1) == b""
        except ConnectionResetError:
            pass
    st = hub.stats()
    assert st["relays"]["active"] == 0 and st["relays"]["failed"] == 1


def test_aio_relay_on_the_default_hub(run, tcp_pairs):
    client, a, b, server = relayed(tcp_pairs)

    async def main() -> Tuple[int, int]:
        task = asyncio.ensure_future(aio.relay(a, b))
        await asyncio.sleep(0)
        client.sendall(b"to the default hub")
        client.shutdown(socket.SHUT_WR)
        server.shutdown(socket.SHUT_WR)
        return await task

    try:
        assert run(main()) == (18, 0)
        assert default_hub().stats()["relays"]["ended"] >= 1
        assert read_to_eof(server) == b"to the default hub"
    finally:
        default_hub().close()  # its threads and fds are not this test's to keep


def test_aio_relay_refuses_tls(run, hub, tcp_pairs):
    client, a, b, server = relayed(tcp_pairs)
    tls = ssl.create_default_context().wrap_socket(a, server_hostname="localhost", do_handshake_on_connect=False)

    async def main() -> None:
        with pytest.raises(TypeError):
            await aio.relay(tls, b, hub=hub)

    try:
        run(main())
        assert tls.fileno() >= 0 and b.fileno() >= 0
    finally:
        tls.close()


def test_the_top_level_exports():
    assert zcio.RelayHub is RelayHub
    assert aio.relay is zcio.hub.relay
