"""zcio.serve: the static file server, in-process on an ephemeral port.

Each server runs in a background thread with its own event loop -- the stdlib
one or uvloop (every test that takes ``start`` runs on both) -- while the test
talks to it over loopback with http.client, or with raw sockets for what a
well-behaved client would never send.
"""
from __future__ import annotations

import asyncio
import email.utils
import http.client
import logging
import errno
import os
import re
import select
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zcio.http import FileServer, serve
from zcio.http import _request, _response
from zcio.http import _resources as resources

LOOPS = ["asyncio"]
try:
    import uvloop

    LOOPS.append("uvloop")
except ImportError:  # pragma: no cover - uvloop is in the test extra
    uvloop = None

WAIT = 10.0  # seconds: the bound on any single wait in these tests
SECRET = b"top-secret-marker-7f3a"


class Server:
    """A FileServer on port 0 in a thread of its own, with its own loop."""

    def __init__(self, root: Path, kind: str, **options: Any) -> None:
        self.root = root
        self.kind = kind
        self.port = 0
        self.server: Optional[FileServer] = None
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self._error: Optional[BaseException] = None
        self._started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(options,), daemon=True)
        self.thread.start()
        assert self._started.wait(WAIT), "server did not start"
        if self._error is not None:
            self.thread.join(WAIT)
            raise self._error

    def _run(self, options: Dict[str, Any]) -> None:
        loop = uvloop.new_event_loop() if self.kind == "uvloop" else asyncio.new_event_loop()
        self.loop = loop
        try:
            try:
                self.server = FileServer(self.root, port=0, **options)
                loop.run_until_complete(self.server.start())
                self.port = self.server.port
            except BaseException as exc:
                self._error = exc
                return
            finally:
                self._started.set()
            loop.run_until_complete(self.server.wait_closed())
        finally:
            loop.close()

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the server's loop and return its result."""
        assert self.loop is not None

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(WAIT)

    @property
    def connections(self) -> int:
        assert self.server is not None
        return self.call(lambda: self.server.connections)  # type: ignore[union-attr]

    def stop(self) -> None:
        if self.thread.is_alive() and self.loop is not None and self.server is not None:
            asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(WAIT)
        self.thread.join(WAIT)
        assert not self.thread.is_alive()

    def http(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT)

    def raw(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=WAIT)
        return s


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The served directory, inside tmp_path; tmp_path itself holds a secret
    that must never come out."""
    (tmp_path / "secret.txt").write_bytes(SECRET)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret2.txt").write_bytes(SECRET)
    r = tmp_path / "root"
    r.mkdir()
    (r / "inside.txt").write_bytes(b"inside\n")
    (r / "a").mkdir()
    (r / "a" / "x").write_bytes(b"a/x\n")
    return r


@pytest.fixture(params=LOOPS)
def start(request: Any, root: Path) -> Iterator[Callable[..., Server]]:
    made: List[Server] = []

    def make(**options: Any) -> Server:
        options.setdefault("access_log", False)
        s = Server(root, request.param, **options)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


def get(
    conn: http.client.HTTPConnection, path: str, headers: Optional[Dict[str, str]] = None, method: str = "GET"
) -> Tuple[int, http.client.HTTPMessage, bytes]:
    conn.request(method, path, headers=headers or {})
    resp = conn.getresponse()
    return resp.status, resp.headers, resp.read()


def exchange(s: socket.socket, data: bytes) -> bytes:
    """Send ``data``, then read until the server closes the connection."""
    s.sendall(data)
    return read_all(s)


def read_all(s: socket.socket) -> bytes:
    parts = [_leftover.pop(s.fileno(), b"")]
    while True:
        chunk = s.recv(1 << 16)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)


_leftover: Dict[int, bytes] = {}


def read_response(s: socket.socket) -> Tuple[int, Dict[str, str], bytes]:
    """One response from a raw socket that stays open (uses Content-Length);
    bytes read past it are kept for the next call on the same socket."""
    buf = _leftover.pop(s.fileno(), b"")
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(1 << 16)
        assert chunk, f"connection closed inside a response head: {buf!r}"
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    status, headers = parse_head(head)
    n = int(headers.get("content-length", "0")) if status != 304 else 0
    while len(body) < n:
        chunk = s.recv(1 << 16)
        assert chunk
        body += chunk
    if len(body) > n:
        _leftover[s.fileno()] = body[n:]
    return status, headers, body[:n]


def parse_head(head: bytes) -> Tuple[int, Dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    version, status, _ = lines[0].split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(status), headers


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def payload(n: int, seed: int = 1) -> bytes:
    import random

    return random.Random(seed).randbytes(n)


# ------------------------------------------------------------ normal requests


def test_get_exact_bytes_on_one_connection(start, root):
    files = {"empty.bin": b"", "one.bin": b"x", "small.txt": payload(4099, 2), "big.bin": payload(5 << 20, 3)}
    for name, data in files.items():
        (root / name).write_bytes(data)
    s = start()
    conn = s.http()
    try:
        for name, data in files.items():
            status, headers, body = get(conn, "/" + name)
            assert status == 200
            assert body == data
            assert headers["Content-Length"] == str(len(data))
            assert headers["Accept-Ranges"] == "bytes"
            st = os.stat(root / name)
            assert re.fullmatch(f'(W/)?"{st.st_size:x}-{st.st_ctime_ns:x}"', headers["ETag"])
            assert headers["Last-Modified"] == email.utils.formatdate(int(st.st_mtime), usegmt=True)
            assert email.utils.parsedate_to_datetime(headers["Date"]) is not None
            assert "Connection" not in headers  # HTTP/1.1 keeps alive by default
        sock = conn.sock
        for _ in range(10):
            assert get(conn, "/small.txt")[2] == files["small.txt"]
        assert conn.sock is sock, "keep-alive: the same connection served every request"
        assert s.connections == 1
    finally:
        conn.close()


def test_head_has_the_headers_and_no_body(start, root):
    data = payload(70000, 4)
    (root / "f.bin").write_bytes(data)
    s = start()
    with s.raw() as sock:
        sock.sendall(b"HEAD /f.bin HTTP/1.1\r\nHost: x\r\n\r\nGET /inside.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        buf = b""
        while buf.count(b"\r\n\r\n") < 2 or not buf.endswith(b"inside\n"):
            chunk = sock.recv(1 << 16)
            assert chunk
            buf += chunk
        head1, rest = buf.split(b"\r\n\r\n", 1)
        status, headers = parse_head(head1)
        assert status == 200 and headers["content-length"] == str(len(data))
        assert rest.startswith(b"HTTP/1.1 200 OK\r\n"), "HEAD sent body bytes"
    conn = s.http()
    try:
        status, headers, body = get(conn, "/f.bin", method="HEAD")
        assert (status, body) == (200, b"")
        assert headers["Content-Type"] == "application/octet-stream"
    finally:
        conn.close()


RANGE_CASES = [
    ("bytes=0-0", 206, 0, 1),
    ("bytes=10-19", 206, 10, 20),
    ("bytes=9990-", 206, 9990, 10000),
    ("bytes=-10", 206, 9990, 10000),
    ("bytes=-20000", 206, 0, 10000),
    ("bytes=9995-20000", 206, 9995, 10000),
    ("bytes=0-9999", 206, 0, 10000),
    (" bytes = 5-6 ", 206, 5, 7),
    ("bytes=5-6,", 206, 5, 7),
    ("bytes=10000-", 416, 0, 0),
    ("bytes=20000-30000", 416, 0, 0),
    ("bytes=-0", 416, 0, 0),
    ("bytes=0-1,5-6", 200, 0, 10000),  # several ranges: the whole file
    ("bytes=5-2", 200, 0, 10000),  # invalid: ignored
    ("bytes=abc", 200, 0, 10000),
    ("bytes=+1-2", 200, 0, 10000),
    ("bytes=-", 200, 0, 10000),
    ("items=0-1", 200, 0, 10000),
]


@pytest.mark.parametrize("spec,status,lo,hi", RANGE_CASES)
def test_range(start, root, spec, status, lo, hi):
    data = payload(10000, 5)
    (root / "r.bin").write_bytes(data)
    s = start()
    conn = s.http()
    try:
        got, headers, body = get(conn, "/r.bin", {"Range": spec})
        assert got == status
        if status == 206:
            assert body == data[lo:hi]
            assert headers["Content-Range"] == f"bytes {lo}-{hi - 1}/10000"
            assert headers["Content-Length"] == str(hi - lo)
        elif status == 416:
            assert headers["Content-Range"] == "bytes */10000"
        else:
            assert body == data and "Content-Range" not in headers
        assert get(conn, "/inside.txt")[2] == b"inside\n", "the connection stays usable"
    finally:
        conn.close()


def test_range_of_an_empty_file_and_head(start, root):
    (root / "e").write_bytes(b"")
    (root / "r.bin").write_bytes(b"0123456789")
    s = start()
    conn = s.http()
    try:
        status, headers, _ = get(conn, "/e", {"Range": "bytes=0-"})
        assert status == 416 and headers["Content-Range"] == "bytes */0"
        status, headers, body = get(conn, "/r.bin", {"Range": "bytes=2-4"}, method="HEAD")
        assert (status, body) == (206, b"")
        assert headers["Content-Range"] == "bytes 2-4/10" and headers["Content-Length"] == "3"
    finally:
        conn.close()


def settled(*paths: Path) -> None:
    """Wait until every file has been left alone for over a second: only
    then is its ETag strong (a change within the same clock tick could keep
    size and ctime). A wait for a state, not a timing assertion."""
    for path in paths:
        st = os.stat(path)
        wait = max(st.st_mtime_ns, st.st_ctime_ns) / 1e9 + 1.05 - time.time()
        if wait > 0:
            time.sleep(wait)


def unsettled(path: Path) -> None:
    """Make the file look changed just now, for the next hour (an mtime in
    the future), so that its ETag is weak however slowly the test runs."""
    later = time.time() + 3600
    os.utime(path, (later, later))


def test_if_range(start, root):
    (root / "r.bin").write_bytes(b"0123456789")
    unsettled(root / "r.bin")
    s = start()
    conn = s.http()
    try:
        # A file changed within the last second has a weak ETag, which never
        # matches If-Range (strong comparison), nor does its date: whole file.
        _, headers, _ = get(conn, "/r.bin")
        assert headers["ETag"].startswith('W/"')
        assert get(conn, "/r.bin", {"Range": "bytes=1-2", "If-Range": headers["ETag"]})[0] == 200
        assert get(conn, "/r.bin", {"Range": "bytes=1-2", "If-Range": headers["Last-Modified"]})[0] == 200
        os.utime(root / "r.bin", (time.time() - 10, time.time() - 10))
        settled(root / "r.bin")
        _, headers, _ = get(conn, "/r.bin")
        etag = headers["ETag"]
        assert etag.startswith('"'), "a settled file has a strong ETag"
        assert get(conn, "/r.bin", {"Range": "bytes=1-2", "If-Range": etag})[2] == b"12"
        assert get(conn, "/r.bin", {"Range": "bytes=1-2", "If-Range": headers["Last-Modified"]})[2] == b"12"
        old = email.utils.formatdate(0, usegmt=True)
        assert get(conn, "/r.bin", {"Range": "bytes=1-2", "If-Range": old})[2] == b"0123456789"
        assert get(conn, "/r.bin", {"Range": "bytes=1-2", "If-Range": "W/" + etag})[0] == 200
        assert get(conn, "/r.bin", {"Range": "bytes=1-2", "If-Range": '"other"'})[0] == 200
    finally:
        conn.close()


def test_not_modified(start, root):
    (root / "c.txt").write_bytes(b"cache me")
    s = start()
    conn = s.http()
    try:
        _, headers, _ = get(conn, "/c.txt")
        etag, modified = headers["ETag"], headers["Last-Modified"]
        opaque = etag[2:]
        for inm in (etag, opaque, f'"nope", {etag}', "*"):
            status, h, body = get(conn, "/c.txt", {"If-None-Match": inm})
            assert (status, body) == (304, b""), inm
            assert h["ETag"] == etag and h["Last-Modified"] == modified
        assert get(conn, "/c.txt", {"If-None-Match": '"other"'})[0] == 200
        assert get(conn, "/c.txt", {"If-Modified-Since": modified})[0] == 304
        later = email.utils.formatdate(time.time() + 3600, usegmt=True)
        assert get(conn, "/c.txt", {"If-Modified-Since": later})[0] == 304
        assert get(conn, "/c.txt", {"If-Modified-Since": email.utils.formatdate(0, usegmt=True)})[0] == 200
        assert get(conn, "/c.txt", {"If-Modified-Since": "not a date"})[0] == 200
        # If-None-Match wins over If-Modified-Since (RFC 9110 13.2.2).
        assert get(conn, "/c.txt", {"If-None-Match": '"other"', "If-Modified-Since": modified})[0] == 200
        # HEAD too, and the connection survives a 304 (no body was sent).
        assert get(conn, "/c.txt", {"If-None-Match": etag}, method="HEAD")[0] == 304
        assert get(conn, "/c.txt")[2] == b"cache me"
    finally:
        conn.close()


def test_if_match_and_if_unmodified_since(start, root):
    (root / "m.txt").write_bytes(b"0123456789")
    settled(root / "m.txt")
    (root / "fresh.txt").write_bytes(b"new")
    unsettled(root / "fresh.txt")
    s = start()
    conn = s.http()
    try:
        _, headers, _ = get(conn, "/m.txt")
        etag, modified = headers["ETag"], headers["Last-Modified"]
        assert not etag.startswith("W/")
        for im, status in ((etag, 200), ("*", 200), (f'"x", {etag}', 200), ('"x"', 412), ("W/" + etag, 412)):
            got, h, body = get(conn, "/m.txt", {"If-Match": im})
            assert got == status, im
            assert body == (b"0123456789" if status == 200 else b"412 Precondition Failed\n")
        before = email.utils.formatdate(os.stat(root / "m.txt").st_mtime - 10, usegmt=True)
        for ius, status in ((modified, 200), (before, 412), ("not a date", 200)):
            assert get(conn, "/m.txt", {"If-Unmodified-Since": ius})[0] == status, ius
        # If-Match is evaluated instead of If-Unmodified-Since, and before
        # If-None-Match and Range (RFC 9110 13.2.2).
        assert get(conn, "/m.txt", {"If-Match": etag, "If-Unmodified-Since": before})[0] == 200
        assert get(conn, "/m.txt", {"If-Match": '"x"', "If-None-Match": etag})[0] == 412
        assert get(conn, "/m.txt", {"If-Match": '"x"', "Range": "bytes=0-1"})[0] == 412
        assert get(conn, "/m.txt", {"If-Match": etag, "Range": "bytes=0-1"})[2] == b"01"
        status, _, body = get(conn, "/m.txt", {"If-Match": '"x"'}, method="HEAD")
        assert (status, body) == (412, b"")
        # A file changed within the last second has only a weak ETag, which
        # If-Match (strong comparison) never accepts; a missing file is 404.
        _, headers, _ = get(conn, "/fresh.txt")
        assert headers["ETag"].startswith("W/")
        assert get(conn, "/fresh.txt", {"If-Match": headers["ETag"]})[0] == 412
        assert get(conn, "/fresh.txt", {"If-None-Match": headers["ETag"]})[0] == 304
        assert get(conn, "/missing", {"If-Match": "*"})[0] == 404
        assert get(conn, "/m.txt")[2] == b"0123456789", "the connection stays usable after 412"
    finally:
        conn.close()


def test_resume_with_if_range_after_a_change(start, root):
    """A download resumed with If-Range gets the rest of the same file, or the
    whole file again if it changed meanwhile -- even to the same size."""
    (root / "r.bin").write_bytes(b"A" * 1000)
    settled(root / "r.bin")
    s = start()
    conn = s.http()
    try:
        _, headers, body = get(conn, "/r.bin", {"Range": "bytes=0-399"})
        etag = headers["ETag"]
        status, headers, rest = get(conn, "/r.bin", {"Range": "bytes=400-", "If-Range": etag})
        assert status == 206 and headers["Content-Range"] == "bytes 400-999/1000"
        assert body + rest == b"A" * 1000
        (root / "r.bin").write_bytes(b"B" * 1000)  # same size, new bytes
        settled(root / "r.bin")
        status, headers, whole = get(conn, "/r.bin", {"Range": "bytes=400-", "If-Range": etag})
        assert (status, whole) == (200, b"B" * 1000) and headers["ETag"] != etag
    finally:
        conn.close()


def test_a_file_asked_for_as_a_directory_is_404(start, root):
    os.symlink("inside.txt", root / "link_in")
    s = start()
    conn = s.http()
    try:
        for path in ("/inside.txt/", "/a/x/", "/link_in/", "/inside.txt//", "/a/x/?q=1"):
            status, _, body = get(conn, path)
            assert status == 404, path
            assert b"inside" not in body
        assert get(conn, "/a/")[0] == 200
        assert get(conn, "/inside.txt")[2] == b"inside\n"
    finally:
        conn.close()


def test_bare_lf_line_ends_are_answered(start, root):
    s = start()
    with s.raw() as sock:  # RFC 9112 section 2.2: a server may take LF alone
        sock.sendall(b"GET /inside.txt HTTP/1.1\nHost: x\n\n")
        assert read_response(sock)[2] == b"inside\n"
        sock.sendall(b"\nGET /a/x HTTP/1.1\r\nHost: x\nRange: bytes=0-0\r\n\n")
        status, headers, body = read_response(sock)
        assert (status, body) == (206, b"a")
        out = exchange(sock, b"HEAD /inside.txt HTTP/1.1\nHost: x\nConnection: close\n\n")
        assert status_of(out) == 200 and out.endswith(b"\r\n\r\n")
    with s.raw() as sock:
        out = exchange(sock, b"GET /inside.txt HTTP/1.0\n\n")
        assert status_of(out) == 200 and out.endswith(b"inside\n")
    with s.raw() as sock:  # a CR alone is still refused
        out = exchange(sock, b"GET /inside.txt HTTP/1.1\rHost: x\r\n\r\n")
        assert status_of(out) == 400


NOT_HTTP = [
    # The start of a TLS 1.2/1.3 ClientHello record.
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32)), 400),
    (b"SSH-2.0-OpenSSH_9.6\r\n", 400),
    (b"\x00\x00\x00\x00", 400),
    (b" GET / HTTP/1.1\r\n", 400),
    (b"GET / HTTP/1.1 \r\n", 400),
    (b"GET /a\tb HTTP/1.1\r\n", 400),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),  # HTTP/2 with prior knowledge
    (b"GET /" + b"a" * 9000, 414),
]


@pytest.mark.parametrize("data,status", NOT_HTTP, ids=range(len(NOT_HTTP)))
def test_bytes_that_cannot_be_http_get_an_answer_at_once(start, root, data, status):
    # The header timeout is far longer than the wait below: the answer must
    # come from the bytes themselves, while the client keeps its side open.
    s = start(header_timeout=WAIT * 6)
    with s.raw() as sock:
        sock.sendall(data)
        out = read_all(sock)
    assert status_of(out) == status and b"\r\nConnection: close\r\n" in out


def test_a_tls_client_fails_at_once_instead_of_hanging(start, root):
    s = start(header_timeout=WAIT * 6)
    ctx = ssl.create_default_context()
    with s.raw() as sock:
        with pytest.raises(ssl.SSLError):  # not a timeout: the server said 400 and closed
            ctx.wrap_socket(sock, server_hostname="localhost")


def test_a_head_cut_short_by_eof_gets_400(start, root):
    s = start()
    with s.raw() as sock:
        sock.sendall(b"GET /inside.txt HTTP/1.1\r\nHost: x\r\n")
        sock.shutdown(socket.SHUT_WR)
        out = read_all(sock)
    assert status_of(out) == 400
    with s.raw() as sock:  # nothing sent at all: closed without a word
        sock.shutdown(socket.SHUT_WR)
        assert read_all(sock) == b""


def test_404_and_405(start, root):
    s = start()
    conn = s.http()
    try:
        assert get(conn, "/missing")[0] == 404
        assert get(conn, "/inside.txt/x")[0] == 404  # ENOTDIR
        for method in ("POST", "PUT", "DELETE", "OPTIONS", "PATCH"):
            status, headers, _ = get(conn, "/inside.txt", method=method)
            assert status == 405 and headers["Allow"] == "GET, HEAD"
        assert get(conn, "/inside.txt")[2] == b"inside\n"
    finally:
        conn.close()


def test_unreadable_file_is_403(start, root, monkeypatch):
    (root / "locked").write_bytes(b"no")
    os.chmod(root / "locked", 0)
    # Root reads every file whatever its mode: make the open fail as it would
    # for anyone else, so the test holds as root (as CI runs) too.
    real_open = os.open

    def deny(path, flags, *args, **kwargs):
        if os.fsdecode(path).endswith("locked"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_open(path, flags, *args, **kwargs)

    def deny_beneath(dirfd, path, flags):
        if path.endswith(b"locked"):
            return -errno.EACCES
        return real_beneath(dirfd, path, flags)

    def deny_stat(dirfd, path, flags, info):
        if path.endswith(b"locked"):
            return -errno.EACCES
        return real_stat(dirfd, path, flags, info)

    real_beneath, real_stat = resources._open_beneath, resources._open_stat
    monkeypatch.setattr(os, "open", deny)
    monkeypatch.setattr(resources, "_open_beneath", deny_beneath)
    monkeypatch.setattr(resources, "_open_stat", deny_stat)
    s = start()
    conn = s.http()
    try:
        assert get(conn, "/locked")[0] == 403
    finally:
        conn.close()


def test_mime_types(start, root):
    names = {
        "p.html": "text/html",
        "p.txt": "text/plain",
        "p.png": "image/png",
        "p.unknownext": "application/octet-stream",
        "noext": "application/octet-stream",
        "p.tar.gz": "application/gzip",
    }
    for name in names:
        (root / name).write_bytes(b"x")
    s = start()
    conn = s.http()
    try:
        for name, ctype in names.items():
            _, headers, _ = get(conn, "/" + name)
            assert headers["Content-Type"] == ctype, name
            assert "Content-Encoding" not in headers
    finally:
        conn.close()


def test_directories(start, root):
    (root / "site").mkdir()
    (root / "site" / "index.html").write_bytes(b"<p>home</p>")
    (root / "list").mkdir()
    (root / "list" / "<b>&'\".txt").write_bytes(b"x")
    (root / "list" / "sp ace").mkdir()
    s = start()
    conn = s.http()
    try:
        status, headers, _ = get(conn, "/site?q=1")
        assert status == 301 and headers["Location"] == "/site/?q=1"
        status, headers, body = get(conn, "/site/")
        assert (status, body) == (200, b"<p>home</p>")
        assert headers["Content-Type"] == "text/html"
        status, headers, body = get(conn, "/list/")
        assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
        page = body.decode()
        assert "<b>" not in page and "&lt;b&gt;&amp;&#x27;&quot;.txt" in page
        assert 'href="%3Cb%3E%26%27%22.txt"' in page
        assert 'href="sp%20ace/"' in page and 'href="../"' in page
        status, _, body = get(conn, "/")
        assert status == 200 and b'href="inside.txt"' in body and b'href="a/"' in body
        assert b'href="../"' not in body
    finally:
        conn.close()


def test_no_listing(start, root):
    s = start(listing=False)
    conn = s.http()
    try:
        assert get(conn, "/a/")[0] == 404
        assert get(conn, "/a/x")[2] == b"a/x\n"
    finally:
        conn.close()


def test_http10_and_connection_close(start, root):
    s = start()
    with s.raw() as sock:  # HTTP/1.0 closes by default
        out = exchange(sock, b"GET /inside.txt HTTP/1.0\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\ninside\n")
        assert b"\r\nConnection: close\r\n" in out
    with s.raw() as sock:  # HTTP/1.0 keep-alive on request
        for _ in range(3):
            sock.sendall(b"GET /inside.txt HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            status, headers, body = read_response(sock)
            assert (status, body) == (200, b"inside\n") and headers["connection"] == "keep-alive"
    with s.raw() as sock:  # HTTP/1.1 Connection: close
        out = exchange(sock, b"GET /inside.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert status_of(out) == 200 and out.endswith(b"inside\n") and b"\r\nConnection: close\r\n" in out


def test_pipelined_requests_and_blank_lines(start, root):
    s = start()
    with s.raw() as sock:
        sock.sendall(
            b"\r\nGET /inside.txt HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /a/x HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /missing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        out = read_all(sock)
    parts = out.split(b"HTTP/1.1 ")[1:]
    assert [status_of(b"HTTP/1.1 " + p) for p in parts] == [200, 200, 404]
    assert parts[0].endswith(b"inside\n") and parts[1].endswith(b"a/x\n")


def test_request_bodies(start, root):
    s = start(max_body=1000)
    with s.raw() as sock:  # a small body is read and dropped; the next request is intact
        sock.sendall(b"GET /inside.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                     b"GET /a/x HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[2] == b"inside\n"
        assert read_response(sock)[2] == b"a/x\n"
        sock.sendall(b"POST /inside.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        assert read_response(sock)[0] == 405
        # Expect: 100-continue gets the interim answer before the body is sent
        sock.sendall(b"GET /inside.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += sock.recv(100)
        assert buf == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"abc")
        assert read_response(sock)[2] == b"inside\n"
    with s.raw() as sock:
        out = exchange(sock, b"GET /inside.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + b"z" * 5000)
        assert status_of(out) == 413
    with s.raw() as sock:
        out = exchange(sock, b"GET /inside.txt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        assert status_of(out) == 411


def test_access_log(start, root, caplog):
    caplog.set_level(logging.INFO, logger="zcio.serve")
    s = start(access_log=True)
    conn = s.http()
    try:
        get(conn, "/inside.txt")
        get(conn, "/nope?x=%22", method="HEAD")
    finally:
        conn.close()
    s.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "zcio.serve.access"]
    date = r"\[\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d \+0000\]"
    assert re.fullmatch(r'127\.0\.0\.1 - - ' + date + r' "GET /inside\.txt HTTP/1\.1" 200 7 \d+\.\d{6}', lines[0])
    assert re.fullmatch(r'127\.0\.0\.1 - - ' + date + r' "HEAD /nope\?x=%22 HTTP/1\.1" 404 0 \d+\.\d{6}', lines[1])
    assert len(lines) == 2


def test_access_log_off(start, root, caplog):
    caplog.set_level(logging.INFO, logger="zcio.serve")
    s = start(access_log=False)
    conn = s.http()
    try:
        assert get(conn, "/inside.txt")[0] == 200
    finally:
        conn.close()
    assert not [r for r in caplog.records if r.name == "zcio.serve.access"]


# ------------------------------------------------------------ hostile clients


TRAVERSALS = [
    (b"/../secret.txt", 403),
    (b"/../../../../etc/passwd", 403),
    (b"/%2e%2e/secret.txt", 403),
    (b"/%2E%2E/%2e%2e/etc/passwd", 403),
    (b"/a/%2e%2e/%2e%2e/secret.txt", 403),
    (b"/a/../../secret.txt", 403),
    (b"/.%2e/secret.txt", 403),
    (b"/./inside.txt", 403),
    (b"/..%2fsecret.txt", 400),
    (b"/a/..%2F..%2Fsecret.txt", 400),
    (b"/%2fetc%2fpasswd", 400),
    (b"/%2e%2e%2f%2e%2e%2fsecret.txt", 400),
    (b"/inside.txt%00.png", 400),
    (b"/%zz", 400),
    (b"/%2", 400),
    (b"/inside.txt#frag", 400),
    (b"http://127.0.0.1/../secret.txt", 403),
    (b"http://127.0.0.1/%2e%2e/secret.txt", 403),
    (b"http://evil.example/..%2fsecret.txt", 400),
    (b"ftp://127.0.0.1/inside.txt", 400),
    (b"secret.txt", 400),
    (b"*", 400),
    (b"//etc/passwd", 404),
    (b"/\\..\\secret.txt", 404),
]


@pytest.mark.parametrize("target,status", TRAVERSALS)
def test_traversal_is_refused(start, root, target, status):
    s = start()
    with s.raw() as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        if status in (403, 404):  # refused, but the connection stays usable
            got, _, body = read_response(sock)
            sock.sendall(b"GET /inside.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            rest = read_all(sock)
            assert rest.endswith(b"\r\n\r\ninside\n")
        else:
            out = read_all(sock)
            got, body = status_of(out), out
    assert got == status
    assert SECRET not in body and b"root:" not in body


def test_absolute_form_inside(start, root):
    s = start()
    with s.raw() as sock:
        out = exchange(sock, b"GET http://example.com/a/x?y HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_of(out) == 200 and out.endswith(b"a/x\n")


def test_nul_byte_in_request_line(start, root):
    s = start()
    with s.raw() as sock:
        out = exchange(sock, b"GET /inside.txt\x00/../secret.txt HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(out) == 400 and SECRET not in out


def test_symlinks_are_confined(start, root, tmp_path):
    os.symlink("../secret.txt", root / "link_out")
    os.symlink(tmp_path / "secret.txt", root / "abs_out")
    os.symlink(tmp_path / "outside", root / "dir_out")
    os.symlink("/etc/passwd", root / "passwd")
    os.symlink("inside.txt", root / "link_in")
    os.symlink("a", root / "dir_in")
    os.symlink("loop", root / "loop")
    (root / "sub").mkdir()
    os.symlink("../../secret.txt", root / "sub" / "up")
    os.symlink("../inside.txt", root / "sub" / "ok")
    (root / "d").mkdir()
    os.symlink(tmp_path / "secret.txt", root / "d" / "index.html")
    os.mkfifo(root / "fifo")
    s = start()
    conn = s.http()
    try:
        for path in ("/link_out", "/abs_out", "/dir_out/secret2.txt", "/dir_out/", "/passwd",
                     "/sub/up", "/loop", "/fifo", "/d/"):
            status, _, body = get(conn, path)
            assert status == 403, path
            assert SECRET not in body and b"root:" not in body
        assert get(conn, "/link_in")[2] == b"inside\n"
        assert get(conn, "/sub/ok")[2] == b"inside\n"
        assert get(conn, "/dir_in/x")[2] == b"a/x\n"
        status, headers, _ = get(conn, "/dir_in")
        assert status == 301 and headers["Location"] == "/dir_in/"
    finally:
        conn.close()


def test_confinement_without_openat2(root, tmp_path, monkeypatch):
    """Where the kernel (or a seccomp filter) refuses openat2, files are
    found by the O_NOFOLLOW walk, with the same answers."""
    monkeypatch.setattr(resources, "_open_beneath", lambda dirfd, path, flags: -errno.ENOSYS)
    monkeypatch.setattr(resources, "_open_stat", lambda dirfd, path, flags, info: -errno.ENOSYS)
    os.symlink("../secret.txt", root / "link_out")
    os.symlink(tmp_path / "secret.txt", root / "abs_out")
    os.symlink(tmp_path / "outside", root / "dir_out")
    os.symlink("inside.txt", root / "link_in")
    os.symlink(root / "a", root / "abs_in")
    (root / "sub").mkdir()
    os.symlink("../../secret.txt", root / "sub" / "up")
    os.mkfifo(root / "fifo")
    s = Server(root, "asyncio", access_log=False)
    conn = s.http()
    try:
        assert s.call(lambda: s.server.site.root.beneath) is False  # type: ignore[union-attr]
        for path, status in (("/link_out", 403), ("/abs_out", 403), ("/dir_out/secret2.txt", 403),
                             ("/sub/up", 403), ("/fifo", 403), ("/missing", 404), ("/inside.txt/", 404),
                             ("/a/%2e%2e/secret.txt", 403)):
            got, _, body = get(conn, path)
            assert got == status, path
            assert SECRET not in body
        assert get(conn, "/link_in")[2] == b"inside\n"
        assert get(conn, "/abs_in/x")[2] == b"a/x\n"
        assert get(conn, "/a/x")[2] == b"a/x\n"
        assert get(conn, "/")[0] == 200
    finally:
        conn.close()
        s.stop()


MALFORMED = [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /\r\n\r\n", 400),
    (b"GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n", 400),
    (b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET / http/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET / HTTP/1\r\nHost: x\r\n\r\n", 400),
    (b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET /\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
    (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nBad : space\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nA: b\r\n folded\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nA: b\x00c\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nExpect: magic\r\n\r\n", 417),
]


@pytest.mark.parametrize("request_bytes,status", MALFORMED)
def test_malformed_requests_get_an_answer_and_a_close(start, root, request_bytes, status):
    s = start()
    with s.raw() as sock:
        out = exchange(sock, request_bytes)  # returns only once the server closed
    assert status_of(out) == status
    assert b"\r\nConnection: close\r\n" in out


@pytest.mark.parametrize(
    "request_bytes,status",
    [
        (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),  # no line end in sight
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),  # over max_uri
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 20000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X: v\r\n" * 3000 + b"\r\n", 431),
    ],
    ids=["long-line", "long-uri", "big-header", "many-headers", "big-head"],
)
def test_limits(start, root, request_bytes, status):
    s = start()
    with s.raw() as sock:
        out = exchange(sock, request_bytes)
    assert status_of(out) == status
    assert b"\r\nConnection: close\r\n" in out


def test_slow_client_is_cut_off_after_the_header_timeout(start, root):
    s = start(header_timeout=0.3)
    with s.raw() as sock:
        sock.sendall(b"GET /insi")
        t0 = time.monotonic()
        assert sock.recv(100) == b""  # EOF, no answer
        assert time.monotonic() - t0 >= 0.15
    with s.raw() as idle:  # a connection that never sends anything
        assert idle.recv(100) == b""
    conn = s.http()
    try:
        assert get(conn, "/inside.txt")[2] == b"inside\n"
    finally:
        conn.close()


def trickled_until_closed(sock):
    """Send one byte whenever the server has said nothing, until it hangs up
    (True) or WAIT runs out (False)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        r, _, _ = select.select([sock], [], [], 0.05)
        if r:
            return sock.recv(100) == b""
        try:
            sock.sendall(b"X")
        except OSError:
            return True
    return False


def test_trickling_client_cannot_extend_the_header_timeout(start, root):
    s = start(header_timeout=0.4)
    with s.raw() as sock:
        sock.sendall(b"GET /inside.txt HTTP/1.1\r\n")
        assert trickled_until_closed(sock)


def test_trickling_body_cannot_extend_the_header_timeout(start, root):
    s = start(header_timeout=0.4)
    with s.raw() as sock:
        sock.sendall(b"GET /inside.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n")
        assert trickled_until_closed(sock)


def test_idle_keep_alive_connection_is_closed(start, root):
    s = start(idle_timeout=0.3)
    with s.raw() as sock:
        sock.sendall(b"GET /inside.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[2] == b"inside\n"
        assert sock.recv(100) == b""


def test_client_that_leaves_mid_body_does_not_hurt_the_server(start, root, caplog):
    caplog.set_level(logging.INFO, logger="zcio.serve")
    with open(root / "huge.bin", "wb") as f:
        f.truncate(512 << 20)  # sparse: costs no disk, far more than the socket buffers
    s = start()
    for _ in range(2):
        with s.raw() as sock:
            sock.sendall(b"GET /huge.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(1 << 16).startswith(b"HTTP/1.1 200 OK\r\n")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset
    deadline = time.monotonic() + WAIT
    while s.connections and time.monotonic() < deadline:
        time.sleep(0.01)
    assert s.connections == 0
    conn = s.http()
    try:
        assert get(conn, "/inside.txt")[2] == b"inside\n"
        status, _, body = get(conn, "/huge.bin", {"Range": "bytes=-5"})
        assert (status, body) == (206, b"\0" * 5)
    finally:
        conn.close()
    lost = [r for r in caplog.records if "connection lost" in r.getMessage()]
    assert len(lost) == 2 and all(r.levelno == logging.INFO and r.exc_info is None for r in lost)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_client_that_stops_reading_is_dropped_after_the_send_timeout(start, root, caplog):
    caplog.set_level(logging.INFO, logger="zcio.serve")
    with open(root / "huge.bin", "wb") as f:
        f.truncate(512 << 20)
    s = start(send_timeout=0.3)
    with s.raw() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        sock.sendall(b"GET /huge.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 200 OK\r\n")
        deadline = time.monotonic() + WAIT
        while s.connections and time.monotonic() < deadline:
            time.sleep(0.01)
        assert s.connections == 0
    lost = [r.getMessage() for r in caplog.records if "connection lost" in r.getMessage()]
    assert len(lost) == 1 and "timed out" in lost[0] and '"GET /huge.bin HTTP/1.1"' in lost[0]


def test_ipv6(root):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")

    async def body() -> bytes:
        async with FileServer(root, "::1", 0, access_log=False) as server:
            assert server.address[0] == "::1"
            r, w = await asyncio.open_connection("::1", server.port)
            w.write(b"GET /inside.txt HTTP/1.1\r\nHost: [::1]\r\nConnection: close\r\n\r\n")
            out = await asyncio.wait_for(r.read(), WAIT)
            w.close()
            await w.wait_closed()
            return out

    assert asyncio.run(body()).endswith(b"\r\n\r\ninside\n")


def test_max_connections_holds_the_rest_in_the_backlog(start, root):
    s = start(max_connections=1)
    first = s.http()
    first.connect()
    second = s.raw()
    try:
        assert get(first, "/inside.txt")[0] == 200
        second.sendall(b"GET /a/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        r, _, _ = select.select([second], [], [], 0.2)
        assert not r, "a connection over the limit was served"
        assert s.connections == 1
        first.close()
        out = read_all(second)
        assert status_of(out) == 200 and out.endswith(b"a/x\n")
    finally:
        first.close()
        second.close()


def test_close_ends_open_connections(start, root):
    s = start()
    with s.raw() as sock:
        sock.sendall(b"GET /inside.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[2] == b"inside\n"
        s.stop()
        assert sock.recv(100) == b""
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", s.port), timeout=WAIT).close()


def test_serve_coroutine_reports_ready_and_stops_on_cancel(root):
    loops = [asyncio.new_event_loop] + ([uvloop.new_event_loop] if uvloop else [])
    for new_loop in loops:
        loop = new_loop()
        try:

            async def body() -> bytes:
                loop = asyncio.get_running_loop()
                ready: asyncio.Future[FileServer] = loop.create_future()
                task = loop.create_task(serve(root, port=0, ready=ready.set_result, access_log=False))
                server = await asyncio.wait_for(ready, WAIT)
                r, w = await asyncio.open_connection("127.0.0.1", server.port)
                w.write(b"GET /inside.txt HTTP/1.0\r\n\r\n")
                out = await asyncio.wait_for(r.read(), WAIT)
                w.close()
                await w.wait_closed()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                return out

            assert loop.run_until_complete(body()).endswith(b"\r\n\r\ninside\n")
        finally:
            loop.close()


def test_the_first_release_name_still_works():
    import zcio.serve

    assert zcio.serve.FileServer is FileServer and zcio.serve.serve is serve


def test_bad_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        FileServer(tmp_path / "nope")
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        FileServer(tmp_path / "f")


# ------------------------------------------------------------ units


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40).map(lambda b: b"/" + b))
def test_split_target_never_leaves_the_root(target):
    try:
        segments, _, _ = _request.split_target(target)
    except _request.HttpError as err:
        assert err.status in (400, 403)
        return
    for seg in segments:
        assert seg not in (b"", b".", b"..") and b"/" not in seg and b"\0" not in seg
    joined = os.path.normpath(b"/root/" + b"/".join(segments))
    assert joined == b"/root" or joined.startswith(b"/root/")


@given(st.integers(0, 1000), st.integers(0, 1200), st.integers(0, 1200) | st.none())
def test_parse_range_stays_in_bounds(size, a, b):
    spec = f"bytes={a}-{'' if b is None else b}"
    r = _response.parse_range(spec, size)
    if r is None:
        assert b is not None and b < a
    elif r == _response.UNSATISFIABLE:
        assert a >= size
    else:
        lo, hi = r
        assert lo == a and 0 <= lo <= hi < size
        assert hi == (size - 1 if b is None else min(b, size - 1))
    suffix = _response.parse_range(f"bytes=-{a}", size)
    if a == 0 or size == 0:
        assert suffix == _response.UNSATISFIABLE
    else:
        assert suffix == (max(0, size - a), size - 1)


# ------------------------------------------------------------ the command


def start_cli(*args: str) -> Tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "zcio", "serve", *args, "--port", "0"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline().decode()
    m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    assert m, line
    return proc, int(m.group(1))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("loop_flag", [[], ["--uvloop"]])
def test_cli_serves_and_stops_on_signal(root, sig, loop_flag):
    proc, port = start_cli(str(root), *loop_flag)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
        status, _, body = get(conn, "/inside.txt")
        assert (status, body) == (200, b"inside\n")
        proc.send_signal(sig)  # with a kept-alive connection open
        assert proc.wait(WAIT) == 0
        conn.close()
        assert proc.stderr is not None
        log = proc.stderr.read().decode()
        assert '"GET /inside.txt HTTP/1.1" 200 7' in log
        assert "Traceback" not in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


def test_cli_quiet_and_errors(root, tmp_path):
    proc, port = start_cli(str(root), "--quiet")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
        assert get(conn, "/inside.txt")[0] == 200
        conn.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
        assert proc.stderr is not None
        assert proc.stderr.read() == b""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
    out = subprocess.run([sys.executable, "-m", "zcio", "serve", str(tmp_path / "nope")],
                         capture_output=True, timeout=60)
    assert out.returncode == 1 and b"zcio serve:" in out.stderr and b"Traceback" not in out.stderr
    help_ = subprocess.run([sys.executable, "-m", "zcio", "--help"], capture_output=True, timeout=60)
    assert b"serve" in help_.stdout


@pytest.mark.parametrize("args", [
    ["--port", "99999"], ["--port", "-1"], ["--port", "http"], ["--max-connections", "0"],
    ["--header-timeout", "-1"], ["--idle-timeout", "nan"], ["--send-timeout", "inf"],
])
def test_cli_refuses_bad_numbers_in_one_line(root, args):
    out = subprocess.run([sys.executable, "-m", "zcio", "serve", str(root), *args],
                         capture_output=True, timeout=60)
    assert out.returncode == 2
    lines = out.stderr.decode().strip().splitlines()
    assert args[0] in lines[-1] and "Traceback" not in out.stderr.decode()


def test_oversized_head_still_gets_its_answer_while_the_client_keeps_sending(start, root):
    s = start()
    with s.raw() as sock:
        sock.setblocking(False)
        flood = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * (4 << 20)
        sent, got = 0, b""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            r, w, _ = select.select([sock], [sock] if sent < len(flood) else [], [], WAIT)
            if w:
                try:
                    sent += sock.send(flood[sent : sent + 65536])
                except (BrokenPipeError, ConnectionResetError):
                    sent = len(flood)
            if r:
                chunk = sock.recv(65536)  # a reset here would lose the answer
                if not chunk:
                    break
                got += chunk
    assert status_of(got) == 431 and got.endswith(b"\r\n\r\n431 Request Header Fields Too Large\n")
