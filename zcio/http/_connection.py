"""One client connection of the file server: the socket and the loop, nothing else.

A connection is driven by loop callbacks, not by a task: a reader stays
registered on its non-blocking socket, and each time it fires the
connection takes what arrived with one ``recv``, cuts complete request heads
out of it (:class:`~._request.Reader`), has the :class:`~._answers.Site`
decide each answer and sends it at once -- the head with one ``send``
(``MSG_MORE``), the body with one non-blocking ``zcio.sendfile``. A small
file thus costs no task, no future and no exception. Only an answer the
socket does not take at once goes on in a task (``loop.sock_sendall`` and
:func:`zcio.aio.sendfile` in slices), with the reader removed meanwhile;
reading resumes when it is done.

Timeouts are deadlines (a float) that the server's sweeper checks; it shuts
a late connection's socket down, which every state notices as EOF or EPIPE.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import time
from typing import TYPE_CHECKING

from .. import aio
from ..lowlevel import sendfile
from ._answers import CONTINUE
from ._request import HttpError, Request, admit, first_line, keep_alive
from ._response import Plan

if TYPE_CHECKING:  # pragma: no cover
    from .server import FileServer

__all__ = ["Connection"]

log = logging.getLogger("zcio.serve")
access_log = logging.getLogger("zcio.serve.access")

_RECV = 64 << 10
_MORE = getattr(socket, "MSG_MORE", 0)
_FIRST_SLICE = 1 << 20
_MAX_SLICE = 64 << 20
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 256 << 10
_BURST = 16  # pipelined requests answered in one callback before the others get a turn


class _Truncated(Exception):
    """The file shrank while it was being sent: the response is short."""


def log_text(raw: bytes, limit: int = 300) -> str:
    """Client bytes made safe for a log line: no quotes, controls or newlines."""
    text = raw[:limit].decode("latin-1")
    if not text.isprintable() or '"' in text or "\\" in text:
        text = text.encode("unicode_escape").decode("ascii").replace('"', '\\"')
    return text + ("..." if len(raw) > limit else "")


class _Client:
    """A client's socket and its lifetime: the reader registration, the
    endings (close, shutdown, lingering) and the logs. It owns the socket and
    closes it; the server's sweeper and :meth:`abort` only shut it down.
    :class:`Connection` adds the HTTP exchange."""

    __slots__ = ("closed", "deadline", "drained", "fd", "line", "lingering", "logging", "loop", "peer",
                 "reading", "sent", "server", "site", "sock", "status", "t0", "task", "timed_out")

    def __init__(self, server: FileServer, sock: socket.socket, peer: str) -> None:
        self.server = server
        self.site = server.site
        self.loop = server.loop
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.deadline = self.loop.time() + server.header_timeout
        self.timed_out = False
        self.reading = False
        self.closed = False
        self.lingering = False
        self.drained = 0
        self.task: asyncio.Task[None] | None = None  # an answer that did not go at once
        self.line = b""  # the request line as received, for the logs
        self.status = 0
        self.sent = 0  # body bytes of the current answer
        self.t0 = 0.0
        self.logging = server.access_log and access_log.isEnabledFor(logging.INFO)

    def _on_readable(self) -> None:  # pragma: no cover - Connection's
        raise NotImplementedError

    async def _send_slices(self, fd: int, offset: int, count: int) -> None:
        """``count`` bytes of ``fd`` from ``offset`` by zcio.aio.sendfile, in
        slices that grow while the client keeps up (see send_timeout)."""
        time_ = self.loop.time
        send_timeout = self.server.send_timeout
        piece = _FIRST_SLICE
        while count:
            n = min(piece, count)
            started = time_()
            self.deadline = started + send_timeout
            try:
                sent = await aio.sendfile(self.sock, fd, offset, n)
            except OSError as exc:  # TransferError: some bytes may have gone
                self.sent += getattr(exc, "transferred", 0)
                raise
            self.sent += sent
            if sent < n:
                raise _Truncated()
            offset += n
            count -= n
            if time_() - started < send_timeout / 16:
                piece = min(piece * 2, _MAX_SLICE)

    def _read(self) -> None:
        if not self.reading and not self.closed:
            self.loop.add_reader(self.fd, self._on_readable)
            self.reading = True

    def _unread(self) -> None:
        if self.reading:
            self.loop.remove_reader(self.fd)
            self.reading = False

    def _linger(self) -> None:
        """Half-close, then drain briefly: closing with unread input would
        send a reset that can destroy the answer before the client reads it."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close()
            return
        self.lingering = True
        self.deadline = self.loop.time() + min(_LINGER_SECONDS, self.server.header_timeout)
        self._read()

    def abort(self) -> None:
        """Shut the socket down: whatever the connection waits for ends."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        """Close the socket now (idempotent); a reply in a task is cancelled."""
        if self.closed:
            return
        self.closed = True
        self._unread()
        task, self.task = self.task, None
        if task is not None and task is not asyncio.current_task(self.loop):
            task.cancel()
        self.sock.close()
        self.server.forget(self)

    def _failed(self, exc: BaseException) -> None:
        if isinstance(exc, _Truncated):
            self._log_access()
            log.warning('%s: "%s": the file shrank while it was sent; connection closed',
                        self.peer, log_text(self.line))
            self.close()
        else:
            assert isinstance(exc, OSError)
            self._lost(exc)

    def _lost(self, exc: OSError) -> None:
        """The client went away, or a timeout shut the socket down."""
        if self.status:
            self._log_access()
        if not self.server.closing and not self.lingering:
            why = "timed out" if self.timed_out else (exc.strerror or str(exc))
            log.info('%s: connection lost (%s) after %d body bytes of "%s"',
                     self.peer, why, self.sent, log_text(self.line))
        self.close()

    def _log_access(self) -> None:
        if not self.logging:
            return
        access_log.info(
            '%s - - [%s] "%s" %d %d %.6f',
            self.peer, self.site.clock.log_date, log_text(self.line), self.status, self.sent,
            time.perf_counter() - self.t0,
        )


class Connection(_Client):
    """One accepted client: requests read, answered and sent in order."""

    __slots__ = ("body_left", "buf", "idle_timeout", "pending", "started")

    def __init__(self, server: FileServer, sock: socket.socket, peer: str) -> None:
        super().__init__(server, sock, peer)
        self.buf = b""
        self.idle_timeout = server.idle_timeout
        self.started = False  # the head being received has begun (its deadline is set)
        self.body_left = 0  # request body bytes still to read and drop
        self.pending: Request | None = None  # the request whose body is being dropped

    def start(self) -> None:
        """Begin reading requests."""
        self._read()

    def _on_readable(self) -> None:
        try:
            try:
                data = self.sock.recv(_RECV)
            except (BlockingIOError, InterruptedError):
                return
            if self.lingering:
                self.drained += len(data)
                if not data or self.drained >= _LINGER_BYTES:
                    self.close()
                return
            if not data:
                self._eof()
                return
            self.buf = self.buf + data if self.buf else data
            self._advance()
        except OSError as exc:
            self._lost(exc)
        except Exception:  # a bug: say so, keep serving the others
            log.exception('%s: internal error on "%s"', self.peer, log_text(self.line))
            self.close()

    def _resume(self) -> None:
        if self.closed:
            return
        self._read()
        try:
            self._advance()
        except OSError as exc:
            self._lost(exc)
        except Exception:
            log.exception('%s: internal error on "%s"', self.peer, log_text(self.line))
            self.close()

    def _advance(self) -> None:
        """Answer what the buffer holds, in order, while replies go at once."""
        server = self.server
        site = self.site
        for _ in range(_BURST):
            if self.body_left:
                if not self._drop_body():
                    return
                req, self.pending = self.pending, None
                assert req is not None
                if not self._answer(req):
                    return
                continue
            if not self.buf:
                return
            try:
                req, rest = server.reader.next(self.buf)
            except HttpError as err:
                self._begin(first_line(self.buf))
                self.buf = b""
                self._send(site.error(err, None, False))
                return
            self.buf = rest
            if req is None:
                if rest and not self.started:
                    self.started = True
                    self.deadline = self.loop.time() + server.header_timeout
                return
            self.line = req.line
            if self.logging:
                self.t0 = time.perf_counter()
            if req.plain:  # the usual request: no body, nothing conditional
                keep = req.minor == 1 and not server.closing
            else:
                keep = keep_alive(req) and not server.closing
                try:
                    n = admit(req, server.max_body)
                except HttpError as err:
                    self._send(site.error(err, req, False))
                    return
                if n:  # the whole body within one header_timeout, however it trickles
                    self.body_left, self.pending = n, req
                    self.deadline = self.loop.time() + server.header_timeout
                    expects = "expect" in req.headers and not self.buf and req.minor >= 1
                    if expects and not self._send(CONTINUE):
                        return
                    continue
            if not self._answer(req, keep):
                return
        if self.buf:  # more pipelined requests: let the other connections have a turn
            self._unread()
            self.loop.call_soon(self._resume)

    def _begin(self, line: bytes) -> None:
        """A request starts (not the usual way): ``line`` is its request line."""
        self.t0 = time.perf_counter()
        self.line, self.status, self.sent = line, 0, 0

    def _drop_body(self) -> bool:
        """Drop body bytes from the buffer; whether the body is complete."""
        take = min(self.body_left, len(self.buf))
        self.buf = self.buf[take:]
        self.body_left -= take
        return not self.body_left

    def _answer(self, req: Request, keep: bool | None = None) -> bool:
        """Send the answer to ``req``; whether the next request may follow.
        ``keep``: keep the connection alive (None: as the request asks)."""
        if keep is None:
            keep = keep_alive(req) and not self.server.closing
        try:
            reply = self.site.answer(req, keep)
        except HttpError as err:
            reply = self.site.error(err, req, keep)
        return self._send(reply)

    def _eof(self) -> None:
        """The client sent EOF (or a timeout or close() shut the socket)."""
        pending = self.buf.strip(b"\r\n")
        if self.timed_out:
            if pending:
                log.info("%s: request head not complete in %g s; closed", self.peer, self.server.header_timeout)
            self.close()
        elif self.body_left:
            self._lost(ConnectionResetError(errno.ECONNRESET, "EOF inside the request body"))
        elif pending and not self.server.closing:
            # A head cut short by EOF: say so (RFC 9112 section 9.6 allows it).
            self._begin(first_line(pending))
            self.buf = b""
            self._send(self.site.error(HttpError(400, close=True), None, False))
        else:
            self.close()

    def _send(self, plan: Plan) -> bool:
        """Send ``plan`` now if the socket takes it, else in a task.

        Returns:
            Whether the connection may go on with the next request now.
        """
        head, fd, offset, count = plan.head, plan.fd, plan.offset, plan.length
        if plan.log:
            self.status, self.sent = plan.status, 0
        try:
            try:
                n = self.sock.send(head, _MORE if count else 0)
            except BlockingIOError:
                n = 0
            if count and n == len(head):
                try:
                    m = sendfile(self.fd, fd, offset, min(_FIRST_SLICE, count))
                except BlockingIOError:
                    m = -1
                if m == count:  # the usual small file: all gone at once
                    os.close(fd)
                    self.sent = m
                    return self._done(plan)
                if m == 0:
                    raise _Truncated()
                if m > 0:
                    self.sent = m
                    offset += m
                    count -= m
            if n < len(head) or count:
                self._unread()
                self.task = self.loop.create_task(self._finish(plan, head[n:], offset, count))
                return False
        except (_Truncated, OSError) as exc:
            if fd >= 0:
                os.close(fd)
            self._failed(exc)
            return False
        if fd >= 0:
            os.close(fd)
        return self._done(plan)

    def _done(self, plan: Plan) -> bool:
        """A plan went out entirely; whether the next request may follow."""
        if plan.keep and plan.log:
            if self.logging:
                self._log_access()
            self.started = False
            self.status = 0  # logged: a connection lost from here on has no answer to log
            self.deadline = self.loop.time() + self.idle_timeout
            return True
        if plan.log and self.logging:
            self._log_access()
        if plan.keep:
            return True
        if plan.linger and not self.server.closing:
            self._linger()
        else:
            self.close()
        return False

    async def _finish(self, reply: Plan, rest: bytes, offset: int, count: int) -> None:
        """The part of ``reply`` the socket did not take at once."""
        loop = self.loop
        try:
            if rest:
                self.deadline = loop.time() + self.server.send_timeout
                await loop.sock_sendall(self.sock, rest)
            if count:
                await self._send_slices(reply.fd, offset, count)
        except (_Truncated, OSError) as exc:
            self._failed(exc)
            return
        except asyncio.CancelledError:
            self.close()
            raise
        except Exception:
            log.exception('%s: internal error on "%s"', self.peer, log_text(self.line))
            self.close()
            return
        finally:
            self.task = None
            if reply.fd >= 0:
                os.close(reply.fd)
        if self._done(reply):
            self._resume()
