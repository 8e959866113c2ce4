"""Request semantics: from a parsed request to a decided :class:`Reply`.

A :class:`Site` maps the target to what the root holds (a file, an index, a
listing, a redirect, a refusal) and has :mod:`._protocol` decide the answer.
It opens files but never touches a socket: the reply it returns carries the
whole head and, for a body from a file, the open fd and the byte range.

Per request it costs one confined open and one fstat; the rest is cached:
a file's header lines (:class:`~._protocol.Representation`) are built once
per path and stat, the Date and the 200 status line once a second.
"""
from __future__ import annotations

import os
import stat
import time
import urllib.parse

from ._protocol import (
    ALLOW,
    HttpError,
    Representation,
    Request,
    describe,
    http_date,
    plan_file,
    plan_reply,
    split_target,
    status_prefix,
)
from ._resources import Root, open_error

__all__ = ["Clock", "Reply", "Site"]

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MAX_CACHED = 4096
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Reply:
    """A decided answer: ``head`` (for in-memory answers the body too), then
    ``count`` bytes of the file ``fd`` from ``offset`` (fd -1: none).

    Whoever sends it closes ``fd``. ``keep``: the connection goes on
    afterwards; ``linger``: it is closed by a half-close and a short drain
    (after an error, so that the client reads the answer, not a reset);
    ``log``: it gets an access-log line (not a 100 Continue).
    """

    __slots__ = ("count", "fd", "head", "keep", "linger", "log", "offset", "status")

    def __init__(self, status: int, head: bytes, keep: bool, fd: int = -1, offset: int = 0, count: int = 0,
                 *, linger: bool = False, log: bool = True) -> None:
        self.status = status
        self.head = head
        self.fd = fd
        self.offset = offset
        self.count = count
        self.keep = keep
        self.linger = linger
        self.log = log


CONTINUE = Reply(100, _CONTINUE, True, log=False)


class Clock:
    """Wall-clock strings, computed once a second: the HTTP Date, the 200
    status line with it, and the access log's date."""

    __slots__ = ("date", "log_date", "prefix200", "second")

    def __init__(self) -> None:
        self.second = -1
        self.date = ""
        self.prefix200 = b""
        self.log_date = ""

    def tick(self) -> float:
        """The time now (Unix seconds); refreshes the strings if a new second began."""
        now = time.time()
        second = int(now)
        if second != self.second:
            t = time.gmtime(second)
            self.second = second
            self.date = http_date(second)
            self.prefix200 = status_prefix(200, self.date)
            self.log_date = (f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:"
                             f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000")
        return now


class Site:
    """What ``root`` answers to GET and HEAD.

    Args:
        root: the served directory (opened by the caller).
        listing: list directories without index.html (else 404).
    """

    def __init__(self, root: Root, listing: bool = True) -> None:
        self.root = root
        self.listing = listing
        self.clock = Clock()
        self._reps: dict[bytes, Representation] = {}

    def answer(self, req: Request, keep: bool) -> Reply:
        """The reply to ``req``; the connection stays open after it if ``keep``.

        Raises:
            HttpError: 405, 400, 403, 404, 301, 503, 500 (see :meth:`error`).
        """
        if req.method not in ("GET", "HEAD"):
            raise HttpError(405, f"Allow: {ALLOW}\r\n")
        segments, path, query = split_target(req.target)
        rel = b"/".join(segments)
        fd, st = self.root.lookup(rel)
        try:
            if stat.S_ISREG(st.st_mode):
                if path.endswith(b"/"):
                    raise HttpError(404)  # a file is not a directory (as open("file/") says)
                return self._file(req, keep, fd, st, rel, segments[-1])
            if not stat.S_ISDIR(st.st_mode):
                raise HttpError(403)
            if not path.endswith(b"/"):
                location = "/" + "/".join(urllib.parse.quote(s) for s in segments) + "/"
                if query:
                    location += "?" + query.decode("ascii")
                raise HttpError(301, f"Location: {location}\r\n")
            index = self.root.index(rel)
            if index is None:
                return self._listing(req, keep, fd, segments)
            os.close(fd)
            fd, st = index
            return self._file(req, keep, fd, st, rel + b"/index.html" if rel else b"index.html", b"index.html")
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise

    def _file(self, req: Request, keep: bool, fd: int, st: os.stat_result, rel: bytes, name: bytes) -> Reply:
        """Takes ``fd``: it is in the reply, or closed."""
        now = self.clock.tick()
        rep = self._reps.get(rel)
        if rep is None or rep.key != (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) or not rep.strong:
            rep = describe(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, self.root.content_type(name), now)
            if rep.strong:
                if len(self._reps) >= _MAX_CACHED:
                    self._reps.clear()
                self._reps[rel] = rep
        plan = plan_file(req, rep, keep, self.clock.prefix200, self.clock.date)
        if not plan.length:
            os.close(fd)
            fd = -1
        return Reply(plan.status, plan.head, keep, fd, plan.offset, plan.length)

    def _listing(self, req: Request, keep: bool, fd: int, segments: list[bytes]) -> Reply:
        if not self.listing:
            raise HttpError(404)
        try:
            body = self.root.listing(fd, segments)
        except OSError as exc:
            raise open_error(exc.errno) from None
        os.close(fd)
        self.clock.tick()
        head = plan_reply(200, req.method == "HEAD", req.minor, keep, self.clock.date, body=body,
                          ctype="text/html; charset=utf-8")
        return Reply(200, head, keep)

    def error(self, err: HttpError, req: Request | None, keep: bool) -> Reply:
        """The reply for an HttpError (the request may be unknown: None).

        The connection closes after it if ``err.close`` (then lingering) or
        not ``keep``.
        """
        keep = keep and not err.close
        self.clock.tick()
        head_only = req is not None and req.method == "HEAD"
        minor = req.minor if req is not None else 1
        data = plan_reply(err.status, head_only, minor, keep, self.clock.date, err.headers)
        return Reply(err.status, data, keep, linger=err.close)
