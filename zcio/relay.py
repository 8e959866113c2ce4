"""A TCP relay server on :func:`zcio.aio.proxy` (what ``zcio proxy`` runs).

Each accepted connection is paired with a new connection to the target and
the bytes are spliced both ways through pooled pipes, with half-close. At
most ``max_connections`` are relayed at once; further clients wait in the
listen backlog until one ends.
"""
from __future__ import annotations

import asyncio
import logging
import socket
from typing import Optional, Set, Tuple

from . import aio
from ._errors import TransferError

__all__ = ["Relay", "parse_address"]

log = logging.getLogger("zcio.relay")


def parse_address(text: str, default_host: str = "127.0.0.1") -> Tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``port`` (meaning ``default_host``).

    Raises:
        ValueError: not one of those forms, or a port outside 0..65535.
    """
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = default_host, text
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        host = default_host
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"not host:port or port: {text!r}") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"port out of range: {text!r}")
    return host, number


class Relay:
    """Relays every connection accepted on ``listen`` to ``target``.

    Args:
        listen: (host, port) to bind; port 0 picks a free one (see ``address``).
        target: (host, port) to connect each client to.
        max_connections: most clients relayed at once.
        connect_timeout: seconds to wait for the target before dropping a client.

    Use ``await relay.start()`` then ``await relay.serve_forever()``, or
    ``async with Relay(...)``; ``await relay.close()`` stops accepting, ends
    the relayed connections and closes every socket it opened.
    """

    def __init__(
        self,
        listen: Tuple[str, int],
        target: Tuple[str, int],
        *,
        max_connections: int = 1000,
        connect_timeout: float = 10.0,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        self.listen = listen
        self.target = target
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.listener: Optional[socket.socket] = None
        self.active = 0
        self.peak = 0
        self.served = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self._tasks: Set["asyncio.Task[None]"] = set()
        self._slots: Optional[asyncio.Semaphore] = None
        self._accepting: Optional["asyncio.Task[None]"] = None

    @property
    def address(self) -> Tuple[str, int]:
        """The bound (host, port)."""
        if self.listener is None:
            raise RuntimeError("not started")
        return self.listener.getsockname()[:2]  # type: ignore[no-any-return]

    async def start(self) -> None:
        infos = socket.getaddrinfo(self.listen[0], self.listen[1], type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, type_, proto, _, addr = infos[0]
        listener = socket.socket(family, type_, proto)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(addr)
            listener.listen(min(socket.SOMAXCONN, 4096))
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        self.listener = listener
        self._slots = asyncio.Semaphore(self.max_connections)

    async def serve_forever(self) -> None:
        if self.listener is None:
            await self.start()
        self._accepting = asyncio.current_task()
        loop = asyncio.get_running_loop()
        assert self.listener is not None and self._slots is not None
        while True:
            await self._slots.acquire()
            try:
                conn, peer = await loop.sock_accept(self.listener)
            except BaseException:
                self._slots.release()
                raise
            task = asyncio.ensure_future(self._relay(conn, peer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _relay(self, conn: socket.socket, peer: object) -> None:
        loop = asyncio.get_running_loop()
        upstream: Optional[socket.socket] = None
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            conn.setblocking(False)
            infos = await loop.getaddrinfo(self.target[0], self.target[1], type=socket.SOCK_STREAM)
            family, type_, proto, _, addr = infos[0]
            upstream = socket.socket(family, type_, proto)
            upstream.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(upstream, addr), self.connect_timeout)
            up, down = await aio.proxy(conn, upstream)
            self.bytes_up += up
            self.bytes_down += down
            log.info("%s: %d bytes up, %d down", peer, up, down)
        except (OSError, asyncio.TimeoutError) as exc:
            if isinstance(exc, TransferError):
                log.info("%s: ended by %s after %d bytes", peer, exc.strerror, exc.transferred)
            else:
                log.warning("%s: %s", peer, exc)
        finally:
            self.active -= 1
            self.served += 1
            conn.close()
            if upstream is not None:
                upstream.close()
            assert self._slots is not None
            self._slots.release()

    async def close(self) -> None:
        if self._accepting is not None and self._accepting is not asyncio.current_task():
            self._accepting.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.listener is not None:
            self.listener.close()

    async def __aenter__(self) -> "Relay":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
