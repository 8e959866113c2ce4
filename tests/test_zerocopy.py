"""ZeroCopySender, Ticket, CompletionTracker, BufferPool and vmsplice tickets.

Everything runs over loopback, where the kernel copies MSG_ZEROCOPY data and
reports COPIED, and where completions of copied data arrive when the
receiver's copy of the data is freed (read) or acked. A "stalled" peer is a
receiver with a tiny receive buffer that does not read: the sender's data
then stays queued, its completion cannot come, and the pin must hold.
"""
from __future__ import annotations

import asyncio
import errno
import gc
import os
import random
import select
import socket
import subprocess
import sys
import threading
import zlib
from typing import Any, Awaitable, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import zcio
from zcio import zerocopy as zc
from zcio._binding import ffi
from zcio.lowlevel import Completion
from zcio.zerocopy import (
    BufferPool,
    CompletionTracker,
    Ticket,
    ZeroCopySender,
    _registry,
    _step,
)
from zcio.zerocopy.aio import AsyncZeroCopySender

LOOPS = ["asyncio"]
try:
    import uvloop

    LOOPS.append("uvloop")
except ImportError:  # pragma: no cover - uvloop is in the test extra
    uvloop = None

U32 = 1 << 32
PAGE = os.sysconf("SC_PAGE_SIZE")
SO_TIMESTAMPING = 37  # asm-generic value (x86, arm, riscv, ...)
TS_FLAGS = (1 << 1) | (1 << 4) | (1 << 11)  # TX_SOFTWARE | SOFTWARE | OPT_TSONLY


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


FAMILIES = [
    pytest.param(socket.AF_INET, id="ipv4"),
    pytest.param(
        socket.AF_INET6,
        id="ipv6",
        marks=pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback"),
    ),
]


def _host(family: int) -> str:
    return "127.0.0.1" if family == socket.AF_INET else "::1"


@pytest.fixture(autouse=True)
def no_parked_pins(request: Any) -> Iterator[None]:
    """After each test (and its sockets' teardown) no pin may be left parked:
    the graveyard and the pending vmsplice tickets are empty, and nothing was
    abandoned unless the test asks for ``allow_abandon``."""
    before = zc.graveyard_stats()
    yield
    gc.collect()
    zc.reap_graveyard(0)
    after = zc.graveyard_stats()
    assert after["tickets"] == 0 and after["vmsplice_tickets"] == 0, after
    if "allow_abandon" not in request.fixturenames:
        assert after["abandoned_tickets"] == before["abandoned_tickets"], after


@pytest.fixture
def allow_abandon() -> None:
    """Marks a test that deliberately abandons pins for the process's life."""


@pytest.fixture
def make_tcp() -> Iterator[Callable[..., Tuple[socket.socket, socket.socket]]]:
    """Connected TCP pairs (client, server) with optional buffer sizes."""
    made: List[socket.socket] = []

    def make(
        family: int = socket.AF_INET,
        *,
        rcvbuf: Optional[int] = None,
        sndbuf: Optional[int] = None,
        timeout: Optional[float] = 10.0,
    ) -> Tuple[socket.socket, socket.socket]:
        with socket.socket(family, socket.SOCK_STREAM) as listener:
            if rcvbuf:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            listener.bind((_host(family), 0))
            listener.listen(1)
            client = socket.socket(family, socket.SOCK_STREAM)
            made.append(client)
            if sndbuf:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
            client.settimeout(10)
            client.connect(listener.getsockname()[:2])
            server, _ = listener.accept()
        made.append(server)
        server.settimeout(10)
        client.settimeout(timeout)
        return client, server

    yield make
    for s in made:
        s.close()


@pytest.fixture
def make_udp() -> Iterator[Callable[..., Tuple[socket.socket, socket.socket]]]:
    """Connected UDP pairs (sender, receiver); the receiver buffers 4+ MiB."""
    made: List[socket.socket] = []

    def make(family: int = socket.AF_INET) -> Tuple[socket.socket, socket.socket]:
        rx = socket.socket(family, socket.SOCK_DGRAM)
        made.append(rx)
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        rx.bind((_host(family), 0))
        rx.settimeout(10)
        tx = socket.socket(family, socket.SOCK_DGRAM)
        made.append(tx)
        tx.connect(rx.getsockname()[:2])
        return tx, rx

    yield make
    for s in made:
        s.close()


class Reader(threading.Thread):
    """Reads a stream socket to EOF in the background."""

    def __init__(self, sock: socket.socket, gate: Optional[Callable[[], None]] = None) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.gate = gate
        self.data = bytearray()
        self.error: Optional[BaseException] = None
        self.start()

    def run(self) -> None:
        try:
            if self.gate is not None:
                self.gate()
            buf = bytearray(1 << 20)
            while True:
                n = self.sock.recv_into(buf)
                if not n:
                    return
                self.data += buf[:n]
        except BaseException as exc:  # reported by result()
            self.error = exc

    def result(self, timeout: float = 30.0) -> bytes:
        self.join(timeout)
        assert not self.is_alive(), "reader did not reach EOF"
        if self.error is not None:
            raise self.error
        return bytes(self.data)


def drain(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        assert chunk, "unexpected EOF"
        out += chunk
    return bytes(out)


def sizes(seed: int, total: int) -> List[int]:
    """Mixed send sizes around the threshold and the chunk size, summing to total."""
    r = random.Random(seed)
    menu = [0, 1, 100, 4095, 16383, 16384, 16385, 65536, 100_000, 1 << 20, (1 << 20) + 7]
    out: List[int] = []
    left = total
    while left > 0:
        n = min(left, r.choice(menu) if r.random() < 0.7 else r.randrange(0, 300_000))
        out.append(n)
        left -= n
    return out


STALL = 1 << 20  # bytes a stalled receiver cannot take in without reading


def stalled_pair(
    make_tcp: Callable[..., Tuple[socket.socket, socket.socket]], family: int = socket.AF_INET
) -> Tuple[socket.socket, socket.socket]:
    """A receiver that holds at most ~128 KiB unread (fixed SO_RCVBUF: no
    autotuning), and a sender with room to queue STALL bytes without blocking."""
    return make_tcp(family, rcvbuf=64 << 10, sndbuf=2 << 20)


def resizable(b: bytearray) -> bool:
    try:
        b.append(0)
    except BufferError:
        return False
    del b[-1]
    return True


# ---------------------------------------------------------------- CompletionTracker


class TrackerMachine(RuleBasedStateMachine):
    """CompletionTracker against a set of outstanding (unwrapped) ids."""

    @initialize(first=st.one_of(st.integers(U32 - 40, U32 - 1), st.integers(0, U32 - 1)))
    def start(self, first: int) -> None:
        self.tracker = CompletionTracker(first)
        self.next = first
        self.issued: List[int] = []
        self.outstanding: set = set()

    @rule(n=st.integers(1, 12))
    def issue(self, n: int) -> None:
        for _ in range(n):
            assert self.tracker.issue() == self.next % U32
            self.issued.append(self.next)
            self.outstanding.add(self.next)
            self.next += 1

    def _runs(self) -> List[List[int]]:
        runs: List[List[int]] = []
        for seq in sorted(self.outstanding):
            if runs and runs[-1][-1] + 1 == seq:
                runs[-1].append(seq)
            else:
                runs.append([seq])
        return runs

    @rule()
    def failed_send(self) -> None:
        """An id issued before a send that failed is taken back."""
        send_id = self.tracker.issue()
        assert send_id == self.next % U32 and self.tracker.is_pending(send_id)
        self.tracker.retract(send_id)
        assert self.tracker.next_id == send_id and not self.tracker.is_pending(send_id)

    @precondition(lambda self: self.outstanding)
    @rule(data=st.data())
    def kernel_completion(self, data: st.DataObject) -> None:
        """What the kernel sends: a coalesced range of outstanding ids, any order."""
        run = data.draw(st.sampled_from(self._runs()))
        i = data.draw(st.integers(0, len(run) - 1))
        j = data.draw(st.integers(i, len(run) - 1))
        assert self.tracker.complete(run[i] % U32, run[j] % U32) == j - i + 1
        self.outstanding -= set(run[i : j + 1])

    @precondition(lambda self: self.issued)
    @rule(data=st.data())
    def overlapping_completion(self, data: st.DataObject) -> None:
        """Duplicates, overlaps and not-yet-issued ids count for nothing."""
        start = data.draw(st.sampled_from(self.issued[-64:]))
        length = data.draw(st.integers(1, 24))
        ids = set(range(start, start + length)) & self.outstanding
        assert self.tracker.complete(start % U32, (start + length - 1) % U32) == len(ids)
        self.outstanding -= ids

    @invariant()
    def agrees_with_model(self) -> None:
        assert self.tracker.outstanding == len(self.outstanding)
        # gaps: runs of completed ids above the oldest outstanding one
        oldest = min(self.outstanding, default=self.next)
        done_above = [seq for seq in range(oldest, self.next) if seq not in self.outstanding]
        runs = sum(1 for k, seq in enumerate(done_above) if k == 0 or done_above[k - 1] + 1 != seq)
        assert self.tracker.gaps == runs
        assert self.tracker.next_id == self.next % U32
        recent = self.issued[-48:]
        for seq in recent:
            assert self.tracker.is_pending(seq % U32) == (seq in self.outstanding)
        # Ticket-shaped queries: is every id of [a, b) complete?
        for a in range(len(recent)):
            for b in (a + 1, a + 3, len(recent)):
                if b <= len(recent):
                    window = recent[a:b]
                    expect = not (set(window) & self.outstanding)
                    assert (not self.tracker.any_pending(window[0] % U32, window[-1] % U32)) == expect


TestTrackerMachine = TrackerMachine.TestCase
TestTrackerMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


def test_tracker_wraps_at_2_32() -> None:
    t = CompletionTracker(U32 - 2)
    assert [t.issue() for _ in range(4)] == [U32 - 2, U32 - 1, 0, 1]
    assert t.complete(U32 - 1, 0) == 2  # a wrapped range: last < first
    assert t.outstanding == 2
    assert t.is_pending(U32 - 2) and not t.is_pending(U32 - 1) and not t.is_pending(0)
    assert t.complete(1, 1) == 1  # out of order
    assert t.complete(U32 - 2, U32 - 2) == 1
    assert t.outstanding == 0 and t.next_id == 2
    assert t.complete(U32 - 2, 1) == 0  # all already complete


def test_tracker_rejects_bad_ids() -> None:
    with pytest.raises(ValueError):
        CompletionTracker(U32)
    t = CompletionTracker()
    t.issue()
    with pytest.raises(ValueError):
        t.complete(0, U32)
    assert t.complete(5, 9) == 0  # never issued
    assert t.outstanding == 1


def test_tracker_retracts_only_the_last_pending_id() -> None:
    t = CompletionTracker(U32 - 1)
    first, second = t.issue(), t.issue()
    assert (first, second) == (U32 - 1, 0)
    with pytest.raises(ValueError):
        t.retract(first)  # not the last issued
    t.complete(second, second)
    with pytest.raises(ValueError):
        t.retract(second)  # already complete: its send went
    assert t.any_pending(first, second) and not t.any_pending(second, second)
    t.complete(first, first)
    assert not t.any_pending(first, second) and t.outstanding == 0
    with pytest.raises(ValueError):
        CompletionTracker().retract(0)  # nothing issued


def test_copied_completion_marks_the_tickets_it_covers_across_the_wrap() -> None:
    """A socket record's tickets hold ranges of ids; a COPIED completion
    marks exactly the tickets it meets, also when the ids wrap at 2**32."""
    record = _registry.SocketRecord(-1, (0, 0))
    record.tracker = CompletionTracker(U32 - 3)
    tickets = []
    for sends in (2, 3, 1):  # ids U32-3..U32-2 | U32-1, 0, 1 | 2
        t = _registry.SendTicket(100, ffi.from_buffer(bytearray(1)), record)
        for k in range(sends):
            t.last_id = record.issue(t, k == 0)
            t.sends += 1
        t.busy = False
        tickets.append(t)
    assert [t.first_id for t in tickets] == [U32 - 3, U32 - 1, 2]
    assert record._apply([Completion(0, 0, True)]) == []
    assert [t.copied for t in tickets] == [False, True, False]
    finished = record._apply([Completion(U32 - 1, U32 - 1, False), Completion(1, 2, True)])
    assert finished == [tickets[1], tickets[2]] and tickets[2].copied and not tickets[0].copied
    assert record._apply([Completion(U32 - 3, U32 - 2, True)]) == [tickets[0]]
    assert tickets[0].copied and record.tracker.outstanding == 0 and not record.pending


# ---------------------------------------------------------------- TCP and UDP round trips


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("policy", ["always", "auto", "never"])
@pytest.mark.parametrize("mode", ["blocking", "timeout", "nonblocking"])
def test_tcp_exact_bytes(make_tcp: Any, family: int, policy: str, mode: str) -> None:
    client, server = make_tcp(family)
    client.settimeout({"blocking": None, "timeout": 10.0, "nonblocking": 0.0}[mode])
    data = bytearray(os.urandom(3 << 20))
    reader = Reader(server)
    tickets: List[Ticket] = []
    with ZeroCopySender(client, policy=policy) as z:
        off = 0
        for n in sizes(zlib.crc32(f"{family}{policy}{mode}".encode()), len(data)):
            tickets.append(z.sendall(memoryview(data)[off : off + n]))
            off += n
        assert z.flush(timeout=20)
        assert z.in_flight == 0
        stats = z.stats
    client.shutdown(socket.SHUT_WR)
    assert reader.result() == data
    assert all(t.done() for t in tickets)
    assert resizable(data)
    assert stats["bytes"] == len(data) and stats["sendalls"] == len(tickets)
    assert stats["sends"] == stats["zerocopy_sends"] + stats["copy_sends"]
    zc_opt = client.getsockopt(socket.SOL_SOCKET, zcio.SO_ZEROCOPY)
    if policy == "never":
        assert stats["zerocopy_sends"] == 0 and zc_opt == 0
        assert not any(t.copied for t in tickets)
    else:
        assert zc_opt == 1 and stats["zerocopy_sends"] > 0
        assert stats["completed_sends"] == stats["zerocopy_sends"]
        # loopback always copies, and says so
        assert stats["copied_sends"] == stats["completed_sends"]
        assert any(t.copied for t in tickets)


@settings(max_examples=15, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 150_000), max_size=12),
    threshold=st.sampled_from([0, 1, 16384, 1 << 20]),
)
def test_tcp_round_trip_property(lengths: List[int], threshold: int) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=10)
        server, _ = listener.accept()
    with client, server:
        server.settimeout(10)
        blob = os.urandom(sum(lengths))
        reader = Reader(server)
        with ZeroCopySender(client, threshold=threshold, policy="always") as z:
            off = 0
            tickets = []
            for n in lengths:
                tickets.append(z.sendall(blob[off : off + n]))
                off += n
            assert z.flush(10)
            assert all(t.done() for t in tickets)
            # at most one zero-copy send per MiB and none below the threshold
            for n, t in zip(lengths, tickets):
                if n < threshold or n == 0:
                    assert t.done() and not t.copied
        client.shutdown(socket.SHUT_WR)
        assert reader.result() == blob


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("policy", ["always", "never"])
def test_udp_one_datagram_per_sendall(make_udp: Any, family: int, policy: str) -> None:
    tx, rx = make_udp(family)
    lengths = [0, 1, 1000, 16383, 16384, 20000, 40000, 60000, 17, 30000]
    payloads = [os.urandom(n) for n in lengths]
    with ZeroCopySender(tx, policy=policy) as z:
        tickets = [z.sendall(p) for p in payloads]
        assert z.flush(10)
        stats = z.stats
    got = [rx.recv(65536) for _ in payloads]
    assert got == payloads
    rx.setblocking(False)
    with pytest.raises(BlockingIOError):
        rx.recv(65536)  # exactly one datagram each, nothing more
    assert all(t.done() for t in tickets)
    assert stats["sends"] == len(payloads)
    expect_zc = sum(1 for n in lengths if n >= 16384) if policy == "always" else 0
    assert stats["zerocopy_sends"] == expect_zc
    if policy == "always":
        assert all(t.copied for n, t in zip(lengths, tickets) if n >= 16384)


@pytest.mark.parametrize("family", FAMILIES)
def test_udp_too_large_is_emsgsize(make_udp: Any, family: int) -> None:
    tx, rx = make_udp(family)
    with ZeroCopySender(tx, policy="always") as z:
        for n in (70_000, 200_000):
            with pytest.raises(OSError) as info:
                z.sendall(bytearray(n))
            assert info.value.errno == errno.EMSGSIZE
            assert not isinstance(info.value, zcio.TransferError)
        assert z.stats["sends"] == 0 and z.in_flight == 0
        z.sendall(b"ok" * 10000)  # the sender is still usable, ids intact
        assert z.flush(10)
    assert rx.recv(65536) == b"ok" * 10000


def test_small_sends_are_copies_with_done_tickets(make_tcp: Any) -> None:
    client, server = make_tcp()
    with ZeroCopySender(client, threshold=4096, policy="always") as z:
        t = z.sendall(bytearray(b"x" * 4095))
        assert t.done() and t.wait(0) and not t.copied
        assert z.stats["zerocopy_sends"] == 0 and z.stats["copy_sends"] == 1
    assert drain(server, 4095) == b"x" * 4095


def test_non_stream_socket_falls_back_to_copy(socketpair: Any) -> None:
    a, b = socketpair()
    with ZeroCopySender(a) as z:
        stats = z.stats
        assert not stats["zerocopy_enabled"]
        assert stats["zerocopy_error"] in (errno.EOPNOTSUPP, errno.ENOPROTOOPT, 524)
        t = z.sendall(b"y" * 100_000)
        assert t.done()
    assert drain(b, 100_000) == b"y" * 100_000


def test_int_fd_is_accepted(make_tcp: Any) -> None:
    client, server = make_tcp(timeout=None)
    with ZeroCopySender(client.fileno(), policy="always") as z:
        z.sendall(b"z" * 50_000)
        assert z.flush(10)
        assert z.stats["zerocopy_sends"] == 1
    assert client.gettimeout() is None  # the fd's blocking mode is untouched
    assert drain(server, 50_000) == b"z" * 50_000


def test_nonblocking_socket_waits_for_pollout(make_tcp: Any) -> None:
    client, server = make_tcp(rcvbuf=16384, sndbuf=16384, timeout=0.0)
    data = os.urandom(4 << 20)
    z = ZeroCopySender(client, policy="always")

    def gate() -> None:  # read only once the sender had to wait
        while z.stats["eagain_waits"] == 0:
            threading.Event().wait(0.001)

    reader = Reader(server, gate)
    with z:
        for off in range(0, len(data), 64 << 10):
            z.sendall(data[off : off + (64 << 10)])
        assert z.flush(10)
        assert z.stats["eagain_waits"] > 0
    client.shutdown(socket.SHUT_WR)
    assert reader.result() == data


def test_timeout_reports_progress_and_ticket(make_tcp: Any) -> None:
    client, server = stalled_pair(make_tcp)
    data = os.urandom(16 << 20)
    with ZeroCopySender(client, policy="always") as z:
        with pytest.raises(TimeoutError) as info:
            z.sendall(data, timeout=0.05)
        exc = info.value
        assert isinstance(exc, zcio.TransferError)
        assert 0 < exc.transferred < len(data) and exc.pending == b""
        assert not exc.ticket.done()
        assert drain(server, exc.transferred) == data[: exc.transferred]
        assert exc.ticket.wait(10)


def test_concurrent_sendall_is_refused(make_tcp: Any, monkeypatch: Any) -> None:
    client, server = make_tcp()
    entered, release = threading.Event(), threading.Event()
    real = _step._c_send

    def slow_send(*args: Any) -> int:
        entered.set()
        release.wait(10)
        return real(*args)

    monkeypatch.setattr(_step, "_c_send", slow_send)
    with ZeroCopySender(client, policy="always") as z:
        t = threading.Thread(target=z.sendall, args=(b"a" * 20000,))
        t.start()
        assert entered.wait(10)
        with pytest.raises(RuntimeError):
            z.sendall(b"b" * 20000)
        release.set()
        t.join(10)
        assert z.flush(10)
    assert drain(server, 20000) == b"a" * 20000


# ---------------------------------------------------------------- pins


@pytest.mark.parametrize("family", FAMILIES)
def test_bytearray_pinned_until_ticket_done(make_tcp: Any, family: int) -> None:
    client, server = stalled_pair(make_tcp, family)
    payload = os.urandom(STALL)
    ba = bytearray(payload)
    with ZeroCopySender(client, policy="always") as z:
        t = z.sendall(ba)
        assert not t.done() and not t.wait(0.01)
        assert z.in_flight == len(ba)
        with pytest.raises(BufferError):
            ba.extend(b"more")
        assert drain(server, len(payload)) == payload
        assert t.wait(10)
        assert t.copied  # loopback: the kernel copied
        assert z.in_flight == 0
    assert resizable(ba)


def test_auto_policy_switches_off_after_copies(make_tcp: Any) -> None:
    client, server = make_tcp()
    reader = Reader(server)
    chunk = os.urandom(20000)
    sent = 0
    with ZeroCopySender(client, policy="auto") as z:
        for _ in range(2000):
            z.sendall(chunk)
            sent += len(chunk)
            if z.stats["policy_switched_off"]:
                break
            z.reap(0.01)
        stats = z.stats
        assert stats["policy_switched_off"] and stats["switch_reason"] == "copied"
        assert stats["copied_sends"] >= zc.AUTO_COPIED_LIMIT
        assert not z.zerocopy
        before = stats["zerocopy_sends"]
        for _ in range(10):
            t = z.sendall(chunk)
            assert t.done()
            sent += len(chunk)
        after = z.stats
        assert after["zerocopy_sends"] == before
        assert after["copy_sends"] >= stats["copy_sends"] + 10
        assert z.flush(10)
    client.shutdown(socket.SHUT_WR)
    assert reader.result() == chunk * (sent // len(chunk))


def test_always_policy_never_switches_off(make_tcp: Any) -> None:
    client, server = make_tcp()
    reader = Reader(server)
    with ZeroCopySender(client, policy="always") as z:
        for _ in range(200):
            z.sendall(b"q" * 20000)
        assert z.flush(10)
        stats = z.stats
    assert not stats["policy_switched_off"]
    # a partial send takes an id too, and a tail below the threshold is copied
    assert stats["zerocopy_sends"] >= 200 and stats["enobufs"] == 0
    assert stats["copied_sends"] == stats["completed_sends"] == stats["zerocopy_sends"]
    client.shutdown(socket.SHUT_WR)
    assert reader.result() == b"q" * 20000 * 200


# ---------------------------------------------------------------- ENOBUFS


def _timestamping(sock: socket.socket) -> None:
    """TX timestamps land between zero-copy notifications on the error queue,
    so the notifications cannot coalesce and each one holds optmem."""
    if os.uname().machine not in ("x86_64", "aarch64", "arm64", "riscv64", "s390x", "ppc64le"):
        pytest.skip("SO_TIMESTAMPING value not known for this architecture")
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, TS_FLAGS)
    except OSError as exc:  # pragma: no cover - depends on the kernel
        pytest.skip(f"SO_TIMESTAMPING refused: {exc}")


def test_unreaped_notifications_cause_enobufs_lowlevel(make_udp: Any) -> None:
    tx, rx = make_udp()
    _timestamping(tx)
    tx.setsockopt(socket.SOL_SOCKET, zcio.SO_ZEROCOPY, 1)
    sent = 0
    with pytest.raises(OSError) as info:
        for _ in range(20000):
            zcio.send_zerocopy(tx, b"n" * 1000)
            sent += 1
    assert info.value.errno == errno.ENOBUFS
    assert 0 < sent < 20000
    assert len(zcio.read_completions(tx)) == sent  # one notification each


def test_sender_survives_enobufs_udp(make_udp: Any) -> None:
    tx, rx = make_udp()
    _timestamping(tx)
    payloads = [os.urandom(1000) for _ in range(800)]
    # Never reap proactively: the sender meets ENOBUFS and must reap and retry.
    with ZeroCopySender(tx, threshold=0, policy="always", reap_every=10**9) as z:
        tickets = [z.sendall(p) for p in payloads]
        assert z.flush(10)
        stats = z.stats
    assert stats["enobufs"] > 0
    assert stats["zerocopy_sends"] > len(payloads) // 2
    assert all(t.done() for t in tickets)
    assert [rx.recv(2000) for _ in payloads] == payloads


def test_sender_survives_timestamped_load_tcp(make_tcp: Any) -> None:
    """The UDP load above, on TCP: whether ENOBUFS appears depends on how the
    acks batch completions, so only survival is asserted here."""
    client, server = make_tcp()
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    _timestamping(client)
    reader = Reader(server)
    chunks = [os.urandom(20000) for _ in range(64)]
    order = [chunks[i % 64] for i in range(3000)]
    with ZeroCopySender(client, policy="always", reap_every=10**9) as z:
        tickets = [z.sendall(c) for c in order]
        assert z.flush(20)
    client.shutdown(socket.SHUT_WR)
    assert reader.result() == b"".join(order)
    assert all(t.done() for t in tickets)


def test_enobufs_with_sends_in_flight_reaps_and_retries(make_tcp: Any, monkeypatch: Any) -> None:
    client, server = make_tcp()
    reader = Reader(server)
    real = _step._c_send
    calls = [0]
    injected = [0]

    def flaky(*args: Any) -> int:
        calls[0] += 1
        if calls[0] % 10 == 0:
            injected[0] += 1
            return -errno.ENOBUFS
        return real(*args)

    monkeypatch.setattr(_step, "_c_send", flaky)
    chunks = [os.urandom(30000) for _ in range(300)]
    with ZeroCopySender(client, policy="always", reap_every=10**9) as z:
        tickets = [z.sendall(c) for c in chunks]
        assert z.flush(10)
        stats = z.stats
    client.shutdown(socket.SHUT_WR)
    assert reader.result() == b"".join(chunks)
    assert all(t.done() for t in tickets)
    assert stats["enobufs"] == injected[0] > 0
    # every ENOBUFS led to a retry (zero-copy again) or one chunk by copy
    assert stats["zerocopy_sends"] + stats["enobufs_copies"] >= len(chunks)


def test_enobufs_with_nothing_in_flight_copies(make_tcp: Any, monkeypatch: Any) -> None:
    """ENOBUFS when nothing is in flight: no completion can come, so copy."""
    client, server = make_tcp()
    calls = []

    def no_buffers(*args: Any) -> int:
        calls.append(args)
        return -errno.ENOBUFS

    monkeypatch.setattr(_step, "_c_send", no_buffers)
    data = os.urandom(300_000)
    with ZeroCopySender(client, policy="auto") as z:
        for _ in range(zc.AUTO_ENOBUFS_LIMIT):
            t = z.sendall(data)
            assert t.done()  # everything went by copy
        stats = z.stats
        assert stats["zerocopy_sends"] == 0
        assert stats["enobufs"] == stats["enobufs_copies"] == zc.AUTO_ENOBUFS_LIMIT
        assert stats["policy_switched_off"] and stats["switch_reason"] == "enobufs"
        n = len(calls)
        z.sendall(data)
        assert len(calls) == n  # switched off: MSG_ZEROCOPY no longer tried
    assert drain(server, len(data) * (zc.AUTO_ENOBUFS_LIMIT + 1)) == data * (zc.AUTO_ENOBUFS_LIMIT + 1)


# ---------------------------------------------------------------- the step and its drivers


def run_on(kind: str, body: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``body()`` on a new loop of ``kind`` (bounded: 30 s)."""
    loop = uvloop.new_event_loop() if kind == "uvloop" else asyncio.new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(body(), 30))
    finally:
        loop.close()


def drive(op: _step.SendOp) -> Ticket:
    """A driver written by hand: step, and poll() as each Wait asks."""
    while not op.finished:
        wait = op.step()
        if isinstance(wait, _step.Wait):
            p = select.poll()
            p.register(wait.fd, wait.events)
            p.poll(10_000 if wait.timeout is None else int(wait.timeout * 1000) + 1)
    return op.finish()


def test_step_on_a_full_socket_asks_to_wait_for_pollout(make_tcp: Any) -> None:
    client, server = stalled_pair(make_tcp)
    client.setblocking(False)
    data = os.urandom(16 << 20)
    with ZeroCopySender(client, policy="always") as z:
        op = z._begin(data)
        assert isinstance(op, _step.SendOp)
        sent: List[int] = []
        while True:
            result = op.step()
            if isinstance(result, _step.Wait):
                break
            sent.append(result)
        assert result == _step.Wait(client.fileno(), select.POLLOUT)
        assert 0 < sum(sent) == op.sent < len(data) and not op.finished
        assert z.stats["eagain_waits"] == 1 and z.stats["sendalls"] == 1
        reader = Reader(server)
        ticket = drive(op)
        assert ticket.nbytes == len(data) and ticket.wait(10)
    client.shutdown(socket.SHUT_WR)
    assert reader.result() == data


def test_step_after_enobufs_waits_briefly_then_copies(make_tcp: Any, monkeypatch: Any) -> None:
    """ENOBUFS with a send in flight whose completion cannot come yet (the
    peer does not read): the step asks to wait for a completion, briefly;
    none came, so the next chunk goes by copy."""
    client, server = stalled_pair(make_tcp)
    client.setblocking(False)  # the copy step must not wait for the reader
    data = os.urandom(3 << 20)
    with ZeroCopySender(client, policy="always") as z:
        op = z._begin(data)
        assert isinstance(op, _step.SendOp)
        assert op.step() > 0 and z.stats["zerocopy_sends"] == 1
        monkeypatch.setattr(_step, "_c_send", lambda *args: -errno.ENOBUFS)
        wait = op.step()
        assert wait == _step.Wait(client.fileno(), 0, _step._ENOBUFS_WAIT)
        # Honour the wait. Nothing reads yet, so the 1 MiB in flight cannot
        # be acknowledged and no completion can come (the reader starts only
        # after the next step: started earlier, it raced the wait).
        assert isinstance(wait, _step.Wait) and wait.timeout is not None
        select.poll().poll(int(wait.timeout * 1000) + 1)
        copied = op.step()
        stats = z.stats
        assert isinstance(copied, int) and copied > 0
        assert stats["enobufs"] == stats["enobufs_copies"] == 1
        assert stats["copy_sends"] == 1 and stats["zerocopy_sends"] == 1
        monkeypatch.undo()
        reader = Reader(server)
        ticket = drive(op)
        assert ticket.wait(10)
    client.shutdown(socket.SHUT_WR)
    assert reader.result() == data


@pytest.mark.parametrize("loop", LOOPS)
def test_async_driver_awaits_pollout_on_the_loop(make_tcp: Any, loop: str, monkeypatch: Any) -> None:
    """A full socket: the async driver awaits POLLOUT on the loop and steps
    on -- one sendall, one ticket, no error raised and caught per EAGAIN."""
    client, server = stalled_pair(make_tcp)
    client.setblocking(False)
    data = os.urandom(16 << 20)

    def no_error(*args: Any) -> Any:
        raise AssertionError(f"a TransferError was built: {args}")

    monkeypatch.setattr(_step, "transfer_error", no_error)

    async def body() -> Tuple[Any, Reader, Dict[str, Any]]:
        async with AsyncZeroCopySender(client, policy="always") as z:
            sending = asyncio.ensure_future(z.sendall(data))
            while z.stats["eagain_waits"] == 0:
                await asyncio.sleep(0.001)
            assert not sending.done()  # waiting on the loop, not blocking it
            reader = Reader(server)
            ticket = await sending
            assert await ticket.wait(10)
            return ticket, reader, z.stats

    ticket, reader, stats = run_on(loop, body)
    client.shutdown(socket.SHUT_WR)
    assert reader.result() == data
    assert ticket.nbytes == len(data) and ticket.done()
    assert stats["sendalls"] == 1 and stats["eagain_waits"] >= 1
    assert stats["bytes"] == len(data)


@pytest.mark.parametrize("loop", LOOPS)
def test_async_sendall_one_at_a_time(make_tcp: Any, loop: str) -> None:
    """Two tasks may not interleave their bytes on one stream: the second
    sendall while the first waits raises RuntimeError, as with threads."""
    client, server = stalled_pair(make_tcp)
    client.setblocking(False)
    data = os.urandom(16 << 20)

    async def body() -> Reader:
        async with AsyncZeroCopySender(client, policy="always") as z:
            first = asyncio.ensure_future(z.sendall(data))
            while z.stats["eagain_waits"] == 0:
                await asyncio.sleep(0.001)
            with pytest.raises(RuntimeError):
                await z.sendall(b"x" * 100_000)
            reader = Reader(server)
            assert await (await first).wait(10)
            return reader

    reader = run_on(loop, body)
    client.shutdown(socket.SHUT_WR)
    assert reader.result() == data


# ---------------------------------------------------------------- close, GC, graveyard


def test_close_leaves_socket_open_and_ids_continue(make_tcp: Any) -> None:
    client, server = make_tcp()
    reader = Reader(server)
    z = ZeroCopySender(client, policy="always")
    z.sendall(b"1" * 50_000)
    with pytest.raises(ValueError):
        ZeroCopySender(client)  # one open sender per socket
    z.close()
    z.close()  # idempotent
    assert z.closed and client.fileno() >= 0
    with pytest.raises(ValueError):
        z.sendall(b"x")
    client.sendall(b"2" * 1000)  # the socket still works
    # A new sender continues the socket's id sequence: its tickets resolve.
    with ZeroCopySender(client, policy="always") as z2:
        tickets = [z2.sendall(b"3" * 50_000) for _ in range(40)]
        assert z2.flush(10)
        assert all(t.done() for t in tickets)
        assert z2.stats["zerocopy_sends"] == 40
    client.shutdown(socket.SHUT_WR)
    assert reader.result() == b"1" * 50_000 + b"2" * 1000 + b"3" * 50_000 * 40


def test_close_with_stalled_peer_parks_pins(make_tcp: Any) -> None:
    client, server = stalled_pair(make_tcp)
    payload = os.urandom(STALL)
    ba = bytearray(payload)
    z = ZeroCopySender(client, policy="always")
    t = z.sendall(ba)
    z.close(timeout=0.01)
    assert client.fileno() >= 0
    assert zc.graveyard_stats()["tickets"] >= 1
    with pytest.raises(BufferError):
        ba.extend(b"x")  # the kernel may still read it: still pinned
    assert not t.done()
    assert drain(server, len(payload)) == payload
    zc.reap_graveyard(timeout=10)
    assert zc.graveyard_stats()["tickets"] == 0
    assert t.done()
    assert resizable(ba)


def test_garbage_collected_sender_parks_pins(make_tcp: Any) -> None:
    client, server = stalled_pair(make_tcp)
    payload = os.urandom(STALL)
    ba = bytearray(payload)
    z = ZeroCopySender(client, policy="always")
    z.sendall(ba)  # the ticket is dropped at once
    ref = __import__("weakref").ref(z)
    with pytest.warns(ResourceWarning, match="unclosed"):
        del z
        gc.collect()
    assert ref() is None
    assert zc.graveyard_stats()["tickets"] >= 1
    with pytest.raises(BufferError):
        ba.extend(b"x")
    assert drain(server, len(payload)) == payload
    zc.reap_graveyard(timeout=10)
    assert zc.graveyard_stats()["tickets"] == 0
    assert resizable(ba)


def test_new_sender_adopts_parked_tickets(make_tcp: Any) -> None:
    client, server = stalled_pair(make_tcp)
    ba = bytearray(os.urandom(STALL))
    z = ZeroCopySender(client, policy="always")
    t = z.sendall(ba)
    z.close(timeout=0)
    with ZeroCopySender(client, policy="always") as z2:
        assert z2.in_flight == len(ba)  # adopted from the graveyard
        drain(server, len(ba))
        assert z2.flush(10)
        assert t.done() and resizable(ba)


def test_closed_socket_abandons_pins_for_good(make_tcp: Any, allow_abandon: None) -> None:
    client, server = stalled_pair(make_tcp)
    ba = bytearray(os.urandom(STALL))
    z = ZeroCopySender(client, policy="always")
    t = z.sendall(ba)
    z.close(timeout=0)
    before = zc.graveyard_stats()["abandoned_tickets"]
    client.close()  # completions can never be read now, yet the kernel may send
    zc.reap_graveyard(0)
    stats = zc.graveyard_stats()
    assert stats["abandoned_tickets"] == before + 1
    assert not t.done()
    with pytest.raises(BufferError):
        ba.extend(b"x")


def _epoll_fds() -> int:
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{name}") == "anon_inode:[eventpoll]"
        except OSError:
            pass
    return count


def test_sender_dropped_unclosed_warns_and_lets_go_of_the_socket(make_tcp: Any) -> None:
    client, server = make_tcp()
    z = ZeroCopySender(client, policy="always")
    z.sendall(b"x" * 100)
    with pytest.warns(ResourceWarning, match="unclosed <zcio.ZeroCopySender"):
        del z
        gc.collect()
    with ZeroCopySender(client) as again:  # the socket is free for a new sender
        again.sendall(b"y")
    assert drain(server, 101) == b"x" * 100 + b"y"


@pytest.mark.parametrize("loop", LOOPS)
def test_async_sender_dropped_unclosed_warns_and_lets_go(make_tcp: Any, loop: str) -> None:
    """Collected while its loop runs: the loop drops the error-queue reader
    on its own thread and the epoll fd is closed; the record is parked and
    the pinned buffer stays pinned until its completion came."""
    client, server = stalled_pair(make_tcp)
    client.setblocking(False)
    ba = bytearray(os.urandom(STALL))

    async def body() -> None:
        before = _epoll_fds()
        z = AsyncZeroCopySender(client, policy="always")
        assert _epoll_fds() == before + 1
        ticket = await z.sendall(ba)
        assert not ticket.done()
        with pytest.warns(ResourceWarning, match="unclosed <zcio.AsyncZeroCopySender"):
            del z
            gc.collect()
        for _ in range(3):
            await asyncio.sleep(0)
        assert _epoll_fds() == before
        with pytest.raises(BufferError):
            ba.extend(b"x")  # still pinned: the kernel may read it
        assert zc.graveyard_stats()["tickets"] == 1
        assert drain(server, len(ba)) == bytes(ba)
        async with AsyncZeroCopySender(client, policy="always") as again:
            assert again.in_flight == len(ba)  # adopted from the graveyard
            assert await again.flush(10)
        assert ticket.done() and resizable(ba)

    run_on(loop, body)


def test_async_sender_dropped_after_its_loop_closed(make_tcp: Any) -> None:
    client, server = make_tcp()
    client.setblocking(False)
    before = _epoll_fds()
    loop = asyncio.new_event_loop()

    async def make() -> AsyncZeroCopySender:
        return AsyncZeroCopySender(client)

    z = loop.run_until_complete(make())
    loop.close()
    with pytest.warns(ResourceWarning, match="unclosed"):
        del z
        gc.collect()
    assert _epoll_fds() == before
    with ZeroCopySender(client):
        pass  # the socket is free for a new sender


# ---------------------------------------------------------------- vmsplice


def test_vmsplice_ticket_waits_for_the_reader() -> None:
    with zcio.Pipe() as p:
        a = bytearray(b"a" * 1000)
        b = bytearray(b"b" * 1000)
        t1 = p.vmsplice([a])
        t2 = p.vmsplice([b, b""])
        assert p.written == 2000
        assert not t1.done() and not t2.done() and not t1.wait(0.01)
        with pytest.raises(BufferError):
            a.extend(b"x")
        assert os.read(p.r, 999) == b"a" * 999
        assert not t1.done()
        assert os.read(p.r, 1) == b"a"
        assert t1.done() and not t2.done()
        assert resizable(a)
        with pytest.raises(BufferError):
            b.extend(b"x")
        assert os.read(p.r, 2000) == b"b" * 1000
        assert t2.wait(1) and resizable(b)


def test_vmsplice_bytes_written_behind_the_pipe_make_it_late_not_early() -> None:
    with zcio.Pipe() as p:
        os.write(p.w, b"x" * 100)  # not counted in p.written
        a = bytearray(b"a" * 1000)
        t = p.vmsplice([a])
        os.read(p.r, 1000)  # 100 of our bytes are still in the pipe
        assert not t.done()
        with pytest.raises(BufferError):
            a.extend(b"x")
        os.read(p.r, 100)
        assert t.done()


def test_vmsplice_more_than_the_pipe_holds() -> None:
    data = [os.urandom(n) for n in (70_000, 1, 300_000, 0, 5000)]
    with zcio.Pipe() as p:
        got = bytearray()

        def read() -> None:
            import select

            while len(got) < sum(map(len, data)):
                select.select([p.r], [], [], 10)
                try:
                    got.extend(os.read(p.r, 1 << 16))
                except BlockingIOError:
                    pass

        reader = threading.Thread(target=read)
        reader.start()
        t = p.vmsplice(data)
        reader.join(10)
        assert not reader.is_alive()
        assert bytes(got) == b"".join(data)
        assert t.wait(1) and t.nbytes == len(got)


def test_vmsplice_timeout_keeps_pins_of_what_went_in() -> None:
    with zcio.Pipe() as p:
        size = p.size
        buf = bytearray(os.urandom(size * 3))
        with pytest.raises(TimeoutError) as info:
            p.vmsplice([buf], timeout=0.02)
        exc = info.value
        assert exc.transferred == p.pending > 0
        assert not exc.ticket.done()
        with pytest.raises(BufferError):
            buf.extend(b"x")
        assert p.drain() == bytes(buf[: exc.transferred])
        assert exc.ticket.done() and resizable(buf)


def test_vmsplice_ticket_resolves_when_pipe_closes() -> None:
    p = zcio.Pipe()
    a = bytearray(100)
    t = p.vmsplice([a])
    assert not t.done()
    p.close()
    assert t.done() and resizable(a)


def test_vmsplice_rejects_a_single_buffer() -> None:
    with zcio.Pipe() as p:
        with pytest.raises(TypeError):
            p.vmsplice(b"abc")  # type: ignore[arg-type]
        assert p.vmsplice([]).done()


# ---------------------------------------------------------------- BufferPool


def test_buffer_pool_alignment_and_exhaustion() -> None:
    with BufferPool(10_000, 3) as pool:
        bufs = [pool.acquire(timeout=0) for _ in range(3)]
        assert all(b is not None for b in bufs)
        assert len({b.index for b in bufs}) == 3  # type: ignore[union-attr]
        for b in bufs:
            assert b is not None
            assert b.address % PAGE == 0 and len(b.memory) == 10_000
            b.memory[:5] = b"hello"
        assert pool.acquire(timeout=0) is None
        assert pool.in_use == 3 and pool.free == 0
        bufs[1].release()  # type: ignore[union-attr]
        with pytest.raises(ValueError):
            bufs[1].memory  # type: ignore[union-attr]  # noqa: B018
        again = pool.acquire(timeout=0)
        assert again is not None and again.index == bufs[1].index  # type: ignore[union-attr]
        for b in bufs:
            b.release()  # type: ignore[union-attr]
        again.release()
    with pytest.raises(ValueError):
        pool.acquire()


def test_buffer_pool_reuse_waits_for_vmsplice_ticket() -> None:
    with BufferPool(4096, 1) as pool, zcio.Pipe() as p:
        buf = pool.acquire(timeout=0)
        assert buf is not None
        buf.memory[:] = b"v" * 4096
        t = p.vmsplice([buf.memory[100:200]])  # a slice counts too
        buf.release()
        assert pool.busy == 1 and pool.free == 0
        assert pool.acquire(timeout=0.01) is None
        assert p.drain() == b"v" * 100
        assert t.done()
        again = pool.acquire(timeout=1)
        assert again is not None and again.index == buf.index
        again.release()


def test_buffer_pool_reuse_waits_for_sender_ticket(make_tcp: Any) -> None:
    client, server = stalled_pair(make_tcp)
    with BufferPool(STALL, 1) as pool, ZeroCopySender(client, policy="always") as z:
        with pool.acquire() as buf:  # type: ignore[union-attr]
            buf.memory[:] = os.urandom(len(buf.memory))
            expected = bytes(buf.memory)
            t = z.sendall(buf)
        assert not t.done()
        assert pool.acquire(timeout=0) is None  # released by us, not by the kernel
        assert drain(server, len(expected)) == expected
        again = pool.acquire(timeout=10)  # polls the ticket while waiting
        assert again is not None and t.done()
        again.release()


def test_buffer_pool_user_holds_buffer_after_ticket() -> None:
    with BufferPool(4096, 1) as pool, zcio.Pipe() as p:
        buf = pool.acquire()
        assert buf is not None
        t = p.vmsplice([buf])
        p.drain()
        assert t.done()
        assert pool.acquire(timeout=0) is None  # the user has not released it
        buf.release()
        buf.release()  # idempotent
        assert pool.free == 1


def test_buffer_pool_huge_pages_and_mlock() -> None:
    with BufferPool(3 << 20, 2, huge_pages=True) as pool:
        buf = pool.acquire()
        assert buf is not None and buf.address % pool.page_size == 0
        buf.memory[-1] = 1
        buf.release()
    try:
        pool = BufferPool(1 << 16, 2, mlock=True)
    except OSError as exc:
        assert "RLIMIT_MEMLOCK" in str(exc)
    else:
        with pool:
            assert pool.locked


_LOW_MEMLOCK_CHILD = r"""
import ctypes, json, os, resource, socket, sys, threading

# Drop CAP_IPC_LOCK (root has it; it exempts a process from RLIMIT_MEMLOCK),
# then make the limit smaller than one send.
libc = ctypes.CDLL(None, use_errno=True)
class Hdr(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
class Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]
hdr, caps = Hdr(0x20080522, 0), (Data * 2)()
if libc.capget(ctypes.byref(hdr), caps) == 0 and caps[0].effective & (1 << 14):
    caps[0].effective &= ~(1 << 14)
    caps[0].permitted &= ~(1 << 14)
    if libc.capset(ctypes.byref(hdr), caps) != 0:
        print(json.dumps({"skip": "cannot drop CAP_IPC_LOCK"})); sys.exit()
soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
limit = 65536 if hard == resource.RLIM_INFINITY else min(65536, hard)
resource.setrlimit(resource.RLIMIT_MEMLOCK, (limit, limit))

import zcio
out = {"limit": limit}
try:
    zcio.BufferPool(1 << 20, 4, mlock=True)
except OSError as e:
    out["mlock_error"] = [e.errno, str(e)]

with socket.create_server(("127.0.0.1", 0)) as listener:
    c = socket.create_connection(listener.getsockname(), timeout=10)
    s, _ = listener.accept()
c.settimeout(None)  # blocking: each plain send takes a whole chunk
got = bytearray()
def read():
    while True:
        b = s.recv(1 << 20)
        if not b:
            return
        got.extend(b)
t = threading.Thread(target=read)
t.start()
data = os.urandom(1 << 20)
for policy in ("always", "auto"):
    with zcio.ZeroCopySender(c, policy=policy) as z:
        tickets = [z.sendall(data) for _ in range(12)]
        out[policy] = dict(z.stats, flushed=z.flush(10), done=all(x.done() for x in tickets))
c.shutdown(socket.SHUT_WR)
t.join(30)
out["exact"] = bytes(got) == data * 24
print(json.dumps(out))
"""


def test_locked_memory_limit_enobufs_and_mlock_error(tmp_path: Any) -> None:
    """RLIMIT_MEMLOCK smaller than a send: ENOBUFS with nothing in flight, so
    the sender copies (and "auto" gives up on MSG_ZEROCOPY); BufferPool's
    mlock error names the limit. Runs in a child that drops CAP_IPC_LOCK."""
    script = tmp_path / "child.py"
    script.write_text(_LOW_MEMLOCK_CHILD)
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=str(tmp_path)
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if "skip" in out:
        pytest.skip(out["skip"])
    if "mlock_error" in out:
        errno_, message = out["mlock_error"]
        assert errno_ in (errno.ENOMEM, errno.EPERM, errno.EAGAIN)
        assert "RLIMIT_MEMLOCK" in message and str(out["limit"]) in message
    else:
        # AddressSanitizer intercepts mlock() and makes it a no-op, so the
        # sanitizer run of the suite cannot see the limit this way.
        assert "asan" in os.environ.get("LD_PRELOAD", ""), out
    for policy in ("always", "auto"):
        stats = out[policy]
        assert stats["flushed"] and stats["done"]
        assert stats["zerocopy_sends"] == 0 and stats["copy_bytes"] == 12 << 20
        assert stats["enobufs_copies"] >= 1
    assert not out["always"]["policy_switched_off"]
    assert out["auto"]["policy_switched_off"] and out["auto"]["switch_reason"] == "enobufs"
    assert out["auto"]["enobufs"] == zc.AUTO_ENOBUFS_LIMIT
    assert out["exact"]
