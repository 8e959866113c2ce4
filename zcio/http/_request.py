"""Reading HTTP/1.1 requests, without I/O (RFC 9112, RFC 9110).

Two jobs, kept apart as h11 keeps grammar, buffer and state apart:

- framing: :func:`take_head` cuts the next request head out of the bytes
  received so far, drops the empty lines allowed before it, accepts a bare LF
  as a line end (RFC 9112 section 2.2) and refuses what cannot become a
  request (a TLS ClientHello, an oversized line or head) as soon as it shows;
- grammar: :func:`parse_head` turns a head into a :class:`Request`, strictly;
  :func:`split_target`, :func:`keep_alive` and :func:`admit` read the
  parts a file server uses.

:func:`next_request` does both, with a fast path for the usual head, and a
:class:`Reader` adds a memo of heads seen before. Nothing here reads a
clock, a socket or a file.
"""
from __future__ import annotations

import re
import urllib.parse
from typing import NamedTuple

__all__ = [
    "HttpError",
    "Limits",
    "Reader",
    "Request",
    "admit",
    "first_line",
    "keep_alive",
    "next_request",
    "parse_head",
    "request_line",
    "split_target",
    "take_head",
]

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
_SLACK = 64  # a request line may exceed max_uri by this much (method, version)

# The fields that make a file's answer conditional (see _response.plan_file).
CONDITIONAL = frozenset(
    ("if-match", "if-none-match", "if-modified-since", "if-unmodified-since", "range", "if-range")
)
# Fields that make a request not plain (see Request.plain).
_SPECIAL = CONDITIONAL | {"connection", "content-length", "transfer-encoding", "expect"}


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
        major, minor: the HTTP version (a major other than 1 is refused
            by :func:`admit`).
        headers: field names in lower case; repeated fields joined with ``", "``.
        line: the request line as received (for the access log).
        path: the target's path when the fast path found it plain, else None.
        plain: set by the fast path when no field bears on the answer
            (Connection, a body, a precondition or a range).
    """

    __slots__ = ("headers", "line", "major", "method", "minor", "path", "plain", "target")

    def __init__(self, method: str, target: bytes, minor: int, headers: dict[str, str], line: bytes,
                 path: bytes | None = None, plain: bool = False) -> None:
        self.method = method
        self.target = target
        self.minor = minor
        self.headers = headers
        self.line = line
        self.path = path  # the target's path when it needs no decoding (see next_request)
        self.plain = plain  # no field that changes the answer: no body, no condition, no Connection
        self.major = 1


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
    """:func:`next_request` with a memo: a head seen again is not parsed
    again.

    A head is a pure function's input and a :class:`Request` is never
    changed after it is made, so the same head bytes (clients repeat
    theirs: the same fields, often the same target) can share one. A head
    is remembered the second time it is seen (the first time only its hash
    is), so that traffic whose heads never repeat costs the memo nothing;
    it holds heads up to 2 KiB of the usual shape, at most 4096 of them
    (then it starts afresh).

    Args:
        limits: the bounds to enforce.
    """

    __slots__ = ("_memo", "_seen", "limits")

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._memo: dict[bytes, Request] = {}
        self._seen: set[int] = set()  # hashes of heads parsed once

    def next(self, buf: bytes) -> tuple[Request | None, bytes]:
        """As :func:`next_request` (the same results and errors)."""
        end = buf.find(b"\r\n\r\n")
        if 0 < end <= _MEMO_HEAD:
            head = buf[:end]
            req = self._memo.get(head)
            if req is None and end <= self.limits.max_header_bytes:
                req = _fast_head(head, self.limits)
                if req is not None:
                    self._remember(head, req)
            if req is not None:
                return req, buf[end + 4 :]
        return next_request(buf, self.limits)

    def _remember(self, head: bytes, req: Request) -> None:
        key = hash(head)  # computed by the memo's lookup already, and kept by the bytes object
        if key in self._seen:
            if len(self._memo) >= _MEMO_SIZE:
                self._memo.clear()
            self._memo[head] = req
        else:
            if len(self._seen) >= 2 * _MEMO_SIZE:
                self._seen.clear()
            self._seen.add(key)


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


def request_line(line: bytes, limits: Limits) -> tuple[str, bytes, int, int]:
    """``(method, target, major, minor)`` of a request line, or HttpError
    (400, 414). A major version other than 1 is for the caller to refuse
    (505) once it knows the rest of the head is well formed."""
    parts = line.split(b" ")
    if len(parts) != 3:
        raise HttpError(400, close=True)
    method, target, version = parts
    if version == b"HTTP/1.1":
        major, minor = 1, 1
    else:
        m = _VERSION.match(version)
        if m is None:
            raise HttpError(400, close=True)
        major, minor = int(m.group(1)), int(m.group(2))
    if method not in (b"GET", b"HEAD") and not _METHOD.match(method):
        raise HttpError(400, close=True)
    if len(target) > limits.max_uri:
        raise HttpError(414, close=True)
    if not _TARGET.match(target):
        raise HttpError(400, close=True)
    return method.decode("ascii"), target, major, minor


def parse_head(head: bytes, limits: Limits) -> Request:
    """Request line and header fields (RFC 9112), strictly.

    Lines end in CRLF or a bare LF; a bare CR, an obs-fold, a space before
    the colon, a control or NUL in a field is refused; a second Host, or a
    second Content-Length that differs, too.

    Args:
        head: a head as :func:`take_head` returns it.
        limits: the bounds to enforce.

    Raises:
        HttpError: 400 (malformed, or HTTP/1.1 without Host), 414 or 431,
            with ``close``. (A major version other than 1 is parsed; admit()
            refuses it.)
    """
    if head.endswith(b"\r"):
        head = head[:-1]
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    line = lines[0]
    method, target, major, minor = request_line(line, limits)
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
    if major == 1 and minor >= 1 and "host" not in headers:
        raise HttpError(400, close=True)
    req = Request(method, target, minor, headers, line)
    req.major = major  # another than 1 is refused by admit(), after the 4xx checks
    return req


def keep_alive(req: Request) -> bool:
    """Whether the client wants the connection kept after this request."""
    connection = req.headers.get("connection")
    if connection is None:
        return req.minor >= 1
    tokens = {t.strip() for t in connection.lower().split(",")}
    return "close" not in tokens if req.minor >= 1 else "keep-alive" in tokens


def admit(req: Request, max_body: int) -> int:
    """Refuse a request this server does not take, else say how many body
    bytes follow its head (to be read and dropped).

    The message's own faults come first (4xx), the version last (505), so
    that a malformed request of another version is a client error.

    Raises:
        HttpError: 411 for a Transfer-Encoding body (400 with a
            Content-Length too), 417 for an Expect other than 100-continue,
            400 for a bad Content-Length, 413 above ``max_body``; then 505
            for a major version other than 1.
    """
    h = req.headers
    length = h.get("content-length")
    if "transfer-encoding" in h:
        raise HttpError(400 if length is not None else 411, close=True)
    expect = h.get("expect")
    if expect is not None and expect.lower() != "100-continue":
        raise HttpError(417, close=True)
    n = 0
    if length is not None:
        if not _DIGITS.match(length):
            raise HttpError(400, close=True)
        n = int(length)
        if n > max_body:
            raise HttpError(413, close=True)
    if req.major != 1:
        raise HttpError(505, close=True)
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
