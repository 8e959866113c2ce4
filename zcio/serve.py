"""A static HTTP/1.1 file server on :mod:`zcio.aio`: ``zcio serve``.

Connections are raw non-blocking sockets on the running loop (the stdlib
loop or uvloop): ``sock_accept`` and ``sock_sendall``, and for requests a
``recv`` tried first and a reader kept registered between waits. Every file
body leaves by ``zcio.aio.sendfile(sock, fd, offset, count)`` (after one
eager non-blocking ``zcio.sendfile``): the file's pages go to the socket
without passing through Python.

What a client can rely on:

- Methods: GET and HEAD; any other gets 405 with ``Allow: GET, HEAD``.
- Ranges: one range (``bytes=a-b``, ``a-`` or ``-n``) gives 206 with
  Content-Range. A range that starts at or past the end, ``-0``, or any range
  of an empty file gives 416 with ``Content-Range: bytes */SIZE``. Several
  ranges are not answered with multipart/byteranges: the whole file comes
  back with 200, which RFC 9110 (section 14.2) allows. A malformed Range
  header, a unit other than bytes, or an If-Range that does not match is
  ignored (200). If-Range compares a date exactly with Last-Modified; the
  ETag is weak, so an entity-tag If-Range never matches (RFC 9110 13.1.5).
- Validators: ``ETag: W/"<size>-<mtime_ns>"`` (hex) and Last-Modified.
  If-None-Match (weak comparison, ``*``), or else If-Modified-Since, gives 304.
- Keep-alive: the default for HTTP/1.1 unless ``Connection: close``; HTTP/1.0
  only with ``Connection: keep-alive``. Pipelined requests are answered in order.
- Paths: the target (origin form, or absolute form with http/https) is split
  on ``/`` and each segment percent-decoded on its own. A ``.`` or ``..``
  segment, literal or encoded, gives 403; an encoded ``/``, a NUL, a bad
  percent escape, a fragment, a space, a control or a non-ASCII byte gives
  400. Symlinks are followed only while they resolve inside DIR (checked
  with ``os.path.realpath`` and ``os.path.commonpath``; the last component is
  opened with O_NOFOLLOW): one that leads outside gives 403, as does anything
  that is neither a regular file nor a directory (FIFO, device, socket) and a
  file the process may not open. Missing: 404. Hidden files are served.
- Directories: ``/dir`` redirects (301) to ``/dir/``, which serves
  ``dir/index.html`` if there is one, else a minimal HTML listing (names
  HTML-escaped, links percent-encoded) -- or 404 with ``listing=False``
  (``--no-listing``).
- Malformed request line or header: 400. HTTP/2+ version: 505. Request-target
  longer than ``max_uri``: 414. Request line and headers above
  ``max_header_bytes`` (16 KiB) or more than ``max_headers`` (100) fields:
  431. HTTP/1.1 without Host: 400. A request body (Content-Length) is read
  and discarded up to ``max_body`` (64 KiB), above that 413; a
  Transfer-Encoding body gives 411 (400 with Content-Length too). These
  errors close the connection, after a short lingering drain so that the
  client reads the answer instead of a reset.
- Timeouts: a new connection has ``header_timeout`` (10 s) to send a complete
  request head, and so has each request from its first byte; a kept-alive
  connection may idle ``idle_timeout`` (15 s) between requests. A response is
  sent in slices that start at 1 MiB and double while the client takes each
  in under ``send_timeout / 16``; a client that does not take one slice in
  ``send_timeout`` (60 s) is dropped. A connection that times out is shut
  down without an answer.
- At most ``max_connections`` connections are open at once; further ones wait
  in the listen backlog until one ends.
- Logging: one access line per request on the ``zcio.serve.access`` logger at
  INFO, like the common log format plus the duration in seconds::

      127.0.0.1 - - [02/Jan/2025:10:00:00 +0000] "GET /a.txt HTTP/1.1" 200 1234 0.000120

  Bytes are the body bytes sent. A client that goes away mid-response is
  noted on ``zcio.serve`` at INFO (no traceback); ``zcio serve`` prints both
  to stderr unless ``--quiet``.
"""
from __future__ import annotations

import argparse
import asyncio
import email.utils
import errno
import html
import http
import logging
import mimetypes
import os
import re
import signal
import socket
import stat
import sys
import time
import urllib.parse
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from . import aio, lowlevel
from ._version import __version__

__all__ = ["FileServer", "serve", "add_arguments", "main"]

log = logging.getLogger("zcio.serve")
access_log = logging.getLogger("zcio.serve.access")

_SERVER = f"zcio/{__version__}"
_ALLOW = "GET, HEAD"
_MORE = getattr(socket, "MSG_MORE", 0)
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_RECV = 32 << 10
_FIRST_SLICE = 1 << 20
_CORK_ABOVE = 64 << 10  # bodies larger than this go out with TCP_CORK set, as nginx's tcp_nopush
_MAX_SLICE = 64 << 20
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 256 << 10
_PHRASES = {s.value: s.phrase for s in http.HTTPStatus}

_TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_METHOD = re.compile(_TCHAR + rb"\Z")
_FIELD = re.compile(rb"(" + _TCHAR + rb"):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*?)[ \t]*\Z")
_TARGET = re.compile(rb"[\x21-\x7e]+\Z")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])\Z")
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_DIGITS = re.compile(r"[0-9]+\Z")
_RANGE = re.compile(r"([0-9]*)-([0-9]*)\Z")
_UNSATISFIABLE = (-1, -1)
# Compressed files are served as what they are, not with a Content-Encoding.
_ENCODED_TYPES = {"gzip": "application/gzip", "bzip2": "application/x-bzip2", "xz": "application/x-xz"}
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class _HttpError(Exception):
    """An answer other than the file: status, extra header lines, whether the
    connection must close afterwards."""

    def __init__(self, status: int, headers: str = "", *, close: bool = False) -> None:
        super().__init__(status)
        self.status = status
        self.headers = headers
        self.close = close


class _Truncated(Exception):
    """The file shrank while it was being sent: the response is short."""


class _Request:
    __slots__ = ("method", "target", "minor", "headers")

    def __init__(self, method: str, target: bytes, minor: int, headers: Dict[str, str]) -> None:
        self.method = method
        self.target = target
        self.minor = minor
        self.headers = headers


class _Conn:
    """One client connection. The socket is owned by the connection's task,
    which closes it; the sweeper only shuts it down when a deadline passed."""

    __slots__ = (
        "sock", "fd", "peer", "buf", "deadline", "timed_out", "requests", "task",
        "line", "status", "sent", "t0", "loop", "reading", "waiter",
    )

    def __init__(self, sock: socket.socket, peer: str, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.reading = False  # registered with loop.add_reader
        self.waiter: Optional["asyncio.Future[None]"] = None
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.buf = b""
        self.deadline = float("inf")
        self.timed_out = False
        self.requests = 0
        self.task: Optional["asyncio.Task[None]"] = None
        self.line = b""  # the request line as received, for the logs
        self.status = 0
        self.sent = 0  # body bytes
        self.t0 = 0.0

    def abort(self) -> None:
        """Wake whatever the task waits for with EOF/EPIPE."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    async def readable(self) -> None:
        """Wait until the socket is readable (or shut down).

        The reader stays registered from one wait to the next -- a kept-alive
        connection waits for its next request over and over, and each
        registration costs the loop a system call or two -- and is dropped
        when it fires with nobody waiting (the client sent more while a
        response went out), so that a ready fd cannot make the loop spin.
        """
        if not self.reading:
            self.loop.add_reader(self.fd, self._wake)
            self.reading = True
        self.waiter = self.loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    def _wake(self) -> None:
        if self.waiter is None:
            self.stop_reading()
        elif not self.waiter.done():
            self.waiter.set_result(None)

    def stop_reading(self) -> None:
        if self.reading:
            self.loop.remove_reader(self.fd)
            self.reading = False


class FileServer:
    """Serves the files under ``directory`` over HTTP/1.1 (see the module doc).

    Runs on the event loop that calls :meth:`start`; all methods must be
    awaited on that loop (it is not thread-safe). The server owns its
    listening socket, an fd of the root directory and every accepted
    connection; :meth:`close` releases them all. Typical use::

        async with FileServer("site", port=0) as server:
            print(server.port)
            await server.serve_forever()

    Args:
        directory: the root; nothing outside it (after symlinks) is served.
        host: the address to listen on (an IPv6 address works too).
        port: the TCP port; 0 picks a free one (read it from :attr:`port`).
        max_connections: open connections at most; more wait in the backlog.
        header_timeout: seconds to receive a complete request head.
        idle_timeout: seconds a kept-alive connection may wait for a request.
        send_timeout: seconds a client may take to accept one slice of a body.
        listing: list directories without index.html (else 404).
        access_log: log one line per request on ``zcio.serve.access``.
        max_header_bytes: bound on request line plus headers (else 414/431).
        max_headers: bound on the number of header fields (else 431).
        max_uri: bound on the request-target (else 414).
        max_body: request bodies up to this are discarded (else 413).
        backlog: the listen backlog.

    Raises:
        FileNotFoundError, NotADirectoryError: ``directory`` is not one.
    """

    def __init__(
        self,
        directory: "os.PathLike[str] | str" = ".",
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        max_connections: int = 1000,
        header_timeout: float = 10.0,
        idle_timeout: float = 15.0,
        send_timeout: float = 60.0,
        listing: bool = True,
        access_log: bool = True,
        max_header_bytes: int = 16 << 10,
        max_headers: int = 100,
        max_uri: int = 8 << 10,
        max_body: int = 64 << 10,
        backlog: int = 1024,
    ) -> None:
        root = os.path.realpath(os.fsencode(directory))
        if not os.path.isdir(root):
            err = errno.ENOENT if not os.path.exists(root) else errno.ENOTDIR
            raise OSError(err, os.strerror(err), os.fsdecode(directory))
        for name, value in (("header_timeout", header_timeout), ("idle_timeout", idle_timeout),
                            ("send_timeout", send_timeout)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        self.root = os.fsdecode(root)
        self._root = root
        self.host = host
        self._port = port
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.send_timeout = send_timeout
        self.listing = listing
        self.access_log = access_log
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.max_uri = max_uri
        self.max_body = max_body
        self.backlog = backlog
        self._listener: Optional[socket.socket] = None
        self._root_fd = -1
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._conns: Set[_Conn] = set()
        self._slot: Optional["asyncio.Future[None]"] = None
        self._tasks: List["asyncio.Task[None]"] = []
        self._closing = False
        self._closed: Optional["asyncio.Future[None]"] = None
        self._types: Dict[str, str] = {}
        self._dates: Dict[int, str] = {}
        self._now = (-1, "", "")  # (second, HTTP date, log date)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind, listen and start accepting on the running loop.

        Raises:
            OSError: the address is in use, not local, ...
        """
        if self._loop is not None:
            raise RuntimeError("FileServer already started")
        loop = asyncio.get_running_loop()
        mimetypes.init()  # reads the system's tables now rather than on a first request
        family, _, _, _, addr = socket.getaddrinfo(
            self.host, self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(self.backlog)
            sock.setblocking(False)
            self._root_fd = os.open(self._root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except BaseException:
            sock.close()
            raise
        self._listener = sock
        self._loop = loop
        self._closed = loop.create_future()
        self._tasks = [loop.create_task(self._accept_loop()), loop.create_task(self._sweep())]

    @property
    def address(self) -> Tuple[str, int]:
        """The bound ``(host, port)``."""
        if self._listener is None:
            raise RuntimeError("FileServer not started")
        host, port = self._listener.getsockname()[:2]
        return host, port

    @property
    def port(self) -> int:
        """The bound port (useful after ``port=0``)."""
        return self.address[1]

    @property
    def connections(self) -> int:
        """How many connections are open now."""
        return len(self._conns)

    async def serve_forever(self) -> None:
        """Start if needed, then wait until :meth:`close` (or a fatal
        accept error, which is raised)."""
        if self._loop is None:
            await self.start()
        assert self._closed is not None
        accept = self._tasks[0]
        await asyncio.wait([accept, self._closed], return_when=asyncio.FIRST_COMPLETED)
        if accept.done() and not accept.cancelled() and accept.exception() is not None:
            await self.close()
            raise accept.exception()  # type: ignore[misc]

    async def close(self, grace: float = 1.0) -> None:
        """Stop accepting, shut every connection down and wait for them.

        Connections are shut down at once (a response in progress is cut);
        tasks still running after ``grace`` seconds are cancelled.
        """
        if self._loop is None or self._closed is None:
            return
        if self._closing:
            await asyncio.shield(self._closed)
            return
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._listener is not None:
            self._listener.close()
        tasks = [c.task for c in self._conns if c.task is not None]
        for c in list(self._conns):
            c.abort()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1
        if not self._closed.done():
            self._closed.set_result(None)

    async def wait_closed(self) -> None:
        """Wait until :meth:`close` has finished."""
        if self._closed is not None:
            await asyncio.shield(self._closed)

    async def __aenter__(self) -> "FileServer":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # ------------------------------------------------------ accept, timeouts

    async def _accept_loop(self) -> None:
        loop, listener = self._loop, self._listener
        assert loop is not None and listener is not None
        eager = 0
        while True:
            if len(self._conns) >= self.max_connections:
                self._slot = loop.create_future()
                await self._slot
                continue
            try:
                # Take what the backlog holds without a trip through the
                # loop, but not forever: a flood must not starve the others.
                try:
                    if eager >= 16:
                        raise BlockingIOError
                    sock, addr = listener.accept()
                    eager += 1
                except BlockingIOError:
                    eager = 0
                    sock, addr = await loop.sock_accept(listener)
            except (ConnectionAbortedError, InterruptedError):
                continue
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    raise
                log.warning("accept: %s; pausing 100 ms", exc.strerror)
                await asyncio.sleep(0.1)
                continue
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # pragma: no cover - not TCP
                pass
            c = _Conn(sock, str(addr[0]) if isinstance(addr, tuple) else str(addr), loop)
            self._conns.add(c)
            c.task = loop.create_task(self._handle(c))

    async def _sweep(self) -> None:
        """Shut down connections whose deadline passed (cheaper than a timer
        per wait: a request only stores a float)."""
        assert self._loop is not None
        tick = min(1.0, max(0.02, min(self.header_timeout, self.idle_timeout, self.send_timeout) / 8))
        time_ = self._loop.time
        while True:
            await asyncio.sleep(tick)
            now = time_()
            for c in list(self._conns):
                if c.deadline <= now and not c.timed_out:
                    c.timed_out = True
                    c.abort()

    # ------------------------------------------------------------ one client

    async def _handle(self, c: _Conn) -> None:
        linger = False
        try:
            while not self._closing:
                keep, linger = await self._exchange(c)
                if not keep:
                    break
                if c.requests % 16 == 0:
                    # Eager recv/send/sendfile need not suspend: a client that
                    # pipelines fast must still let the others have a turn.
                    await asyncio.sleep(0)
            if linger and not self._closing:
                await self._linger(c)
        except _Truncated:
            self._log_access(c)
            log.warning('%s: "%s": the file shrank while it was sent; connection closed', c.peer, _log_text(c.line))
        except OSError as exc:  # the client went away, or a timeout shut it down
            if c.status:
                self._log_access(c)
            if not self._closing:
                why = "timed out" if c.timed_out else (exc.strerror or str(exc))
                log.info('%s: connection lost (%s) after %d body bytes of "%s"', c.peer, why, c.sent, _log_text(c.line))
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug: say so, keep serving the others
            log.exception('%s: internal error on "%s"', c.peer, _log_text(c.line))
        finally:
            c.stop_reading()
            c.sock.close()
            self._conns.discard(c)
            if self._slot is not None and not self._slot.done():
                self._slot.set_result(None)

    async def _exchange(self, c: _Conn) -> Tuple[bool, bool]:
        """One request and its answer. Returns (keep alive, linger on close)."""
        c.line, c.status, c.sent, c.t0 = b"", 0, 0, 0.0
        req: Optional[_Request] = None
        keep = False
        try:
            head = await self._read_head(c)
            if head is None:
                if c.timed_out and c.buf:
                    log.info("%s: request head not complete in %g s; closed", c.peer, self.header_timeout)
                return False, False
            c.t0 = time.perf_counter()
            c.requests += 1
            end = head.find(b"\r\n")
            c.line = head if end < 0 else head[:end]
            req = _parse_head(head, self.max_headers, self.max_uri)
            connection = req.headers.get("connection")
            tokens = {t.strip() for t in connection.lower().split(",")} if connection else set()
            keep = "close" not in tokens if req.minor >= 1 else "keep-alive" in tokens
            await self._take_body(c, req)
            keep = await self._respond(c, req, keep and not self._closing)
        except _HttpError as err:
            if err.close or self._closing:
                keep = False
            await self._reply(c, err.status, keep, err.headers, req)
            self._log_access(c)
            return keep, err.close
        self._log_access(c)
        return keep, False

    async def _read_head(self, c: _Conn) -> Optional[bytes]:
        """The next request head (without the blank line), or None at EOF."""
        assert self._loop is not None
        time_ = self._loop.time
        buf = c.buf.lstrip(b"\r\n") if c.buf[:1] in (b"\r", b"\n") else c.buf
        if buf:
            c.deadline = time_() + self.header_timeout
        else:
            c.deadline = time_() + (self.idle_timeout if c.requests else self.header_timeout)
        start = 0
        while True:
            end = buf.find(b"\r\n\r\n", start)
            if end >= 0:
                c.buf = buf[end + 4 :]
                buf = buf[:end]
            eol = buf.find(b"\r\n")
            long_line = (eol if eol >= 0 else len(buf)) > self.max_uri + 64
            if long_line or len(buf) > self.max_header_bytes:
                c.buf = b""
                c.t0 = time.perf_counter()
                c.line = buf[: eol if eol >= 0 else len(buf)]
                raise _HttpError(414 if long_line else 431, close=True)
            if end >= 0:
                return buf
            start = max(0, len(buf) - 3)
            data = await self._recv(c)
            if not data:
                c.buf = buf
                return None
            if not buf:
                data = data.lstrip(b"\r\n")  # blank lines before a request are ignored
                if not data:
                    continue
                c.deadline = time_() + self.header_timeout
            buf += data

    async def _recv(self, c: _Conn) -> bytes:
        while not c.timed_out:
            try:
                return c.sock.recv(_RECV)
            except BlockingIOError:
                await c.readable()
        return b""

    async def _send(self, c: _Conn, data: bytes, more: bool = False) -> None:
        assert self._loop is not None
        c.deadline = self._loop.time() + self.send_timeout
        try:
            n = c.sock.send(data, _MORE if more else 0)
        except BlockingIOError:
            n = 0
        if n < len(data):
            await self._loop.sock_sendall(c.sock, memoryview(data)[n:])

    async def _take_body(self, c: _Conn, req: _Request) -> None:
        """Read and drop a request body (bounded), so keep-alive stays in step."""
        h = req.headers
        length = h.get("content-length")
        if "transfer-encoding" in h:
            raise _HttpError(400 if length is not None else 411, close=True)
        expect = h.get("expect")
        if expect is not None and expect.lower() != "100-continue":
            raise _HttpError(417, close=True)
        if length is None:
            return
        if not _DIGITS.match(length):
            raise _HttpError(400, close=True)
        n = int(length)
        if n > self.max_body:
            raise _HttpError(413, close=True)
        if n == 0:
            return
        if expect is not None and not c.buf and req.minor >= 1:
            await self._send(c, b"HTTP/1.1 100 Continue\r\n\r\n")
        assert self._loop is not None
        c.deadline = self._loop.time() + self.header_timeout
        take = min(n, len(c.buf))
        c.buf = c.buf[take:]
        n -= take
        while n:
            data = await self._recv(c)
            if not data:
                raise ConnectionResetError(errno.ECONNRESET, "EOF inside the request body")
            if len(data) > n:
                c.buf = data[n:]
                data = data[:n]
            n -= len(data)

    async def _linger(self, c: _Conn) -> None:
        """Half-close, then drain briefly: closing with unread input would
        send a reset that can destroy the answer before the client reads it."""
        try:
            c.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return
        assert self._loop is not None
        c.deadline = self._loop.time() + min(_LINGER_SECONDS, self.header_timeout)
        got = 0
        try:
            while got < _LINGER_BYTES:
                data = await self._recv(c)
                if not data:
                    break
                got += len(data)
        except OSError:
            pass

    # -------------------------------------------------------------- answers

    async def _respond(self, c: _Conn, req: _Request, keep: bool) -> bool:
        """Answer a parsed request; returns whether to keep the connection."""
        if req.method not in ("GET", "HEAD"):
            raise _HttpError(405, f"Allow: {_ALLOW}\r\n")
        segments, path, query = _split_target(req.target)
        fd, st = self._open(segments)
        try:
            name = os.fsdecode(segments[-1]) if segments else ""
            if stat.S_ISDIR(st.st_mode):
                if not path.endswith(b"/"):
                    location = "/" + "/".join(urllib.parse.quote(s) for s in segments) + "/"
                    if query:
                        location += "?" + query.decode("ascii")
                    raise _HttpError(301, f"Location: {location}\r\n")
                index = self._open_index(segments)
                if index is None:
                    if not self.listing:
                        raise _HttpError(404)
                    try:
                        body = self._listing(fd, segments)
                    except OSError as exc:
                        raise _open_error(exc.errno) from None
                    await self._reply(c, 200, keep, "", req, body, "text/html; charset=utf-8")
                    return keep
                os.close(fd)
                fd, st = index
                name = "index.html"
            elif not stat.S_ISREG(st.st_mode):
                raise _HttpError(403)
            return await self._send_file(c, req, keep, fd, st, name)
        finally:
            os.close(fd)

    async def _send_file(
        self, c: _Conn, req: _Request, keep: bool, fd: int, st: os.stat_result, name: str
    ) -> bool:
        size = st.st_size
        etag = f'W/"{size:x}-{st.st_mtime_ns:x}"'
        modified = self._http_date(int(st.st_mtime))
        h = req.headers
        inm = h.get("if-none-match")
        if inm is not None:
            fresh = _etag_matches(inm, etag)
        else:
            ims = h.get("if-modified-since")
            since = _parse_date(ims) if ims is not None else None
            fresh = since is not None and int(st.st_mtime) <= since
        if fresh:
            await self._reply(c, 304, keep, f"ETag: {etag}\r\nLast-Modified: {modified}\r\n", req)
            return keep
        status, start, length, extra = 200, 0, size, ""
        spec = h.get("range")
        if spec is not None:
            if_range = h.get("if-range")
            if if_range is None or if_range.strip() == modified:
                r = _parse_range(spec, size)
                if r is _UNSATISFIABLE:
                    raise _HttpError(416, f"Content-Range: bytes */{size}\r\n")
                if r is not None:
                    start, end = r
                    status, length = 206, end - start + 1
                    extra = f"Content-Range: bytes {start}-{end}/{size}\r\n"
        _, date, _ = self._clock()
        head = (
            f"HTTP/1.1 {status} {_PHRASES[status]}\r\nServer: {_SERVER}\r\nDate: {date}\r\n"
            f"Content-Type: {self._type(name)}\r\nContent-Length: {length}\r\n"
            f"Last-Modified: {modified}\r\nETag: {etag}\r\nAccept-Ranges: bytes\r\n"
            f"{extra}{_connection(keep, req.minor)}\r\n"
        ).encode("latin-1")
        c.status = status
        if req.method == "HEAD" or length == 0:
            await self._send(c, head)
            return keep
        cork = length > _CORK_ABOVE
        if cork:
            c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        await self._send(c, head, more=True)
        await self._send_body(c, fd, start, length)
        if cork:
            c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)  # pushes the tail
        return keep

    async def _send_body(self, c: _Conn, fd: int, offset: int, count: int) -> None:
        """``count`` bytes of ``fd`` from ``offset`` by zcio.aio.sendfile, in
        slices that grow while the client keeps up (see send_timeout).

        First one non-blocking ``zcio.sendfile`` (the thin wrapper) of at most
        a slice: a small body usually fits the socket buffer at once, and that
        saves aio's per-call set-up, a third of a small request's cost.
        """
        assert self._loop is not None
        try:
            n = lowlevel.sendfile(c.fd, fd, offset, min(count, _FIRST_SLICE))
        except BlockingIOError:
            n = -1
        if n == 0:
            raise _Truncated()
        if n > 0:
            c.sent += n
            offset += n
            count -= n
        if count:
            c.stop_reading()  # the rest goes by aio, which registers the socket as it needs
        time_ = self._loop.time
        piece = _FIRST_SLICE
        while count:
            n = min(piece, count)
            started = time_()
            c.deadline = started + self.send_timeout
            try:
                sent = await aio.sendfile(c.sock, fd, offset, n)
            except OSError as exc:  # TransferError: some bytes may have gone
                c.sent += getattr(exc, "transferred", 0)
                raise
            c.sent += sent
            if sent < n:
                raise _Truncated()
            offset += n
            count -= n
            if time_() - started < self.send_timeout / 16:
                piece = min(piece * 2, _MAX_SLICE)

    async def _reply(
        self,
        c: _Conn,
        status: int,
        keep: bool,
        headers: str,
        req: Optional[_Request],
        body: Optional[bytes] = None,
        ctype: str = "text/plain; charset=utf-8",
    ) -> None:
        """A small answer built in memory: an error, a redirect, a 304, a listing."""
        minor = req.minor if req is not None else 1
        if body is None and status != 304:
            body = f"{status} {_PHRASES.get(status, '')}\n".encode()
        _, date, _ = self._clock()
        head = f"HTTP/1.1 {status} {_PHRASES.get(status, 'Unknown')}\r\nServer: {_SERVER}\r\nDate: {date}\r\n"
        if body is not None:
            head += f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
        head += f"{headers}{_connection(keep, minor)}\r\n"
        data = head.encode("latin-1")
        c.status = status
        if body and (req is None or req.method != "HEAD"):
            data += body
            c.sent = len(body)
        await self._send(c, data)

    # ------------------------------------------------------------ the files

    def _open(self, segments: List[bytes]) -> Tuple[int, os.stat_result]:
        """Open root/segments, confined to the root; (fd, fstat) or _HttpError.

        The fast path walks down from the root's fd refusing every symlink
        (O_NOFOLLOW at each step), so what it opens is inside the root by
        construction. A symlink on the way (ELOOP for the last component,
        ENOTDIR for a directory, as O_DIRECTORY|O_NOFOLLOW reports it) takes
        the slow path: ``os.path.realpath`` resolves the whole path and it is
        served only if ``os.path.commonpath`` puts it under the root.
        """
        try:
            fd = self._walk(segments)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise _open_error(exc.errno) from None
            real = self._confine(self._root + b"/" + b"/".join(segments))
            try:
                fd = os.open(real, _OPEN_FLAGS)
            except OSError as exc2:
                raise _open_error(exc2.errno) from None
        try:
            return fd, os.fstat(fd)
        except OSError as exc:
            os.close(fd)
            raise _open_error(exc.errno) from None

    def _walk(self, segments: List[bytes]) -> int:
        if not segments:
            return os.open(".", _OPEN_FLAGS, dir_fd=self._root_fd)
        dirs: List[int] = []
        try:
            at = self._root_fd
            for seg in segments[:-1]:
                at = os.open(seg, _DIR_FLAGS, dir_fd=at)
                dirs.append(at)
            return os.open(segments[-1], _OPEN_FLAGS, dir_fd=at)
        finally:
            for d in dirs:
                os.close(d)

    def _confine(self, path: bytes) -> bytes:
        real = os.path.realpath(path)
        if os.path.commonpath([self._root, real]) != self._root:
            raise _HttpError(403)
        return real

    def _open_index(self, segments: List[bytes]) -> Optional[Tuple[int, os.stat_result]]:
        try:
            fd, st = self._open(segments + [b"index.html"])
        except _HttpError as err:
            if err.status == 404:
                return None
            raise
        if stat.S_ISREG(st.st_mode):
            return fd, st
        os.close(fd)
        return None

    def _listing(self, fd: int, segments: List[bytes]) -> bytes:
        shown = html.escape("/" + "/".join(_display(s) for s in segments) + ("/" if segments else ""))
        rows = [] if not segments else ['<li><a href="../">../</a></li>']
        entries = []
        with os.scandir(fd) as it:
            for e in it:
                try:
                    is_dir = e.is_dir()
                except OSError:
                    is_dir = False
                entries.append((e.name, is_dir))
        for entry, is_dir in sorted(entries):
            raw = os.fsencode(entry)
            slash = "/" if is_dir else ""
            rows.append(f'<li><a href="{html.escape(urllib.parse.quote(raw))}{slash}">'
                        f"{html.escape(_display(raw))}{slash}</a></li>")
        page = (
            f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>Index of {shown}</title></head>\n'
            f"<body><h1>Index of {shown}</h1>\n<ul>\n" + "\n".join(rows) + "\n</ul></body></html>\n"
        )
        return page.encode("utf-8")

    def _type(self, name: str) -> str:
        ext = os.path.splitext(name)[1]
        ctype = self._types.get(ext)
        if ctype is None:
            guess, encoding = mimetypes.guess_type("x" + ext, strict=False)
            if encoding is not None:
                guess = _ENCODED_TYPES.get(encoding, "application/octet-stream")
            ctype = guess or "application/octet-stream"
            if len(self._types) < 1024:
                self._types[ext] = ctype
        return ctype

    # ---------------------------------------------------------- bookkeeping

    def _clock(self) -> Tuple[int, str, str]:
        """(second, HTTP date, access-log date), computed once a second."""
        now = int(time.time())
        if now != self._now[0]:
            t = time.gmtime(now)
            self._now = (
                now,
                email.utils.formatdate(now, usegmt=True),
                f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:"
                f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000",
            )
        return self._now

    def _http_date(self, seconds: int) -> str:
        date = self._dates.get(seconds)
        if date is None:
            date = email.utils.formatdate(seconds, usegmt=True)
            if len(self._dates) >= 4096:
                self._dates.clear()
            self._dates[seconds] = date
        return date

    def _log_access(self, c: _Conn) -> None:
        if not self.access_log or not access_log.isEnabledFor(logging.INFO):
            return
        access_log.info(
            '%s - - [%s] "%s" %d %d %.6f',
            c.peer, self._clock()[2], _log_text(c.line), c.status, c.sent, time.perf_counter() - c.t0,
        )


# ------------------------------------------------------------------ parsing


def _parse_head(head: bytes, max_headers: int, max_uri: int) -> _Request:
    """Request line and header fields (RFC 9112), strictly; _HttpError if bad."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise _HttpError(400, close=True)
    method, target, version = parts
    m = _VERSION.match(version)
    if not _METHOD.match(method) or not target or m is None:
        raise _HttpError(400, close=True)
    if m.group(1) != b"1":
        raise _HttpError(505, close=True)
    if len(target) > max_uri:
        raise _HttpError(414, close=True)
    if not _TARGET.match(target):
        raise _HttpError(400, close=True)
    if len(lines) - 1 > max_headers:
        raise _HttpError(431, close=True)
    headers: Dict[str, str] = {}
    for line in lines[1:]:
        f = _FIELD.match(line)
        if f is None:  # no colon, space before it, obs-fold, CR/LF/NUL in it
            raise _HttpError(400, close=True)
        name = f.group(1).decode("ascii").lower()
        value = f.group(2).decode("latin-1")
        old = headers.get(name)
        if old is None:
            headers[name] = value
        elif name in ("host", "content-length"):
            if name == "host" or old != value:
                raise _HttpError(400, close=True)
        else:
            headers[name] = old + ", " + value
    minor = int(m.group(2))
    if minor >= 1 and "host" not in headers:
        raise _HttpError(400, close=True)
    return _Request(method.decode("ascii"), target, minor, headers)


def _split_target(target: bytes) -> Tuple[List[bytes], bytes, bytes]:
    """(percent-decoded path segments, raw path, raw query); _HttpError if the
    target is not a path under the root."""
    if not target.startswith(b"/"):
        scheme, sep, rest = target.partition(b"://")
        if not sep or scheme.lower() not in (b"http", b"https"):
            raise _HttpError(400, close=True)
        cut = [i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0]
        target = rest[min(cut):] if cut else b"/"
        if not target.startswith(b"/"):
            target = b"/" + target
    path, _, query = target.partition(b"?")
    if b"%" not in path and b"/." not in path and b"\0" not in path and b"#" not in target:
        return [seg for seg in path.split(b"/") if seg], path, query  # nothing to decode or refuse
    if b"#" in target:
        raise _HttpError(400, close=True)
    segments = []
    for raw in path.split(b"/"):
        if not raw:
            continue
        seg = raw
        if b"\0" in raw:
            raise _HttpError(400, close=True)
        if b"%" in raw:
            if _BAD_ESCAPE.search(raw):
                raise _HttpError(400, close=True)
            seg = urllib.parse.unquote_to_bytes(raw)
            if b"/" in seg or b"\0" in seg:
                raise _HttpError(400, close=True)
        if seg == b"." or seg == b"..":
            raise _HttpError(403)
        segments.append(seg)
    return segments, path, query


def _parse_range(spec: str, size: int) -> Optional[Tuple[int, int]]:
    """One byte range as (first, last) inclusive; _UNSATISFIABLE; or None to
    ignore the header (malformed, not bytes, or several ranges)."""
    unit, sep, ranges = spec.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    parts = [p.strip() for p in ranges.split(",")]
    parts = [p for p in parts if p]
    if len(parts) != 1:
        return None
    m = _RANGE.match(parts[0])
    if m is None:
        return None
    first, last = m.groups()
    if first:
        a = int(first)
        b = int(last) if last else size - 1
        if last and b < a:
            return None
        if a >= size:
            return _UNSATISFIABLE
        return a, min(b, size - 1)
    if not last:
        return None
    n = int(last)
    if n == 0 or size == 0:
        return _UNSATISFIABLE
    return max(0, size - n), size - 1


def _etag_matches(header: str, etag: str) -> bool:
    """If-None-Match's weak comparison."""
    if header.strip() == "*":
        return True
    opaque = etag[2:] if etag.startswith("W/") else etag
    for tag in header.split(","):
        tag = tag.strip()
        if tag.startswith("W/"):
            tag = tag[2:]
        if tag == opaque:
            return True
    return False


def _parse_date(value: str) -> Optional[int]:
    """An HTTP-date as a Unix time, or None if it is not one."""
    try:
        t = email.utils.parsedate_tz(value)
        if t is None:
            return None
        if t[9] is None:  # no zone: HTTP dates are GMT
            t = t[:9] + (0,)
        return int(email.utils.mktime_tz(t))
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _open_error(err: Optional[int]) -> _HttpError:
    if err in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG):
        return _HttpError(404)
    if err in (errno.EACCES, errno.EPERM, errno.ELOOP, errno.ENXIO, errno.ENODEV, errno.EWOULDBLOCK):
        return _HttpError(403)
    if err in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
        return _HttpError(503)
    return _HttpError(500)


def _connection(keep: bool, minor: int) -> str:
    if not keep:
        return "Connection: close\r\n"
    return "Connection: keep-alive\r\n" if minor == 0 else ""


def _display(name: bytes) -> str:
    return name.decode("utf-8", "replace")


def _log_text(raw: bytes, limit: int = 300) -> str:
    """Client bytes made safe for a log line: no quotes, controls or newlines."""
    text = raw[:limit].decode("latin-1")
    if not text.isprintable() or '"' in text or "\\" in text:
        text = text.encode("unicode_escape").decode("ascii").replace('"', '\\"')
    return text + ("..." if len(raw) > limit else "")


# ------------------------------------------------------------------- entry


async def serve(
    directory: "os.PathLike[str] | str" = ".",
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    ready: Optional[Callable[[FileServer], Any]] = None,
    **options: Any,
) -> None:
    """Serve ``directory`` until cancelled (then close cleanly).

    Args:
        directory, host, port, options: as for :class:`FileServer`.
        ready: called with the started server (its ``port`` is bound).
    """
    server = FileServer(directory, host, port, **options)
    await server.start()
    try:
        if ready is not None:
            ready(server)
        await server.serve_forever()
    finally:
        await server.close()


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``zcio serve``."""
    p.add_argument("directory", nargs="?", default=".", metavar="DIR", help="directory to serve (default: .)")
    p.add_argument("--bind", "-b", default="127.0.0.1", metavar="ADDRESS", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", "-p", type=int, default=8000, help="TCP port (default: 8000; 0 picks a free one)")
    p.add_argument("--uvloop", action="store_true", help="run on uvloop if it is installed (default: asyncio's loop)")
    p.add_argument("--quiet", "-q", action="store_true", help="no access log")
    p.add_argument("--no-listing", dest="listing", action="store_false", help="404 for directories without index.html")
    p.add_argument("--max-connections", type=int, default=1000, metavar="N", help="open connections at most (default: 1000)")
    p.add_argument("--header-timeout", type=float, default=10.0, metavar="S", help="seconds to receive a request head (default: 10)")
    p.add_argument("--idle-timeout", type=float, default=15.0, metavar="S", help="keep-alive idle seconds (default: 15)")
    p.add_argument("--send-timeout", type=float, default=60.0, metavar="S", help="seconds a client may stall a download (default: 60)")


def main(
    args: argparse.Namespace,
    new_loop: Callable[[bool], Tuple[asyncio.AbstractEventLoop, str]],
) -> int:
    """``zcio serve``: run a FileServer until SIGINT or SIGTERM, on the loop
    ``new_loop(args.uvloop)`` makes (and names)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.WARNING if args.quiet else logging.INFO)
    log.propagate = False
    loop, kind = new_loop(args.uvloop)
    try:
        return loop.run_until_complete(_cli(args, kind))
    finally:
        loop.close()
        log.removeHandler(handler)


async def _cli(args: argparse.Namespace, kind: str) -> int:
    try:
        server = FileServer(
            args.directory, args.bind, args.port,
            max_connections=args.max_connections, header_timeout=args.header_timeout,
            idle_timeout=args.idle_timeout, send_timeout=args.send_timeout,
            listing=args.listing, access_log=not args.quiet,
        )
        await server.start()
    except (OSError, ValueError) as exc:
        print(f"zcio serve: {exc}", file=sys.stderr)
        return 1
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    host, port = server.address
    shown = f"[{host}]" if ":" in host else host
    print(f"zcio serve: {server.root} on http://{shown}:{port}/ ({kind}); Ctrl-C stops", file=sys.stderr, flush=True)
    runner = loop.create_task(server.serve_forever())
    stopper = loop.create_task(stop.wait())
    try:
        await asyncio.wait([runner, stopper], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        stopper.cancel()
        await server.close()
        await asyncio.gather(runner, stopper, return_exceptions=True)
    if runner.done() and not runner.cancelled() and runner.exception() is not None:
        print(f"zcio serve: {runner.exception()}", file=sys.stderr)
        return 1
    return 0
