"""Request semantics: from a parsed request to a decided :class:`~._response.Plan`.

A :class:`Site` maps the target to what the root holds (a file, an index, a
listing, a redirect, a refusal) and has :mod:`._response` decide the answer.
It opens files but never touches a socket: the plan it returns carries the
whole head and, for a body from a file, the open fd and the byte range.

Per request it costs one confined open and one fstat; the rest is cached:
a file's header lines (:class:`~._response.Representation`) are built once
per path and stat, the Date and the 200 status line once a second.
"""
from __future__ import annotations

import os
import stat
import time
import urllib.parse

from ._request import HttpError, Request, split_target
from ._resources import Root, facts, open_error
from ._response import (
    ALLOW,
    Plan,
    Representation,
    describe,
    http_date,
    plan_file,
    plan_reply,
    status_prefix,
)

__all__ = ["CONTINUE", "Clock", "Site"]

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MAX_CACHED = 4096


CONTINUE = Plan(100, b"HTTP/1.1 100 Continue\r\n\r\n", True, log=False)


class Clock:
    """Wall-clock strings, computed once a second: the HTTP Date, the 200
    status line with it, and the access log's date.

    The server calls :meth:`tick` from a timer just after each second
    begins, so that answers read the strings without looking at the time;
    the slower paths call it too.
    """

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

    def answer(self, req: Request, keep: bool) -> Plan:
        """The answer to ``req``; the connection stays open after it if ``keep``.

        Raises:
            HttpError: 405, 400, 403, 404, 301, 503, 500 (see :meth:`error`).
        """
        path = req.path
        if path is not None:  # next_request's fast path: GET or HEAD of a plain path
            rel = path.strip(b"/")
            if rel.find(b"//") >= 0:
                rel = b"/".join(seg for seg in rel.split(b"/") if seg)
        else:
            if req.method not in ("GET", "HEAD"):
                raise HttpError(405, f"Allow: {ALLOW}\r\n")
            segments, path, _ = split_target(req.target)
            rel = b"/".join(segments)
        fd, record = self.root.lookup(rel)
        try:
            rep = self._reps.get(rel)
            if rep is not None and rep.key == record and path[-1] != 47:
                return self._plan(req, keep, fd, rep)  # the same file as last time
            mode = facts(record)[0]
            if stat.S_ISREG(mode):
                if path[-1] == 47:  # "/": a file is not a directory (as open("file/") says)
                    raise HttpError(404)
                return self._file(req, keep, fd, record, rel)
            if not stat.S_ISDIR(mode):
                raise HttpError(403)
            segments = rel.split(b"/") if rel else []
            if not path.endswith(b"/"):
                location = "/" + "/".join(urllib.parse.quote(s) for s in segments) + "/"
                query = split_target(req.target)[2]
                if query:
                    location += "?" + query.decode("ascii")
                raise HttpError(301, f"Location: {location}\r\n")
            index = self.root.index(rel)
            if index is None:
                return self._listing(req, keep, fd, segments)
            os.close(fd)
            fd, record = index
            return self._file(req, keep, fd, record, rel + b"/index.html" if rel else b"index.html")
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise

    def _file(self, req: Request, keep: bool, fd: int, record: bytes | bytearray, rel: bytes) -> Plan:
        """A regular file not described yet (or changed); takes ``fd``."""
        rep = self._reps.get(rel)
        if rep is None or rep.key != record or not rep.strong:
            ctype = self.root.content_type(rel.rpartition(b"/")[2])
            rep = describe(facts(record), bytes(record), ctype, time.time())
            if rep.strong:
                if len(self._reps) >= _MAX_CACHED:
                    self._reps.clear()
                self._reps[rel] = rep
        return self._plan(req, keep, fd, rep)

    def _plan(self, req: Request, keep: bool, fd: int, rep: Representation) -> Plan:
        """The answer for the file ``rep`` open as ``fd``, which it takes."""
        clock = self.clock
        plan = plan_file(req, rep, keep, clock.prefix200, clock.date)
        if plan.length:
            plan.fd = fd
        else:
            os.close(fd)
        return plan

    def _listing(self, req: Request, keep: bool, fd: int, segments: list[bytes]) -> Plan:
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
        return Plan(200, head, keep)

    def error(self, err: HttpError, req: Request | None, keep: bool) -> Plan:
        """The answer for an HttpError (the request may be unknown: None).

        The connection closes after it if ``err.close`` (then lingering) or
        not ``keep``.
        """
        keep = keep and not err.close
        self.clock.tick()
        head_only = req is not None and req.method == "HEAD"
        minor = req.minor if req is not None else 1
        data = plan_reply(err.status, head_only, minor, keep, self.clock.date, err.headers)
        return Plan(err.status, data, keep, linger=err.close)
