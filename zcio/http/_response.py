"""Deciding HTTP/1.1 answers, without I/O (RFC 9110).

:func:`plan_file` decides the whole answer for a file -- preconditions
(412, 304), the range (206, 416), every header byte -- from the
:class:`~._request.Request` and a :class:`Representation` before a byte is
sent, as aiohttp's ``web_fileresponse`` does; :func:`plan_reply` builds the
small answers (errors, redirects, listings). Nothing here reads a clock, a
socket or a file: the caller passes the time.
"""
from __future__ import annotations

import email.utils
import http
import re

from .._version import __version__
from ._request import CONDITIONAL, Request

__all__ = [
    "ALLOW",
    "UNSATISFIABLE",
    "Plan",
    "Representation",
    "connection_field",
    "describe",
    "http_date",
    "parse_date",
    "parse_range",
    "plan_file",
    "plan_reply",
    "status_prefix",
]

SERVER = f"zcio/{__version__}"
ALLOW = "GET, HEAD"
PHRASES = {s.value: s.phrase for s in http.HTTPStatus}
UNSATISFIABLE = (-1, -1)
_RANGE = re.compile(r"([0-9]*)-([0-9]*)\Z")


def parse_range(spec: str, size: int) -> tuple[int, int] | None:
    """One byte range as ``(first, last)`` inclusive, within ``size``.

    Returns:
        The range; :data:`UNSATISFIABLE`; or None to ignore the header
        (malformed, another unit, or several ranges: the whole file is
        answered, which RFC 9110 section 14.2 allows).
    """
    unit, sep, ranges = spec.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    parts = [p for p in (p.strip() for p in ranges.split(",")) if p]
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
            return UNSATISFIABLE
        return a, min(b, size - 1)
    if not last:
        return None
    n = int(last)
    if n == 0 or size == 0:
        return UNSATISFIABLE
    return max(0, size - n), size - 1


def parse_date(value: str) -> int | None:
    """An HTTP-date as a Unix time, or None if it is not one."""
    try:
        t = email.utils.parsedate_tz(value)
        if t is None:
            return None
        if t[9] is None:  # no zone: HTTP dates are GMT
            t = (*t[:9], 0)
        return int(email.utils.mktime_tz(t))
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _opaque_tags(header: str) -> list[tuple[bool, str]]:
    """The entity-tags of an If-Match / If-None-Match list: (weak, opaque)."""
    tags = []
    for tag in header.split(","):
        tag = tag.strip()
        weak = tag.startswith("W/")
        tags.append((weak, tag[2:] if weak else tag))
    return tags


def http_date(seconds: float) -> str:
    """An IMF-fixdate (``Sun, 06 Nov 1994 08:49:37 GMT``)."""
    return email.utils.formatdate(seconds, usegmt=True)


class Representation:
    """What a file's answers say about it, computed once per (path, stat).

    The ETag is ``"<size>-<ctime_ns>"`` in hex: the inode's change time moves
    on every write, truncation, rename over it or backdated mtime, so the tag
    changes whenever the bytes may have. It is strong (it works for If-Range
    and If-Match) once the file has been left alone for a second; before
    that it is sent weak (``W/``), as Apache does, because a second change
    within the same clock tick could leave ctime and size as they were
    (RFC 9110 sections 8.8.1 and 8.8.2.2).

    Attributes:
        size, mtime: the file's size and modification time (whole seconds).
        etag: the ETag field value; ``strong`` says whether it is.
        last_modified: the Last-Modified value (never later than ``now``).
        fields: the file's header lines, each with CRLF: Content-Type,
            Last-Modified, ETag, Accept-Ranges.
        tail: Content-Length, ``fields`` and the blank line: how the head
            of a 200 ends.
        key: the stat facts the rest was built from (see :func:`describe`).
    """

    __slots__ = ("etag", "fields", "key", "last_modified", "mtime", "size", "strong", "tail")

    def __init__(self, key: bytes, size: int, mtime: int, etag: str, strong: bool,
                 last_modified: str, ctype: str) -> None:
        self.key = key
        self.size = size
        self.mtime = mtime
        self.etag = etag
        self.strong = strong
        self.last_modified = last_modified
        self.fields = (
            f"Content-Type: {ctype}\r\nLast-Modified: {last_modified}\r\nETag: {etag}\r\nAccept-Ranges: bytes\r\n"
        ).encode("latin-1")
        self.tail = b"Content-Length: %d\r\n" % size + self.fields + b"\r\n"  # how a 200's head ends


def describe(info: tuple[int, int, int, int, int], key: bytes, ctype: str, now: float) -> Representation:
    """The :class:`Representation` of a regular file from its stat facts.

    Args:
        info: ``(st_mode, st_ino, st_size, st_mtime_ns, st_ctime_ns)`` of the
            open file.
        key: what tells this version of the file from others (compared, not
            read), kept as the representation's ``key``.
        ctype: its Content-Type.
        now: the time (Unix seconds) the answer is decided.
    """
    _, _, size, mtime_ns, ctime_ns = info
    changed = max(mtime_ns, ctime_ns)
    strong = now * 1e9 - changed >= 1e9
    etag = f'"{size:x}-{ctime_ns:x}"'
    mtime = mtime_ns // 1_000_000_000
    shown = min(mtime, int(now))
    return Representation(key, size, shown, etag if strong else "W/" + etag, strong, http_date(shown), ctype)


class Plan:
    """A decided answer: ``head`` (for an answer built in memory, the body
    too), then ``length`` bytes of the file from ``offset``.

    Attributes:
        status: the status code (for the access log).
        head: the bytes to send first.
        keep: the connection goes on afterwards.
        offset, length: the file's bytes that follow (length 0: none).
        linger: after it the connection is closed by a half-close and a
            short drain (after an error, so that the client reads the
            answer, not a reset).
        log: it gets an access-log line (a 100 Continue does not).
        fd: the open file, set by whoever opened it (-1: none); the sender
            closes it.
    """

    __slots__ = ("fd", "head", "keep", "length", "linger", "log", "offset", "status")

    def __init__(self, status: int, head: bytes, keep: bool, offset: int = 0, length: int = 0,
                 linger: bool = False, log: bool = True) -> None:
        self.status = status
        self.head = head
        self.keep = keep
        self.offset = offset
        self.length = length
        self.linger = linger
        self.log = log
        self.fd = -1


def status_prefix(status: int, date: str) -> bytes:
    """The status line, Server and Date of an answer."""
    return f"HTTP/1.1 {status} {PHRASES.get(status, 'Unknown')}\r\nServer: {SERVER}\r\nDate: {date}\r\n".encode(
        "latin-1"
    )


def connection_field(keep: bool, minor: int) -> bytes:
    """The Connection field an answer needs (none for HTTP/1.1 keep-alive)."""
    if not keep:
        return b"Connection: close\r\n"
    return b"Connection: keep-alive\r\n" if minor == 0 else b""


def plan_file(req: Request, rep: Representation, keep: bool, prefix200: bytes, date: str) -> Plan:
    """Decide the answer to GET/HEAD of a file, before any I/O.

    Preconditions as RFC 9110 section 13.2.2 orders them: If-Match (strong
    comparison) or else If-Unmodified-Since fail with 412; If-None-Match
    (weak comparison) or else If-Modified-Since give 304. Then one byte
    range gives 206 (416 if it starts past the end), when there is no
    If-Range or it matches: a strong ETag by strong comparison, or a date
    equal to Last-Modified while the ETag is strong (section 13.1.5).

    Args:
        req: the request (GET or HEAD).
        rep: the file.
        keep: whether the connection stays open afterwards.
        prefix200: ``status_prefix(200, date)`` (cached by the caller).
        date: the Date value.
    """
    if req.plain:
        if keep and req.minor:
            return Plan(200, prefix200 + rep.tail, True, 0, rep.size if req.method == "GET" else 0)
        conn = connection_field(keep, req.minor)
        return Plan(200, prefix200 + conn + rep.tail, keep, 0, rep.size if req.method == "GET" else 0)
    h = req.headers
    conn = connection_field(keep, req.minor)
    head_only = req.method == "HEAD"
    status = _preconditions(h, rep) if not h.keys().isdisjoint(CONDITIONAL) else 0
    if status == 304:
        head = status_prefix(304, date) + f"ETag: {rep.etag}\r\nLast-Modified: {rep.last_modified}\r\n".encode(
            "latin-1") + conn + b"\r\n"
        return Plan(304, head, keep)
    if status == 412:
        return Plan(412, plan_reply(412, head_only, req.minor, keep, date), keep)
    spec = h.get("range")
    if spec is not None and _if_range(h.get("if-range"), rep):
        size = rep.size
        r = parse_range(spec, size)
        if r is UNSATISFIABLE:
            return Plan(416, plan_reply(416, head_only, req.minor, keep, date, f"Content-Range: bytes */{size}\r\n"),
                        keep)
        if r is not None:
            offset, last = r
            count = last - offset + 1
            head = (status_prefix(206, date) + conn
                    + f"Content-Length: {count}\r\nContent-Range: bytes {offset}-{last}/{size}\r\n".encode("ascii")
                    + rep.fields + b"\r\n")
            return Plan(206, head, keep, offset, 0 if head_only else count)
    return Plan(200, prefix200 + conn + rep.tail, keep, 0, 0 if head_only else rep.size)


def _preconditions(h: dict[str, str], rep: Representation) -> int:
    """412, 304 or 0 (go on), in the order of RFC 9110 section 13.2.2."""
    im = h.get("if-match")
    if im is not None:
        if im.strip() != "*" and not (rep.strong and (False, rep.etag) in _opaque_tags(im)):
            return 412
    else:
        ius = h.get("if-unmodified-since")
        since = parse_date(ius) if ius is not None else None
        if since is not None and rep.mtime > since:
            return 412
    inm = h.get("if-none-match")
    if inm is not None:
        if inm.strip() == "*":
            return 304
        mine = rep.etag.removeprefix("W/")
        if any(opaque == mine for _, opaque in _opaque_tags(inm)):
            return 304
        return 0
    ims = h.get("if-modified-since")
    since = parse_date(ims) if ims is not None else None
    if since is not None and rep.mtime <= since:
        return 304
    return 0


def _if_range(value: str | None, rep: Representation) -> bool:
    """Whether a Range applies given If-Range (RFC 9110 section 13.1.5)."""
    if value is None:
        return True
    value = value.strip()
    if not rep.strong:
        return False
    if value.startswith(('"', "W/")):
        return value == rep.etag  # strong comparison: a weak tag never matches
    return value == rep.last_modified


def plan_reply(status: int, head_only: bool, minor: int, keep: bool, date: str, headers: str = "",
               body: bytes | None = None, ctype: str = "text/plain; charset=utf-8") -> bytes:
    """A small answer built in memory: an error, a redirect, a listing.

    Args:
        status: the status code.
        head_only: a HEAD request (no body bytes, the same head).
        minor: the request's HTTP/1.x minor version.
        keep: whether the connection stays open.
        date: the Date value.
        headers: extra header lines, each ending in CRLF.
        body: the body; None for the status line as text.
        ctype: the body's Content-Type.

    Returns:
        The head and the body, ready to send.
    """
    if body is None:
        body = f"{status} {PHRASES.get(status, '')}\n".encode()
    head = (status_prefix(status, date)
            + f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n{headers}".encode("latin-1")
            + connection_field(keep, minor) + b"\r\n")
    return head if head_only else head + body
