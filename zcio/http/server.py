"""The file server's sockets and loop: listening, accepting, timeouts, closing.

:class:`FileServer` owns the listening socket, the root's fd and every
connection (:class:`~._connection.Connection`); what is answered is decided
by :class:`~._answers.Site`, :mod:`._request` and :mod:`._response`, and nothing here parses
or opens files.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from typing import TYPE_CHECKING, Any, Callable

from ._answers import Site
from ._connection import Connection
from ._request import Limits, Reader
from ._resources import Root

if TYPE_CHECKING:  # pragma: no cover - for the annotation only (typing.Self is 3.11+)
    from typing_extensions import Self

__all__ = ["FileServer", "serve"]

log = logging.getLogger("zcio.serve")

_EAGER_ACCEPTS = 16  # connections taken from the backlog per turn of the loop


class FileServer:
    """Serves the files under ``directory`` over HTTP/1.1 (see :mod:`zcio.http`).

    Runs on the event loop that calls :meth:`start` (the stdlib loop or
    uvloop); all methods must be awaited on that loop (it is not
    thread-safe). The server owns its listening socket, an fd of the root
    directory and every accepted connection; :meth:`close` releases them
    all. Typical use::

        async with FileServer("site", port=0) as server:
            print(server.port)
            await server.serve_forever()

    Args:
        directory: the root; nothing outside it (after symlinks) is served.
        host: the address to listen on (an IPv6 address works too).
        port: the TCP port, 0 to 65535; 0 picks a free one (see :attr:`port`).
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
        ValueError: a bound or timeout out of range.
    """

    def __init__(
        self,
        directory: os.PathLike[str] | str = ".",
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
        _check(timeouts={"header_timeout": header_timeout, "idle_timeout": idle_timeout,
                         "send_timeout": send_timeout},
               counts={"max_connections": (max_connections, 1), "max_header_bytes": (max_header_bytes, 1),
                       "max_headers": (max_headers, 0), "max_uri": (max_uri, 1), "max_body": (max_body, 0),
                       "backlog": (backlog, 0), "port": (port, 0)})
        if port > 65535:
            raise ValueError(f"port must be in 0..65535, got {port}")
        self._root = Root(directory)
        self.root = os.fsdecode(self._root.path)
        self.host = host
        self._port = port
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.send_timeout = send_timeout
        self.listing = listing
        self.access_log = access_log
        self.limits = Limits(max_header_bytes, max_headers, max_uri)
        self.reader = Reader(self.limits)
        self.max_body = max_body
        self.backlog = backlog
        self.site = Site(self._root, listing)
        self.closing = False
        self._listener: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conns: set[Connection] = set()
        self._slot: asyncio.Future[None] | None = None
        self._emptied: asyncio.Future[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed: asyncio.Future[None] | None = None
        self._ticker: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------ lifecycle

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the server runs on (after :meth:`start`)."""
        if self._loop is None:
            raise RuntimeError("FileServer not started")
        return self._loop

    async def start(self) -> None:
        """Bind, listen and start accepting on the running loop.

        Raises:
            OSError: the address is in use, not local, ...
        """
        if self._loop is not None:
            raise RuntimeError("FileServer already started")
        loop = asyncio.get_running_loop()
        family, _, _, _, addr = socket.getaddrinfo(
            self.host, self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(self.backlog)
            sock.setblocking(False)
            self._root.open()
        except BaseException:
            sock.close()
            raise
        self._listener = sock
        self._loop = loop
        self._tick()
        self._closed = loop.create_future()
        self._tasks = [loop.create_task(self._accept_loop()), loop.create_task(self._sweep())]

    @property
    def address(self) -> tuple[str, int]:
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
        those still open after ``grace`` seconds are closed.
        """
        if self._loop is None or self._closed is None:
            return
        if self.closing:
            await asyncio.shield(self._closed)
            return
        self.closing = True
        if self._ticker is not None:
            self._ticker.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._listener is not None:
            self._listener.close()
        if self._conns:
            self._emptied = self._loop.create_future()
            for c in list(self._conns):
                c.abort()
            try:
                await asyncio.wait_for(asyncio.shield(self._emptied), grace)
            except asyncio.TimeoutError:
                pass
            tasks = [c.task for c in self._conns if c.task is not None]
            for c in list(self._conns):
                c.close()
            await asyncio.gather(*tasks, return_exceptions=True)
        self._root.close()
        if not self._closed.done():
            self._closed.set_result(None)

    async def wait_closed(self) -> None:
        """Wait until :meth:`close` has finished."""
        if self._closed is not None:
            await asyncio.shield(self._closed)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _tick(self) -> None:
        """Refresh the site's date strings, and again just after the next
        second begins (so that answers never look at the clock)."""
        now = self.site.clock.tick()
        if not self.closing:
            self._ticker = self.loop.call_later(1.0005 - now % 1.0, self._tick)

    def forget(self, conn: object) -> None:
        """A connection closed: free its slot."""
        self._conns.discard(conn)
        if self._slot is not None and not self._slot.done():
            self._slot.set_result(None)
        if not self._conns and self._emptied is not None and not self._emptied.done():
            self._emptied.set_result(None)

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
                    if eager >= _EAGER_ACCEPTS:
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
            c = Connection(self, sock, str(addr[0]) if isinstance(addr, tuple) else str(addr))
            self._conns.add(c)
            c.start()

    async def _sweep(self) -> None:
        """Shut down connections whose deadline passed (cheaper than a timer
        per wait: a request only stores a float)."""
        loop = self.loop
        tick = min(1.0, max(0.02, min(self.header_timeout, self.idle_timeout, self.send_timeout) / 8))
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            for c in list(self._conns):
                if c.deadline <= now and not c.timed_out:
                    c.timed_out = True
                    c.abort()


def _check(timeouts: dict[str, float], counts: dict[str, tuple[int, int]]) -> None:
    """ValueError unless every timeout is > 0 and every count at least its least."""
    for name, value in timeouts.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    for name, (count, least) in counts.items():
        if count < least:
            raise ValueError(f"{name} must be >= {least}, got {count}")


async def serve(
    directory: os.PathLike[str] | str = ".",
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    ready: Callable[[FileServer], Any] | None = None,
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
