"""zcio.http's request parsing, fuzzed against h11 (a test-only dependency).

Each example is the bytes a client sends before it closes its side. h11 and
zcio read them; then:

- where both accept a request, they agree on method, target, version and
  fields (repeated fields joined with ", ", as RFC 9110 section 5.3 allows);
- where h11 refuses, zcio refuses too, with a 4xx -- in the parser, and
  from a running server, which answers at once: never 200, never a hang;
- whatever zcio's fast path (and its memo) accepts, the general parser
  reads the same way.

One known, deliberate difference is taken out before h11 sees the bytes:
zcio ignores empty lines before a request line (RFC 9112 section 2.2 says a
server SHOULD ignore at least one), where h11 refuses them.

The budgets are small (a few hundred examples, a few seconds) so that CI
can afford them on every run.
"""
from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any, Iterator, Optional, Tuple, Union

import h11
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from zcio.http import FileServer
from zcio.http._request import HttpError, Limits, Reader, Request, _fast_head, admit, next_request, parse_head

LIMITS = Limits()
WAIT = 10.0

# ------------------------------------------------------------ the two readers

Outcome = Union[Tuple[str, Any], Tuple[str, int]]


def h11_reads(data: bytes) -> Tuple[str, Any]:
    """("request", h11.Request), ("closed", None) or ("refused", status)."""
    conn = h11.Connection(h11.SERVER)
    try:
        conn.receive_data(data.lstrip(b"\r\n"))
        conn.receive_data(b"")  # the client closed its side
        event = conn.next_event()
    except h11.RemoteProtocolError as exc:
        return "refused", exc.error_status_hint
    if isinstance(event, h11.Request):
        return "request", event
    assert isinstance(event, h11.ConnectionClosed), event
    return "closed", None


def zcio_reads(data: bytes, reader: Optional[Reader] = None) -> Tuple[str, Any]:
    """What the server makes of ``data`` then EOF: ("request", Request),
    ("closed", None) or ("refused", status) -- as the server reads a request
    and admits it (a head cut short by EOF gets 400)."""
    try:
        req, _ = reader.next(data) if reader is not None else next_request(data, LIMITS)
        if req is not None:
            admit(req, 64 << 10)  # what the server refuses before it answers
    except HttpError as err:
        return "refused", err.status
    if req is not None:
        return "request", req
    if data.strip(b"\r\n"):
        return "refused", 400
    return "closed", None


def fields_of(event: Any) -> dict:
    """h11's fields as zcio keeps them: names in lower case, repeats joined."""
    out: dict = {}
    for name, value in event.headers:
        key, text = name.decode("ascii"), value.decode("latin-1")
        out[key] = text if key not in out else out[key] + ", " + text
    return out


def check(data: bytes) -> Tuple[str, Any]:
    theirs, mine = h11_reads(data), zcio_reads(data)
    if theirs[0] == "request" and mine[0] == "request":
        event, req = theirs[1], mine[1]
        assert req.method.encode() == event.method
        assert req.target == event.target
        assert f"1.{req.minor}".encode() == event.http_version
        assert req.headers == fields_of(event)
    elif theirs[0] == "refused":
        assert mine[0] == "refused" and 400 <= mine[1] < 500, (data, theirs, mine)
    elif theirs[0] == "closed":
        assert mine[0] == "closed", (data, mine)
    return mine


# ------------------------------------------------------------ the bytes

def mostly(valid: Any, odd: Any) -> Any:
    """``valid`` four times in five, else ``odd``."""
    return st.integers(0, 4).flatmap(lambda k: odd if k == 0 else valid)


methods = mostly(st.sampled_from([b"GET", b"HEAD", b"POST"]),
                 st.sampled_from([b"get", b"G(T", b"", b"GET ", b"\x16\x03\x01", b"OPTIONS"]))
targets = mostly(
    st.sampled_from([b"/", b"/inside.txt", b"/a/x?y=1", b"/a//b/", b"http://h/a?b", b"/%2e%2e/x", b"/.hidden"]),
    st.one_of(st.sampled_from([b"*", b"/a b", b"", b"/\xc3\xa9", b"/#f", b"/a/../b"]),
              st.binary(max_size=8).map(lambda b: b"/" + b)),
)
versions = mostly(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]),
                  st.sampled_from([b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.10", b"http/1.1", b"HTTP/1", b"HTTP/1.1 ",
                                   b""]))
names = mostly(
    st.sampled_from([b"Host", b"host", b"Content-Length", b"Connection", b"Range", b"If-Match", b"X-A", b"x-a",
                     b"Accept", b"Transfer-Encoding"]),
    st.one_of(st.sampled_from([b"Bad Name", b"", b"A:B", b"\xff"]), st.binary(max_size=5)),
)
values = mostly(
    st.sampled_from([b"x", b" a ", b"", b"5", b"0", b"5, 5", b"chunked", b"close", b"keep-alive", b"a\tb",
                     b"bytes=0-1", b"*", b'"e"', b"\xff\xfe"]),
    st.one_of(st.sampled_from([b"\x01", b"\x7f", b"a\rb", b"a\nb", b" ", b"\t"]), st.binary(max_size=6)),
)
seps = mostly(st.sampled_from([b": ", b":", b":\t"]), st.sampled_from([b" : ", b"", b" :"]))
eols = mostly(st.just(b"\r\n"), st.sampled_from([b"\n", b"\r", b"\n\r"]))


@st.composite
def heads(draw: Any) -> bytes:
    """Request heads near the grammar, each part now and then wrong."""
    eol = draw(eols)
    out = draw(mostly(st.just(b""), st.sampled_from([b"\r\n", b"\n", b"\r\n\r\n"])))
    out += draw(methods) + b" " + draw(targets) + b" " + draw(versions) + eol
    if draw(mostly(st.just(True), st.just(False))):
        out += b"Host: h" + eol
    for name, sep, value in draw(st.lists(st.tuples(names, seps, values), max_size=4)):
        if draw(st.integers(0, 19)) == 0:
            out += b" folded" + eol  # obs-fold
        out += name + sep + value + draw(eols)
    out += draw(mostly(st.just(eol), st.sampled_from([b"", b"\r\n\r\n"])))
    return out + draw(st.sampled_from([b"", b"", b"hello", b"GET / HTTP/1.1\r\n"]))


requests = st.one_of(heads(), st.binary(max_size=64))

# ------------------------------------------------------------ parser level


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests)
@example(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
@example(b"GET / HTTP/1.1\nHost: x\n\n")
@example(b"GET /a HTTP/1.0\r\nX: 1\r\nx: 2\r\n\r\n")
@example(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
@example(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
@example(b"GET / HTTP/2.0\r\nHost: a\r\nHost: b\r\n\r\n")
@example(b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n")
def test_zcio_reads_heads_as_h11_does_or_refuses_them(data: bytes) -> None:
    check(data)


def test_the_strategy_reaches_both_verdicts() -> None:
    """Not a vacuous property: near-grammar heads are accepted by both
    readers in some examples and refused by h11 in others."""
    seen = set()

    @settings(max_examples=300, deadline=None, database=None)
    @given(heads())
    def sample(data: bytes) -> None:
        seen.add((h11_reads(data)[0], zcio_reads(data)[0]))

    sample()
    assert ("request", "request") in seen and ("refused", "refused") in seen


@settings(max_examples=400, deadline=None)
@given(requests)
def test_the_fast_path_reads_as_the_general_parser(data: bytes) -> None:
    reader = Reader(LIMITS)
    first = zcio_reads(data, reader)
    zcio_reads(data, reader)  # a head is remembered when it is seen again...
    again = zcio_reads(data, reader)  # ...and taken from the memo from then on
    end = data.find(b"\r\n\r\n")
    fast = _fast_head(data[:end], LIMITS) if end > 0 else None
    general = zcio_reads(data)
    for got in (first, again):
        assert got[0] == general[0]
        if got[0] == "request":
            assert same_request(got[1], general[1])
        else:
            assert got == general
    if fast is not None:
        slow = parse_head(data[:end], LIMITS)
        assert same_request(fast, slow)


def same_request(a: Request, b: Request) -> bool:
    return (a.method, a.target, a.minor, a.headers, a.line) == (b.method, b.target, b.minor, b.headers, b.line)


# ------------------------------------------------------------ server level


@pytest.fixture(scope="module")
def server(tmp_path_factory: Any) -> Iterator[int]:
    root = tmp_path_factory.mktemp("fuzzroot")
    (root / "inside.txt").write_bytes(b"inside\n")
    (root / "a").mkdir()
    (root / "a" / "x").write_bytes(b"a/x\n")
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict = {}

    def run() -> None:
        async def main() -> None:
            srv = FileServer(root, port=0, access_log=False, header_timeout=WAIT * 6)
            await srv.start()
            holder["server"] = srv
            started.set()
            await srv.wait_closed()

        loop.run_until_complete(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(WAIT)
    srv = holder["server"]
    yield srv.port
    asyncio.run_coroutine_threadsafe(srv.close(), loop).result(WAIT)
    thread.join(WAIT)
    loop.close()


def exchange(port: int, data: bytes) -> bytes:
    """Send ``data``, close our side, read until the server closes. A hang
    would end in socket.timeout (a test failure), far below the server's
    header timeout."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(requests)
@example(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32))
@example(b"GET /inside.txt HTTP/1.1\r\nHost: x\r\n")
def test_the_server_answers_what_h11_refuses_with_4xx_at_once(server: int, data: bytes) -> None:
    theirs = h11_reads(data)
    out = exchange(server, data)
    if theirs[0] == "refused":
        assert out[:10] == b"HTTP/1.1 4", (data, out[:80])
    elif theirs[0] == "closed":
        assert out == b""
    else:
        assert out.startswith(b"HTTP/1.1 "), (data, out[:80])
