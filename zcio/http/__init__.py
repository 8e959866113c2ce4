"""A static HTTP/1.1 file server on zcio: ``zcio serve``.

Connections are raw non-blocking sockets on the running loop (the stdlib
loop or uvloop), driven by reader callbacks. Every file body leaves by
sendfile -- one non-blocking ``zcio.sendfile`` at once, and when the socket
does not take it all, :func:`zcio.aio.sendfile` for the rest -- so the
file's pages go to the socket without passing through Python.

The rooms, each with one job: :mod:`._request` (reading requests, without
I/O: framing and grammar), :mod:`._response` (deciding answers, without
I/O: validators, preconditions, ranges, every header byte),
:mod:`._resources` (confined opens, listings, MIME types), :mod:`._answers`
(from a request to a decided answer: which file, which plan),
:mod:`._connection` (one client's socket) and :mod:`.server` (listening,
accepting, timeouts).

What a client can rely on:

- Methods: GET and HEAD; any other gets 405 with ``Allow: GET, HEAD``.
- Ranges: one range (``bytes=a-b``, ``a-`` or ``-n``) gives 206 with
  Content-Range. A range that starts at or past the end, ``-0``, or any range
  of an empty file gives 416 with ``Content-Range: bytes */SIZE``. Several
  ranges are not answered with multipart/byteranges: the whole file comes
  back with 200, which RFC 9110 (section 14.2) allows. A malformed Range
  header or a unit other than bytes is ignored (200).
- Validators: ``ETag: "<size>-<ctime_ns>"`` (hex) and Last-Modified. The
  ETag is strong once the file has not changed for a second (before that
  it is sent weak, ``W/"..."``, as Apache does: a second change within one
  clock tick could keep ctime and size). Preconditions in the order of
  RFC 9110 section 13.2.2: If-Match (strong comparison, ``*``) or else
  If-Unmodified-Since fail with 412; If-None-Match (weak comparison, ``*``)
  or else If-Modified-Since give 304. If-Range with the strong ETag, or with
  a date equal to Last-Modified (while the ETag is strong), lets the range
  through (206, a resumed download); anything else gives the whole file.
- Keep-alive: the default for HTTP/1.1 unless ``Connection: close``; HTTP/1.0
  only with ``Connection: keep-alive``. Pipelined requests are answered in order.
- Framing: lines may end in CRLF or a bare LF (RFC 9112 section 2.2); empty
  lines before a request are ignored. Bytes that cannot begin a request
  line (a TLS ClientHello, an SSH banner, binary junk) get 400 as soon as
  they arrive, and so does a request line that is complete but malformed,
  without waiting for the rest of the head. A head cut short by EOF gets 400.
- Paths: the target (origin form, or absolute form with http/https) is split
  on ``/`` and each segment percent-decoded on its own. A ``.`` or ``..``
  segment, literal or encoded, gives 403; an encoded ``/``, a NUL, a bad
  percent escape, a fragment, a space, a control or a non-ASCII byte gives
  400. Files are opened beneath an fd of DIR (``openat2`` with
  ``RESOLVE_BENEATH`` where the kernel has it, else a walk with
  ``O_NOFOLLOW`` at each step); symlinks are followed only while they
  resolve inside DIR: one that leads outside gives 403, as does anything
  that is neither a regular file nor a directory (FIFO, device, socket) and
  a file the process may not open. Missing: 404, and so is a file asked
  for as a directory (``/file.txt/``). Hidden files are served.
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

from .server import FileServer, serve

__all__ = ["FileServer", "serve"]
