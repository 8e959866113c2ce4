"""HTTP/1.1 for the file server, without I/O (RFC 9110, RFC 9112).

Three jobs, kept apart as h11 keeps grammar, buffer and state apart:

- framing: :func:`take_head` cuts the next request head out of the bytes
  received so far, drops the empty lines allowed before it, accepts a bare LF
  as a line end (RFC 9112 section 2.2) and refuses what cannot become a
  request (a TLS ClientHello, an oversized line or head) as soon as it shows;
- grammar: :func:`parse_head` turns a head into a :class:`Request`, strictly;
  :func:`split_target`, :func:`parse_range` and :func:`parse_date` read the
  parts a file server uses;
- decisions: :func:`body_length` says what to do with a request body, and
  :func:`plan_file` decides the whole answer for a file -- preconditions
  (412, 304), the range (206, 416), every header byte -- from the request and
  a :class:`Representation` before a byte is sent. :func:`plan_reply` builds
  the small answers (errors, redirects, listings).

Nothing here reads a clock, a socket or a file: the caller passes the time.
"""
from __future__ import annotations

import email.utils
import http
import re
import urllib.parse
from typing import NamedTuple

from .._version import __version__

__all__ = [
    "HttpError",
    "Limits",
    "Plan",
    "Representation",
    "Request",
    "body_length",
    "connection_field",
    "describe",
    "http_date",
    "keep_alive",
    "parse_date",
    "parse_head",
    "parse_range",
    "plan_file",
    "plan_reply",
    "split_target",
    "status_prefix",
    "take_head",
]

SERVER = f"zcio/{__version__}"
ALLOW = "GET, HEAD"
PHRASES = {s.value: s.phrase for s in http.HTTPStatus}

_TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_METHOD = re.compile(_TCHAR + rb"+\Z")
_FIELD = re.compile(rb"(" + _TCHAR + rb"+):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*?)[ \t]*\Z")
_TARGET = re.compile(rb"[\x21-\x7e]+\Z")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])\Z")
# What the start of a request line may look like before its end has arrived.
_LINE_START = re.compile(
    rb"(?:" + _TCHAR
    + rb"+(?: [\x21-\x7e]*(?: (?:H(?:T(?:T(?:P(?:/(?:[0-9](?:\.(?:[0-9]\r?)?)?)?)?)?)?)?)?)?)?)?\Z"
)
_BLANK_LINE = re.compile(rb"\n\r?\n")
# What the fast path allows (see next_request): on a line (HTAB, SP, VCHAR,
# obs-text), in a target (VCHAR but "#") and in its path (nor "%"), in a
# field name (tchar); _CRLFS[n] is what a head of n fields has besides.
_LINE_BYTES = bytes([9, *range(0x20, 0x7F), *range(0x80, 0x100)])
_TARGET_BYTES = bytes(c for c in range(0x21, 0x7F) if c != 0x23)
_PATH_BYTES = bytes(c for c in range(0x21, 0x7F) if c not in (0x23, 0x25, 0x3F))
_TCHAR_BYTES = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_CRLFS = tuple(b"\r\n" * n for n in range(101))
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_DIGITS = re.compile(r"[0-9]+\Z")
_RANGE = re.compile(r"([0-9]*)-([0-9]*)\Z")
_SLACK = 64  # a request line may exceed max_uri by this much (method, version)

UNSATISFIABLE = (-1, -1)
# Headers that take a file answer off the fast path (plan_file looks at them).
_CONDITIONAL = frozenset(
    ("if-match", "if-none-match", "if-modified-since", "if-unmodified-since", "range", "if-range")
)
# Fields that make a request not plain (see Request.plain).
_SPECIAL = _CONDITIONAL | {"connection", "content-length", "transfer-encoding", "expect"}


class HttpError(Exception):
    """An answer other than the one asked for.

    Attributes:
        status: the status code.
        headers: extra header lines, each ending in CRLF.
        close: the connection must close after the answer.
    """

    def __init__(self, status: int, headers: str = "", *, close: bool = False) -> None:
        super().__init__(status)
        self.status = status
        self.headers = headers
        self.close = close


class Limits(NamedTuple):
    """Bounds on a request head."""

    max_header_bytes: int = 16 << 10  # request line and fields (else 431; 414 for a long line)
    max_headers: int = 100  # fields (else 431)
    max_uri: int = 8 << 10  # the request-target (else 414)


class Request:
    """A parsed request head.

    Attributes:
        method: e.g. ``"GET"``.
        target: the request-target, raw.
        minor: the HTTP/1.x minor version.
        headers: field names in lower case; repeated fields joined with ``", "``.
        line: the request line as received (for the access log).
        path: the target's path when the fast path found it plain, else None.
        plain: set by the fast path when no field bears on the answer
            (Connection, a body, a precondition or a range).
    """

    __slots__ = ("headers", "line", "method", "minor", "path", "plain", "target")

    def __init__(self, method: str, target: bytes, minor: int, headers: dict[str, str], line: bytes,
                 path: bytes | None = None, plain: bool = False) -> None:
        self.method = method
        self.target = target
        self.minor = minor
        self.headers = headers
        self.line = line
        self.path = path  # the target's path when it needs no decoding (see next_request)
        self.plain = plain  # no field that changes the answer: no body, no condition, no Connection


# ------------------------------------------------------------------ framing


def next_request(buf: bytes, limits: Limits) -> tuple[Request | None, bytes]:
    """The next request in ``buf``: :func:`take_head` and :func:`parse_head`
    in one step, with a fast path for the usual shape.

    The fast path takes a head whose lines all end in CRLF, whose method is
    GET or HEAD, whose version is HTTP/1.0 or 1.1, whose target is a plain
    path (no ``%``, no segment starting with ``.``) with an optional query,
    and whose fields are not repeated; it checks them with bytes methods
    rather than regular expressions. It accepts a subset of what the general
    parser accepts and reads it the same way (the tests hold it to that);
    anything else, and anything near a limit, takes the general path.

    Returns:
        ``(request, rest)``: the request (None while its head is not
        complete) and the bytes after its head.

    Raises:
        HttpError: as :func:`take_head` and :func:`parse_head`.
    """
    end = buf.find(b"\r\n\r\n")
    if 0 < end <= limits.max_header_bytes:
        req = _fast_head(buf[:end], limits)
        if req is not None:
            return req, buf[end + 4 :]
    head, rest = take_head(buf, limits)
    if head is None:
        return None, rest
    return parse_head(head, limits), rest


class Reader:
    """:func:`next_request` with a memo: a head seen before is not parsed
    again.

    A head is a pure function's input and a :class:`Request` is never
    changed after it is made, so the same head bytes (clients repeat
    theirs: the same fields, often the same target) can share one. The memo
    holds heads up to 2 KiB of the usual shape, at most 4096 of them (then it
    starts afresh).

    Args:
        limits: the bounds to enforce.
    """

    __slots__ = ("_memo", "limits")

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._memo: dict[bytes, Request] = {}

    def next(self, buf: bytes) -> tuple[Request | None, bytes]:
        """As :func:`next_request` (the same results and errors)."""
        end = buf.find(b"\r\n\r\n")
        if 0 < end <= _MEMO_HEAD:
            head = buf[:end]
            req = self._memo.get(head)
            if req is None and end <= self.limits.max_header_bytes:
                req = _fast_head(head, self.limits)
                if req is not None:
                    if len(self._memo) >= _MEMO_SIZE:
                        self._memo.clear()
                    self._memo[head] = req
            if req is not None:
                return req, buf[end + 4 :]
        return next_request(buf, self.limits)


_MEMO_HEAD = 2048
_MEMO_SIZE = 4096


def _fast_head(head: bytes, limits: Limits) -> Request | None:
    """The usual head (see next_request), or None to take the general path."""
    lines = head.split(b"\r\n")
    fields = len(lines) - 1
    if fields > limits.max_headers or fields >= len(_CRLFS) or head.translate(None, _LINE_BYTES) != _CRLFS[fields]:
        return None  # a control, a NUL, a bare CR or LF
    line = lines[0]
    parts = line.split(b" ")
    if len(parts) != 3:
        return None
    method, target, version = parts
    if version == b"HTTP/1.1":
        minor = 1
    elif version == b"HTTP/1.0":
        minor = 0
    else:
        return None
    if (method != b"GET" and method != b"HEAD") or target[:1] != b"/" or len(target) > limits.max_uri:
        return None
    q = target.find(b"?")
    path = target if q < 0 else target[:q]
    if path.translate(None, _PATH_BYTES) or path.find(b"/.") >= 0:
        return None
    if q >= 0 and target.translate(None, _TARGET_BYTES):
        return None
    headers: dict[str, str] = {}
    for field in lines[1:]:
        name, colon, value = field.partition(b":")
        if not colon or not name or name.translate(None, _TCHAR_BYTES):
            return None
        key = name.decode("ascii").lower()
        if key in headers:
            return None
        headers[key] = value.strip(b" \t").decode("latin-1")
    if minor and "host" not in headers:
        return None
    return Request("GET" if method == b"GET" else "HEAD", target, minor, headers, line, path,
                   headers.keys().isdisjoint(_SPECIAL))


def take_head(buf: bytes, limits: Limits) -> tuple[bytes | None, bytes]:
    """Cut the next request head out of ``buf``.

    Empty lines before a request are dropped (RFC 9112 section 2.2).

    Args:
        buf: the bytes received and not yet used.
        limits: the bounds to enforce.

    Returns:
        ``(head, rest)``: the head without its blank line (None while it is
        not complete) and the bytes that follow it (all of ``buf``, minus
        leading empty lines, while the head is not complete).

    Raises:
        HttpError: 400 for bytes that cannot start a request (refused before
            the head is complete), 414 for a request line over the bound, 431
            for a head over the bound; all with ``close``.
    """
    if buf[:1] in (b"\r", b"\n"):
        buf = buf.lstrip(b"\r\n")
    m = _BLANK_LINE.search(buf)
    eol = buf.find(b"\n")
    if (eol if eol >= 0 else len(buf)) > limits.max_uri + _SLACK:
        raise HttpError(414, close=True)
    if m is not None:
        if m.start() > limits.max_header_bytes:
            raise HttpError(431, close=True)
        return buf[: m.start()], buf[m.end() :]
    if eol < 0:
        if not _LINE_START.match(buf):
            raise HttpError(400, close=True)
    else:
        line = buf[:eol]
        request_line(line[:-1] if line.endswith(b"\r") else line, limits)
        if len(buf) > limits.max_header_bytes:
            raise HttpError(431, close=True)
    return None, buf


def first_line(buf: bytes) -> bytes:
    """The request line in ``buf`` (or what there is of it), for logs."""
    buf = buf.lstrip(b"\r\n")
    eol = buf.find(b"\n")
    line = buf if eol < 0 else buf[:eol]
    return line[:-1] if line.endswith(b"\r") else line


# ------------------------------------------------------------------ grammar


def request_line(line: bytes, limits: Limits) -> tuple[str, bytes, int]:
    """``(method, target, minor)`` of a request line, or HttpError."""
    parts = line.split(b" ")
    if len(parts) != 3:
        raise HttpError(400, close=True)
    method, target, version = parts
    if version == b"HTTP/1.1":
        minor = 1
    else:
        m = _VERSION.match(version)
        if m is None:
            raise HttpError(400, close=True)
        if m.group(1) != b"1":
            raise HttpError(505 if _METHOD.match(method) and target else 400, close=True)
        minor = int(m.group(2))
    if method not in (b"GET", b"HEAD") and not _METHOD.match(method):
        raise HttpError(400, close=True)
    if len(target) > limits.max_uri:
        raise HttpError(414, close=True)
    if not _TARGET.match(target):
        raise HttpError(400, close=True)
    return method.decode("ascii"), target, minor


def parse_head(head: bytes, limits: Limits) -> Request:
    """Request line and header fields (RFC 9112), strictly.

    Lines end in CRLF or a bare LF; a bare CR, an obs-fold, a space before
    the colon, a control or NUL in a field is refused; a second Host, or a
    second Content-Length that differs, too.

    Args:
        head: a head as :func:`take_head` returns it.
        limits: the bounds to enforce.

    Raises:
        HttpError: 400 (malformed, or HTTP/1.1 without Host), 414, 431 or
            505, with ``close``.
    """
    if head.endswith(b"\r"):
        head = head[:-1]
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    line = lines[0]
    method, target, minor = request_line(line, limits)
    if len(lines) - 1 > limits.max_headers:
        raise HttpError(431, close=True)
    headers: dict[str, str] = {}
    for raw in lines[1:]:
        f = _FIELD.match(raw)
        if f is None:  # no colon, space before it, obs-fold, CR/NUL/control in it
            raise HttpError(400, close=True)
        name = f.group(1).decode("ascii").lower()
        value = f.group(2).decode("latin-1")
        old = headers.get(name)
        if old is None:
            headers[name] = value
        elif name in ("host", "content-length"):
            if name == "host" or old != value:
                raise HttpError(400, close=True)
        else:
            headers[name] = old + ", " + value
    if minor >= 1 and "host" not in headers:
        raise HttpError(400, close=True)
    return Request(method, target, minor, headers, line)


def keep_alive(req: Request) -> bool:
    """Whether the client wants the connection kept after this request."""
    connection = req.headers.get("connection")
    if connection is None:
        return req.minor >= 1
    tokens = {t.strip() for t in connection.lower().split(",")}
    return "close" not in tokens if req.minor >= 1 else "keep-alive" in tokens


def body_length(req: Request, max_body: int) -> int:
    """How many body bytes follow the head (to be read and dropped).

    Raises:
        HttpError: 411 for a Transfer-Encoding body (400 with a
            Content-Length too), 417 for an Expect other than 100-continue,
            400 for a bad Content-Length, 413 above ``max_body``.
    """
    h = req.headers
    length = h.get("content-length")
    if "transfer-encoding" in h:
        raise HttpError(400 if length is not None else 411, close=True)
    expect = h.get("expect")
    if expect is not None and expect.lower() != "100-continue":
        raise HttpError(417, close=True)
    if length is None:
        return 0
    if not _DIGITS.match(length):
        raise HttpError(400, close=True)
    n = int(length)
    if n > max_body:
        raise HttpError(413, close=True)
    return n


def split_target(target: bytes) -> tuple[list[bytes], bytes, bytes]:
    """(percent-decoded path segments, raw path, raw query) of a target.

    The origin form (``/a/b?q``) and the absolute form with http or https are
    accepted. Each segment is decoded on its own, so an encoded ``/`` cannot
    join two.

    Raises:
        HttpError: 403 for a ``.`` or ``..`` segment (literal or encoded);
            400 (with ``close``) for another form, an encoded ``/``, a NUL, a
            bad escape or a fragment.
    """
    if not target.startswith(b"/"):
        scheme, sep, rest = target.partition(b"://")
        if not sep or scheme.lower() not in (b"http", b"https"):
            raise HttpError(400, close=True)
        cut = [i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0]
        target = rest[min(cut):] if cut else b"/"
        if not target.startswith(b"/"):
            target = b"/" + target
    path, _, query = target.partition(b"?")
    if b"%" not in path and b"/." not in path and b"\0" not in path and b"#" not in target:
        return [seg for seg in path.split(b"/") if seg], path, query  # nothing to decode or refuse
    if b"#" in target:
        raise HttpError(400, close=True)
    segments = []
    for raw in path.split(b"/"):
        if not raw:
            continue
        seg = raw
        if b"\0" in raw:
            raise HttpError(400, close=True)
        if b"%" in raw:
            if _BAD_ESCAPE.search(raw):
                raise HttpError(400, close=True)
            seg = urllib.parse.unquote_to_bytes(raw)
            if b"/" in seg or b"\0" in seg:
                raise HttpError(400, close=True)
        if seg == b"." or seg == b"..":
            raise HttpError(403)
        segments.append(seg)
    return segments, path, query


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
            t = t[:9] + (0,)
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


# ------------------------------------------------------------------ decisions


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
    status = _preconditions(h, rep) if not h.keys().isdisjoint(_CONDITIONAL) else 0
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
