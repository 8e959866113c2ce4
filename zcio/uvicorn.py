"""uvicorn's HTTP protocols, with file bodies sent by sendfile.

``HttpToolsProtocol`` and ``H11Protocol`` are uvicorn's own protocols that
also offer two ASGI extensions in every HTTP scope's ``extensions``:

- ``http.response.pathsend`` -- ``{"type": ..., "path": str}``: the whole
  file is the body (what Starlette's, and so FastAPI's, ``FileResponse``
  sends when the server offers it);
- ``http.response.zerocopysend`` -- ``{"type": ..., "file": file object or
  int fd, "offset"?: int, "count"?: int, "more_body"?: bool}``: ``count``
  bytes of the file from ``offset`` (a missing offset means the file's
  current position, a missing count its end). Afterwards the file's position
  is ``offset`` plus what was sent.

Both are served by :func:`zcio.aio.transport_sendfile` between uvicorn's own
framing (Content-Length or chunked), so HEAD, keep-alive, chunked responses
around a zerocopysend, client disconnects and the access log work as they do
for ``http.response.body``. Over TLS the body is copied through the
transport. Use::

    uvicorn.run(app, http=zcio.uvicorn.HttpToolsProtocol)
    # or: uvicorn app:app --http zcio.uvicorn:HttpToolsProtocol

Install with ``pip install 'zcio[uvicorn]'``; the uvicorn versions these
protocols are tested with are pinned there.
"""
from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import h11
from uvicorn.protocols.http import h11_impl, httptools_impl

from ._transports import transport_sendfile

__all__ = ["PATHSEND", "ZEROCOPYSEND", "H11Protocol", "HttpToolsProtocol"]

PATHSEND = "http.response.pathsend"
ZEROCOPYSEND = "http.response.zerocopysend"

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Callable[[], Awaitable[Message]], Send], Awaitable[None]]


class _FileBody:
    """Stands for ``count`` bytes of a file where h11 expects body data, so
    that h11 frames them (chunk sizes, Content-Length accounting) and hands
    them back untouched (``send_with_data_passthrough``)."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count


class _Send:
    """The ``send`` of one request/response cycle: the two extensions, and
    everything else passed to uvicorn's own ``cycle.send``."""

    def __init__(self, cycle: Any) -> None:
        self.cycle = cycle

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == PATHSEND:
            # Opening is a metadata lookup (the app has just stat()-ed the
            # path); the body itself never passes through this process.
            fd = os.open(message["path"], os.O_RDONLY | os.O_CLOEXEC)
            try:
                await self._file(fd, 0, None, False)
            finally:
                os.close(fd)
        elif kind == ZEROCOPYSEND:
            await self._file(
                message["file"], message.get("offset"), message.get("count"), bool(message.get("more_body", False))
            )
        else:
            await self.cycle.send(message)

    async def _file(self, file: Any, offset: Any, count: Any, more_body: bool) -> None:
        cycle = self.cycle
        if cycle.flow.write_paused and not cycle.disconnected:
            await cycle.flow.drain()
        if cycle.disconnected:
            return
        if not cycle.response_started or cycle.response_complete:
            state = "after the response completed" if cycle.response_complete else "before http.response.start"
            raise RuntimeError(f"Unexpected ASGI file message {state}.")
        fd = file if isinstance(file, int) else file.fileno()
        if offset is None:
            offset = os.lseek(fd, 0, os.SEEK_CUR) if isinstance(file, int) else file.tell()
        size = os.fstat(fd).st_size
        if count is None:
            count = max(0, size - offset)
        if offset < 0 or count < 0 or offset + count > size:
            raise ValueError(f"offset {offset} and count {count} do not lie within the file ({size} bytes)")
        if cycle.scope["method"] != "HEAD" and count:
            if cycle.transport.is_closing():  # as uvicorn's writes to it, a no-op
                return
            try:
                await self._body(file, offset, count)
            except ConnectionError:
                # The client went away (the transport is aborted): as uvicorn
                # does for a body written to a closed connection, say nothing.
                cycle.disconnected = True
                return
        # uvicorn's own send finishes the message: terminating chunk, response
        # completion, keep-alive or close, the next pipelined request.
        await cycle.send({"type": "http.response.body", "body": b"", "more_body": more_body})

    async def _body(self, file: Any, offset: int, count: int) -> None:
        raise NotImplementedError

    async def _sendfile(self, file: Any, offset: int, count: int) -> None:
        sent = await transport_sendfile(self.cycle.transport, file, offset, count)
        if sent != count:  # the file shrank under us: the framing is broken
            self.cycle.transport.abort()
            raise RuntimeError(f"file ended after {sent} of {count} bytes")


class _HttpToolsSend(_Send):
    """Framing as uvicorn's httptools cycle does it."""

    async def _body(self, file: Any, offset: int, count: int) -> None:
        cycle = self.cycle
        if cycle.chunked_encoding:
            cycle.transport.write(b"%x\r\n" % count)
            await self._sendfile(file, offset, count)
            cycle.transport.write(b"\r\n")
            return
        if count > cycle.expected_content_length:
            raise RuntimeError("Response content longer than Content-Length")
        await self._sendfile(file, offset, count)
        cycle.expected_content_length -= count


class _H11Send(_Send):
    """Framing by the cycle's h11 connection, which keeps its own count."""

    async def _body(self, file: Any, offset: int, count: int) -> None:
        cycle = self.cycle
        body = _FileBody(count)
        for piece in cycle.conn.send_with_data_passthrough(h11.Data(data=body)):  # type: ignore[arg-type]
            if piece is body:
                await self._sendfile(file, offset, count)
            else:
                cycle.transport.write(piece)


class _App:
    """The protocol's ASGI app, wrapped: the scope offers the extensions and
    ``send`` serves them. uvicorn calls its app with the cycle's bound
    ``send``; its ``__self__`` is the cycle whose framing we follow."""

    def __init__(self, app: ASGIApp, send_class: type[_Send], cycle_class: type) -> None:
        self.app = app
        self.send_class = send_class
        self.cycle_class = cycle_class

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        cycle = getattr(send, "__self__", None)
        if scope.get("type") != "http" or not isinstance(cycle, self.cycle_class):
            await self.app(scope, receive, send)
            return
        extensions: dict[str, Any] = scope.setdefault("extensions", {})
        extensions.setdefault(PATHSEND, {})
        extensions.setdefault(ZEROCOPYSEND, {})
        await self.app(scope, receive, self.send_class(cycle))


class HttpToolsProtocol(httptools_impl.HttpToolsProtocol):
    """uvicorn's httptools protocol plus ``http.response.pathsend`` and
    ``http.response.zerocopysend`` (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.app = _App(self.app, _HttpToolsSend, httptools_impl.RequestResponseCycle)


class H11Protocol(h11_impl.H11Protocol):
    """uvicorn's h11 protocol plus ``http.response.pathsend`` and
    ``http.response.zerocopysend`` (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.app = _App(self.app, _H11Send, h11_impl.RequestResponseCycle)

