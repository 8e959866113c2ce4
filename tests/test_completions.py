"""Tests for MSG_ZEROCOPY sends and completion reaping in zcio.lowlevel.

send_zerocopy over TCP (127.0.0.1, ::1), UDP and AF_UNIX; read_completions
against the kernel's real error queue (loopback: every completion reports
``copied``); parse_completions against hand-built control buffers (struct
cmsghdr + struct sock_extended_err, laid out with struct and
socket.CMSG_LEN/CMSG_SPACE so the layout follows this architecture), against
arbitrary bytes, and against a pure-Python model of the same walk.

Loopback only, bounded, sleep-free: waits are poll() calls with a deadline
that only a failing test reaches.
"""
from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import os
import select
import socket
import struct
import termios
import threading
import time
from typing import Any, Iterator, List, Optional, Set, Tuple

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from _net import needs_ipv6
import zcio
from zcio import lowlevel
from zcio.lowlevel import Completion, parse_completions

WATCHDOG = 10.0  # seconds; reached only when something is broken
# No shrinking for the network properties: a failing example there typically
# waits out WATCHDOG for a completion that never comes, and shrinking would
# replay it dozens of times. The first failing example is reported as is.
PROPERTY = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
)
PARSER = settings(max_examples=100, deadline=None, derandomize=True, database=None)


ADDRS = {"4": (socket.AF_INET, "127.0.0.1"), "6": (socket.AF_INET6, "::1")}


@contextlib.contextmanager
def tcp(version: str, zerocopy: bool = True) -> Iterator[Tuple[socket.socket, socket.socket]]:
    """(sender, receiver): a blocking TCP connection over loopback."""
    family, host = ADDRS[version]
    with socket.socket(family, socket.SOCK_STREAM) as listener:
        listener.bind((host, 0))
        listener.listen(1)
        sender = socket.socket(family, socket.SOCK_STREAM)
        try:
            sender.connect(listener.getsockname()[:2])
            receiver, _ = listener.accept()
        except BaseException:
            sender.close()
            raise
    try:
        if zerocopy:
            sender.setsockopt(socket.SOL_SOCKET, zcio.SO_ZEROCOPY, 1)
        receiver.settimeout(WATCHDOG)
        yield sender, receiver
    finally:
        sender.close()
        receiver.close()


SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


@contextlib.contextmanager
def udp(version: str, zerocopy: bool = True) -> Iterator[Tuple[socket.socket, socket.socket]]:
    family, host = ADDRS[version]
    sender = socket.socket(family, socket.SOCK_DGRAM)
    receiver = socket.socket(family, socket.SOCK_DGRAM)
    try:
        receiver.bind((host, 0))
        receiver.settimeout(WATCHDOG)
        try:  # room for every datagram a test sends before reading (root only)
            receiver.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)
        except OSError:
            pass
        sender.connect(receiver.getsockname()[:2])
        if zerocopy:
            sender.setsockopt(socket.SOL_SOCKET, zcio.SO_ZEROCOPY, 1)
        yield sender, receiver
    finally:
        sender.close()
        receiver.close()


def recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n > 0:
        chunk = sock.recv(min(n, 1 << 20))
        assert chunk, f"EOF with {n} bytes still expected"
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def ids_of(c: Completion) -> range:
    """The send ids a completion covers; only for ranges that do not wrap."""
    assert c.first <= c.last, c
    return range(c.first, c.last + 1)


def span(c: Completion) -> int:
    """How many ids an inclusive, possibly wrapped, 32-bit range covers."""
    return (c.last - c.first) % 2**32 + 1


def reap(sock: socket.socket, expected: Set[int]) -> List[Completion]:
    """read_completions until they cover ``expected``: each id once, no other."""
    poller = select.poll()
    poller.register(sock, select.POLLERR)
    deadline = time.monotonic() + WATCHDOG
    seen: Set[int] = set()
    got: List[Completion] = []
    while seen != expected:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"completions never covered {sorted(expected - seen)}; got {got}"
        poller.poll(remaining * 1000)
        for c in zcio.read_completions(sock):
            assert isinstance(c, Completion)
            ids = set(ids_of(c))
            assert not ids & seen, f"{c} repeats ids already completed"
            assert ids <= expected, f"{c} completes sends that never happened"
            seen |= ids
            got.append(c)
    return got


def unacked(sock: socket.socket) -> int:
    """TCP bytes sent but not yet acknowledged (SIOCOUTQ)."""
    return struct.unpack("i", fcntl.ioctl(sock, termios.TIOCOUTQ, b"\0\0\0\0"))[0]


def error_queue_is_empty(sock: socket.socket) -> bool:
    try:
        sock.recvmsg(1, 1024, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True
    return False


as_buffer = {
    "bytes": bytes,
    "bytearray": bytearray,
    "memoryview": lambda b: memoryview(b"<" + b + b">")[1:-1],
    "array": lambda b: array.array("B", b),
}


# ----------------------------------------------------------- send_zerocopy


@pytest.mark.parametrize("version", ["4", pytest.param("6", marks=needs_ipv6)])
@PROPERTY
@given(
    sizes=st.lists(st.integers(1, 65536), min_size=1, max_size=24),
    kinds=st.lists(st.sampled_from(sorted(as_buffer)), min_size=24, max_size=24),
)
def test_tcp_zerocopy_sends_and_completions(version: str, sizes: List[int], kinds: List[str]) -> None:
    """N sends of varying sizes: the receiver gets every byte in order, and
    completions cover exactly ids 0..N-1, each reporting a copy (loopback)."""
    payloads = [os.urandom(size) for size in sizes]
    # The low-level contract: the memory must stay alive and unchanged until
    # a completion covers its send. (Converting inline, as_buffer[kind](p)
    # in the call, frees a temporary the kernel may still be reading.)
    buffers = [as_buffer[kind](payload) for payload, kind in zip(payloads, kinds)]
    with tcp(version) as (sender, receiver):
        received: List[bytes] = []
        reader = threading.Thread(target=lambda: received.append(recv_exact(receiver, sum(sizes))))
        reader.start()  # drains concurrently, so sends never wait on a full buffer
        try:
            for buffer, payload in zip(buffers, payloads):
                assert zcio.send_zerocopy(sender, buffer) == len(payload)
        finally:
            reader.join(WATCHDOG)
        assert received == [b"".join(payloads)]
        completions = reap(sender, set(range(len(sizes))))
        del buffers  # now the kernel is done with them
        assert all(c.copied is True for c in completions), completions
        assert sum(map(span, completions)) == len(sizes)
        assert zcio.read_completions(sender) == []


@pytest.mark.parametrize("version", ["4", pytest.param("6", marks=needs_ipv6)])
@PROPERTY
@given(sizes=st.lists(st.integers(1, 4096), min_size=1, max_size=24))
def test_udp_zerocopy_sends_and_completions(version: str, sizes: List[int]) -> None:
    """One datagram per send, one id per send."""
    payloads = [os.urandom(size) for size in sizes]
    with udp(version) as (sender, receiver):
        for payload in payloads:
            assert zcio.send_zerocopy(sender, payload) == len(payload)
        assert [receiver.recv(65536) for _ in payloads] == payloads
        completions = reap(sender, set(range(len(sizes))))
        assert all(c.copied is True for c in completions)
        assert error_queue_is_empty(sender)


def test_send_zerocopy_passes_msg_zerocopy() -> None:
    """Only sends made with MSG_ZEROCOPY take an id: a plain send() between
    two send_zerocopy() calls does not."""
    with tcp("4") as (sender, receiver):
        second = bytearray(b"second")  # alive until its completion
        assert zcio.send_zerocopy(sender, b"first") == 5
        assert sender.send(b" plain ") == 7
        assert zcio.send_zerocopy(sender, second) == 6
        assert recv_exact(receiver, 18) == b"first plain second"
        got = reap(sender, {0, 1})
        assert [i for c in got for i in ids_of(c)] == [0, 1]


def test_send_zerocopy_empty_send() -> None:
    """An empty send returns 0 and, since it references no memory, takes no id."""
    with tcp("4") as (sender, receiver):
        assert zcio.send_zerocopy(sender, b"") == 0
        assert zcio.send_zerocopy(sender, b"x") == 1
        assert recv_exact(receiver, 1) == b"x"
        assert reap(sender, {0}) == [Completion(0, 0, True)]


@pytest.mark.parametrize("version", ["4", pytest.param("6", marks=needs_ipv6)])
def test_send_zerocopy_without_so_zerocopy_still_sends(version: str) -> None:
    """Without SO_ZEROCOPY the kernel ignores MSG_ZEROCOPY: the bytes go out
    as a normal copy and no completion is ever queued."""
    payloads = [b"a" * 100, b"b" * 5000, b"c" * 70000]
    with tcp(version, zerocopy=False) as (sender, receiver):
        for payload in payloads:
            assert zcio.send_zerocopy(sender, payload) == len(payload)
        assert recv_exact(receiver, 75100) == b"".join(payloads)
        # Once every byte is acknowledged, every skb that could have carried a
        # notification is freed: if one were coming, it would be queued now.
        deadline = time.monotonic() + WATCHDOG
        while unacked(sender):
            assert time.monotonic() < deadline, "the data was never acknowledged"
        assert select.select([], [], [sender], 0)[2] == []  # no POLLPRI/POLLERR
        assert zcio.read_completions(sender) == []
        assert error_queue_is_empty(sender)
    with udp("4", zerocopy=False) as (sender, receiver):
        assert zcio.send_zerocopy(sender, b"datagram") == 8
        assert receiver.recv(100) == b"datagram"
        assert zcio.read_completions(sender) == []


def test_send_zerocopy_on_unix_socket_sends_bytes(socketpair: Any) -> None:
    """AF_UNIX has no SO_ZEROCOPY; the flag is ignored and the bytes arrive."""
    a, b = socketpair()
    with pytest.raises(OSError) as info:
        a.setsockopt(socket.SOL_SOCKET, zcio.SO_ZEROCOPY, 1)
    assert info.value.errno == errno.EOPNOTSUPP
    for kind, convert in sorted(as_buffer.items()):
        assert zcio.send_zerocopy(a, convert(kind.encode())) == len(kind)
        assert recv_exact(b, len(kind)) == kind.encode()
    ints = array.array("i", [1, 2, 3])
    assert zcio.send_zerocopy(a, ints) == 3 * ints.itemsize  # bytes, not items
    assert recv_exact(b, 3 * ints.itemsize) == ints.tobytes()


def test_send_zerocopy_does_not_keep_a_pin(socketpair: Any) -> None:
    a, b = socketpair()
    buf = bytearray(b"resizable")
    assert zcio.send_zerocopy(a, buf) == 9
    buf.extend(b"!")  # BufferError if an export were still held
    assert recv_exact(b, 9) == b"resizable"


def test_send_zerocopy_argument_errors(socketpair: Any, pipe: Any) -> None:
    a, _ = socketpair()
    r, w = pipe()
    with pytest.raises(TypeError):
        zcio.send_zerocopy(a, "text is not bytes")
    with pytest.raises(TypeError):
        zcio.send_zerocopy(a, 12345)
    with pytest.raises(ValueError):
        zcio.send_zerocopy(a, b"x", -1)
    with pytest.raises(OSError) as info:
        zcio.send_zerocopy(w, b"x")
    assert info.value.errno == errno.ENOTSOCK
    dead = socket.socket()
    dead.close()
    with pytest.raises(OSError) as info:
        zcio.send_zerocopy(dead, b"x")
    assert info.value.errno == errno.EBADF


# -------------------------------------------------------- read_completions


def test_read_completions_empty_queue() -> None:
    with tcp("4") as (sender, receiver):
        assert zcio.read_completions(sender) == []
        assert zcio.read_completions(receiver) == []
    with socket.socket() as fresh:  # not even connected
        assert zcio.read_completions(fresh) == []
    with udp("4") as (sender, _):
        assert zcio.read_completions(sender) == []
        assert zcio.read_completions(sender.fileno()) == []


def test_read_completions_bad_fds(pipe: Any, tmp_path: Any) -> None:
    r, w = pipe()
    dead = socket.socket()
    dead.close()
    closed_r, closed_w = os.pipe()
    os.close(closed_r)
    os.close(closed_w)
    for fd in (dead, -1, closed_r):
        with pytest.raises(OSError) as info:
            zcio.read_completions(fd)
        assert info.value.errno == errno.EBADF
    path = tmp_path / "f"
    path.write_bytes(b"x")
    with open(path, "rb") as f:
        for fd in (r, w, f):
            with pytest.raises(OSError) as info:
                zcio.read_completions(fd)
            assert info.value.errno == errno.ENOTSOCK
    for bad in (1.5, "3", None):
        with pytest.raises(TypeError):
            zcio.read_completions(bad)


@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_SEQPACKET])
def test_read_completions_on_unix_socket_with_data(kind: int) -> None:
    """AF_UNIX has no error queue and ignores MSG_ERRQUEUE, returning ordinary
    data instead: read_completions must say so, not spin forever (it once
    did, in C with the GIL released) and not return junk."""
    a, b = socket.socketpair(socket.AF_UNIX, kind)
    outcome: List[Any] = []

    def call() -> None:
        try:
            outcome.append(zcio.read_completions(a))
        except OSError as exc:
            outcome.append(exc)

    try:
        assert zcio.read_completions(a) == []  # nothing there: like an empty queue
        b.send(b"precious")
        thread = threading.Thread(target=call, daemon=True)
        thread.start()
        thread.join(WATCHDOG)
        assert not thread.is_alive(), "read_completions spins on an AF_UNIX socket"
        assert len(outcome) == 1 and isinstance(outcome[0], OSError), outcome
        assert outcome[0].errno == errno.EOPNOTSUPP
        if kind == socket.SOCK_STREAM:  # a stream is not consumed by the attempt
            assert a.recv(100) == b"precious"
    finally:
        a.close()
        b.close()


SO_TIMESTAMPING = getattr(socket, "SO_TIMESTAMPING", 37)  # asm-generic value
SOF_TIMESTAMPING_TX_SOFTWARE = 1 << 1
SOF_TIMESTAMPING_SOFTWARE = 1 << 4
SOF_TIMESTAMPING_OPT_TSONLY = 1 << 11


@contextlib.contextmanager
def udp_with_tx_timestamps() -> Iterator[Tuple[socket.socket, socket.socket]]:
    """A zero-copy UDP sender whose error queue also gets a TX timestamp per
    send: foreign messages that read_completions must skip, and that keep the
    kernel from merging consecutive notifications into one range."""
    with udp("4") as (sender, receiver):
        try:
            sender.setsockopt(
                socket.SOL_SOCKET,
                SO_TIMESTAMPING,
                SOF_TIMESTAMPING_TX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE | SOF_TIMESTAMPING_OPT_TSONLY,
            )
        except OSError as exc:  # pragma: no cover - depends on the platform
            pytest.skip(f"SO_TIMESTAMPING unavailable here: {exc}")
        yield sender, receiver


def test_read_completions_skips_foreign_messages_and_drains_in_batches() -> None:
    """More completions than one C batch (64), interleaved with timestamp
    messages: one call returns every id, and the queue is left empty."""
    n = 100
    if (zcio.features()["optmem_max"] or 0) < 65536:  # pragma: no cover
        pytest.skip("net.core.optmem_max is too small to hold 100 notifications")
    with udp_with_tx_timestamps() as (sender, receiver):
        payloads = [bytes([i]) * (i + 1) for i in range(n)]  # alive until completed
        for payload in payloads:
            assert zcio.send_zerocopy(sender, payload) == len(payload)
        for i in range(n):
            assert receiver.recv(1000) == bytes([i]) * (i + 1)
        poller = select.poll()
        poller.register(sender, select.POLLERR)
        assert poller.poll(WATCHDOG * 1000)
        got = zcio.read_completions(sender)
        ids = [i for c in got for i in ids_of(c)]
        assert sorted(ids) == list(range(n)), got
        assert all(c.copied for c in got)
        assert error_queue_is_empty(sender)  # the timestamps were consumed too
        assert zcio.read_completions(sender) == []


def test_read_completions_batch_boundary(monkeypatch: Any) -> None:
    """The Python loop around the C batch, with a batch of 3."""
    monkeypatch.setattr(lowlevel, "_BATCH", 3)
    with udp_with_tx_timestamps() as (sender, receiver):
        for _ in range(8):
            zcio.send_zerocopy(sender, b"x")
        for _ in range(8):
            assert receiver.recv(10) == b"x"
        assert sorted(i for c in reap(sender, set(range(8))) for i in ids_of(c)) == list(range(8))
        assert error_queue_is_empty(sender)


# ------------------------------------------------------ parse_completions

# struct cmsghdr { size_t cmsg_len; int cmsg_level; int cmsg_type; }, its data
# at CMSG_LEN(0), each message padded to CMSG_SPACE; struct sock_extended_err
# { u32 ee_errno; u8 ee_origin, ee_type, ee_code, ee_pad; u32 ee_info, ee_data; }
CMSGHDR = struct.Struct("@Nii")
DATA_AT = socket.CMSG_LEN(0)
EE = struct.Struct("=IBBBBII")
NEED = socket.CMSG_LEN(EE.size)
ALIGN = struct.calcsize("@N")  # CMSG_ALIGN rounds to sizeof(size_t) (Linux)
SOL_IP = getattr(socket, "SOL_IP", 0)
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
SOL_IPV6 = getattr(socket, "SOL_IPV6", socket.IPPROTO_IPV6)
IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
RECVERR = [(SOL_IP, IP_RECVERR), (SOL_IPV6, IPV6_RECVERR)]
ORIGIN_LOCAL, ORIGIN_ICMP, ORIGIN_ICMP6, ORIGIN_TIMESTAMPING = 1, 2, 3, 4
ORIGIN_ZEROCOPY = 5


def test_layout_constants_agree_with_the_c_core() -> None:
    lib = lowlevel.lib
    assert (SOL_IP, IP_RECVERR) == (lib.SOL_IP, lib.IP_RECVERR) == (0, 11)
    assert (SOL_IPV6, IPV6_RECVERR) == (lib.SOL_IPV6, lib.IPV6_RECVERR) == (41, 25)
    assert ORIGIN_ZEROCOPY == zcio.SO_EE_ORIGIN_ZEROCOPY
    assert EE.size == 16
    assert DATA_AT == CMSGHDR.size + (-CMSGHDR.size % ALIGN)


def cmsg(level: int, type_: int, data: bytes, pad: bool = True) -> bytes:
    header = CMSGHDR.pack(socket.CMSG_LEN(len(data)), level, type_).ljust(DATA_AT, b"\0")
    body = header + data
    return body.ljust(socket.CMSG_SPACE(len(data)), b"\0") if pad else body


def ee(err: int = 0, origin: int = ORIGIN_ZEROCOPY, type_: int = 0, code: int = 0, info: int = 0, data: int = 0) -> bytes:
    return EE.pack(err, origin, type_, code, 0, info, data)


def zc(first: int, last: int, code: int = 0, level: int = SOL_IP, type_: int = IP_RECVERR, extra: bytes = b"") -> bytes:
    """A zero-copy notification as the kernel queues it (``extra``: the
    offender address that may follow sock_extended_err)."""
    return cmsg(level, type_, ee(code=code, info=first, data=last) + extra)


def reference_parse(buf: bytes) -> List[Completion]:
    """The walk parse_completions documents, in Python."""
    out: List[Completion] = []
    off = 0
    while len(buf) - off >= CMSGHDR.size:
        length, level, type_ = CMSGHDR.unpack_from(buf, off)
        if length < CMSGHDR.size or length > len(buf) - off:
            break  # malformed, or cut short (MSG_CTRUNC)
        if length >= NEED and (level, type_) in RECVERR:
            err, origin, _, code, _, info, data = EE.unpack_from(buf, off + DATA_AT)
            if err == 0 and origin == ORIGIN_ZEROCOPY:
                out.append(Completion(info, data, bool(code & zcio.SO_EE_CODE_ZEROCOPY_COPIED)))
        step = (length + ALIGN - 1) & -ALIGN
        if step >= len(buf) - off:
            break
        off += step
    return out


def test_parse_single_notifications() -> None:
    assert parse_completions(zc(0, 0)) == [Completion(0, 0, False)]
    assert parse_completions(zc(3, 9, code=1)) == [Completion(3, 9, True)]
    assert parse_completions(zc(5, 5, code=0xFE)) == [Completion(5, 5, False)]
    assert parse_completions(zc(5, 5, code=0xFF)) == [Completion(5, 5, True)]
    v6 = zc(7, 8, code=1, level=SOL_IPV6, type_=IPV6_RECVERR, extra=bytes(28))
    assert parse_completions(v6) == [Completion(7, 8, True)]
    # Wrapped: the 32-bit counter went past 2**32 - 1.
    wrapped = parse_completions(zc(0xFFFFFFF0, 5, code=1))
    assert wrapped == [Completion(0xFFFFFFF0, 5, True)]
    assert span(wrapped[0]) == 22
    assert parse_completions(zc(0xFFFFFFFF, 0xFFFFFFFF)) == [Completion(2**32 - 1, 2**32 - 1, False)]
    c = parse_completions(zc(1, 2, code=1))[0]
    assert type(c.first) is int and type(c.last) is int and type(c.copied) is bool


def test_parse_skips_everything_else() -> None:
    skipped = [
        ee(origin=ORIGIN_LOCAL),
        ee(origin=ORIGIN_ICMP, err=errno.EHOSTUNREACH),
        ee(origin=ORIGIN_ICMP6, err=errno.ENETUNREACH),
        ee(origin=ORIGIN_TIMESTAMPING, err=errno.ENOMSG, info=4, data=9),
        ee(origin=ORIGIN_ZEROCOPY, err=errno.ENOBUFS, info=1, data=2),  # an error, not a completion
    ]
    for data in skipped:
        for level, type_ in RECVERR:
            assert parse_completions(cmsg(level, type_, data)) == []
    # A zero-copy payload under another level/type is not a notification.
    for level, type_ in [(SOL_IP, 12), (SOL_IPV6, 11), (1, 37), (1, 29), (SOL_IP, 2), (99, IP_RECVERR)]:
        assert parse_completions(cmsg(level, type_, ee(info=1, data=2))) == []
    # Too short to hold sock_extended_err.
    assert parse_completions(cmsg(SOL_IP, IP_RECVERR, ee(info=1, data=2)[:12])) == []
    assert parse_completions(b"") == []
    assert parse_completions(bytes(CMSGHDR.size - 1)) == []


def test_parse_mixed_buffer() -> None:
    buf = (
        cmsg(1, 37, bytes(48))  # SCM_TIMESTAMPING
        + zc(0, 4, code=1)
        + cmsg(SOL_IP, IP_RECVERR, ee(origin=ORIGIN_TIMESTAMPING, err=errno.ENOMSG))
        + zc(5, 5, level=SOL_IPV6, type_=IPV6_RECVERR, extra=bytes(28))
        + cmsg(SOL_IP, 8, bytes(12))  # IP_PKTINFO
        + zc(0xFFFFFFFE, 1, code=1)
    )
    expected = [Completion(0, 4, True), Completion(5, 5, False), Completion(0xFFFFFFFE, 1, True)]
    assert parse_completions(buf) == expected
    # Without padding after the final message, too.
    assert parse_completions(buf + cmsg(SOL_IP, IP_RECVERR, ee(info=9, data=9), pad=False)) == expected + [
        Completion(9, 9, False)
    ]
    # A truncated final message is ignored, wherever the cut falls.
    last = zc(100, 200, code=1)
    for cut in range(socket.CMSG_LEN(EE.size)):
        assert parse_completions(buf + last[:cut]) == expected, cut
    # A malformed length ends the walk.
    bad = CMSGHDR.pack(CMSGHDR.size - 1, SOL_IP, IP_RECVERR).ljust(DATA_AT, b"\0")
    assert parse_completions(zc(1, 1) + bad + zc(2, 2)) == [Completion(1, 1, False)]
    huge = CMSGHDR.pack(2**31, SOL_IP, IP_RECVERR).ljust(DATA_AT, b"\0") + ee(info=3, data=3)
    assert parse_completions(zc(1, 1) + huge + zc(2, 2)) == [Completion(1, 1, False)]


def test_parse_many_and_any_buffer_type() -> None:
    buf = b"".join(zc(i, i, code=i & 1) for i in range(300))
    expected = [Completion(i, i, bool(i & 1)) for i in range(300)]
    assert parse_completions(buf) == expected
    assert parse_completions(bytearray(buf)) == expected
    assert parse_completions(memoryview(buf)) == expected
    assert parse_completions(array.array("B", buf)) == expected
    # Unaligned in memory: the parser may not assume alignment.
    for shift in range(1, 8):
        assert parse_completions(memoryview(bytes(shift) + buf)[shift:]) == expected
    with pytest.raises(TypeError):
        parse_completions("not bytes")


# Strategies for structured control buffers.
u32 = st.integers(0, 2**32 - 1)


@st.composite
def messages(draw: Any) -> Tuple[bytes, Optional[Completion]]:
    """One control message and the completion it stands for (or None)."""
    kind = draw(st.sampled_from(["zc", "zc", "zc", "other-origin", "errno", "other-level", "short"]))
    level, type_ = draw(st.sampled_from(RECVERR))
    first, last, code = draw(u32), draw(u32), draw(st.integers(0, 255))
    if kind == "zc":
        extra = draw(st.sampled_from([b"", bytes(16), bytes(28), b"\x0a\x00" + bytes(26)]))
        return zc(first, last, code, level, type_, extra), Completion(first, last, bool(code & 1))
    if kind == "other-origin":
        origin = draw(st.integers(0, 255).filter(lambda o: o != ORIGIN_ZEROCOPY))
        return cmsg(level, type_, ee(origin=origin, code=code, info=first, data=last)), None
    if kind == "errno":
        err = draw(st.integers(1, 2**32 - 1))
        return cmsg(level, type_, ee(err=err, code=code, info=first, data=last)), None
    if kind == "other-level":
        level, type_ = draw(
            st.tuples(st.integers(-(2**31), 2**31 - 1), st.integers(-(2**31), 2**31 - 1)).filter(
                lambda lt: lt not in RECVERR
            )
        )
        data = draw(st.sampled_from([ee(info=first, data=last), b""])) + draw(st.binary(max_size=40))
        return cmsg(level, type_, data), None
    return cmsg(level, type_, ee(info=first, data=last)[: draw(st.integers(0, EE.size - 1))]), None


@st.composite
def control_buffers(draw: Any) -> Tuple[bytes, List[Completion]]:
    items = draw(st.lists(messages(), max_size=10))
    buf = b"".join(data for data, _ in items)
    expected = [c for _, c in items if c is not None]
    ending = draw(st.sampled_from(["padded", "unpadded", "truncated"]))
    if items and ending == "unpadded":
        data, c = items[-1]
        length = CMSGHDR.unpack_from(data)[0]
        buf = buf[: len(buf) - len(data) + length]
    elif ending == "truncated":
        data, _ = draw(messages())
        length = CMSGHDR.unpack_from(data)[0]
        buf += data[: draw(st.integers(0, length - 1))]
    return buf, expected


@PARSER
@given(case=control_buffers())
def test_parse_structured_buffers(case: Tuple[bytes, List[Completion]]) -> None:
    buf, expected = case
    assert parse_completions(buf) == expected
    assert reference_parse(buf) == expected
    assert parse_completions(memoryview(b"\0" + buf)[1:]) == expected  # unaligned


@PARSER
@given(data=st.binary(max_size=512))
def test_parse_arbitrary_bytes(data: bytes) -> None:
    result = parse_completions(data)
    assert isinstance(result, list)
    for c in result:
        assert isinstance(c, Completion)
        assert 0 <= c.first < 2**32 and 0 <= c.last < 2**32 and isinstance(c.copied, bool)
    assert result == reference_parse(data)


@PARSER
@given(case=control_buffers(), flips=st.lists(st.tuples(st.integers(0, 2**16), st.integers(0, 255)), max_size=6))
def test_parse_corrupted_buffers(case: Tuple[bytes, List[Completion]], flips: List[Tuple[int, int]]) -> None:
    buf = bytearray(case[0])
    for at, value in flips:
        if buf:
            buf[at % len(buf)] = value
    assert parse_completions(bytes(buf)) == reference_parse(bytes(buf))


@pytest.mark.parametrize("version", ["4", pytest.param("6", marks=needs_ipv6)])
def test_parse_kernel_control_messages(version: str) -> None:
    """Control messages straight from the kernel (read with recvmsg and laid
    out again as the raw buffer) parse to the completions of the real sends."""
    family, _ = ADDRS[version]
    level, type_ = RECVERR[0] if family == socket.AF_INET else RECVERR[1]
    with tcp(version) as (sender, receiver):
        payloads = [b"k" * (1000 * (i + 1)) for i in range(3)]  # alive until completed
        for payload in payloads:
            assert zcio.send_zerocopy(sender, payload) == len(payload)
        assert recv_exact(receiver, 6000) == b"k" * 6000
        poller = select.poll()
        poller.register(sender, select.POLLERR)
        deadline = time.monotonic() + WATCHDOG
        seen: List[int] = []
        while sorted(seen) != [0, 1, 2]:
            assert time.monotonic() < deadline, seen
            if not poller.poll(WATCHDOG * 1000):
                continue
            _, ancdata, flags, _ = sender.recvmsg(0, 256, socket.MSG_ERRQUEUE)
            assert flags & socket.MSG_ERRQUEUE and not flags & socket.MSG_CTRUNC
            assert [(lv, tp) for lv, tp, _ in ancdata] == [(level, type_)]
            raw = b"".join(cmsg(lv, tp, data) for lv, tp, data in ancdata)
            parsed = parse_completions(raw)
            assert parsed == reference_parse(raw) and len(parsed) == 1
            assert parsed[0].copied is True
            seen.extend(ids_of(parsed[0]))
