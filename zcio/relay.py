"""A TCP relay server (what ``zcio proxy`` runs).

Each accepted connection is paired with a new connection to the target and
the bytes are relayed both ways, with half-close. Two engines:

- ``"hub"`` (the default): a :class:`zcio.RelayHub` accepts, connects to the
  target without blocking and relays, all on its C engine threads -- no
  Python runs per connection or per message;
- ``"asyncio"``: the running event loop accepts and connects, and
  :func:`zcio.aio.proxy` splices each pair.

The target is resolved once, at :meth:`Relay.start`, and again after a
connect to it fails (not per connection). At most ``max_connections`` are
relayed at once; further clients wait in the listen backlog until one ends.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import TYPE_CHECKING, Any, List, Optional, Set, Tuple

from . import aio
from ._errors import TransferError
from .hub import RelayHub, _Listener

if TYPE_CHECKING:  # pragma: no cover
    from typing_extensions import Self

__all__ = ["Relay", "parse_address"]

log = logging.getLogger("zcio.relay")

_RESOLVE_INTERVAL = 1.0  # at most one re-resolution a second while connects fail


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
        engine: ``"hub"`` (C engine threads) or ``"asyncio"`` (the event loop).
        threads: the hub's engine threads (engine "hub", when ``hub`` is None).
        hub: a RelayHub to run on (not closed by :meth:`close`); None: the
            relay makes its own.
        verbose: log each relayed connection (logger ``zcio.relay``).

    Use ``await relay.start()`` then ``await relay.serve_forever()``, or
    ``async with Relay(...)``; ``await relay.close()`` stops accepting, ends
    the relayed connections and closes every socket it opened. ``active``,
    ``peak``, ``served``, ``bytes_up`` and ``bytes_down`` count as it runs.
    """

    def __init__(
        self,
        listen: Tuple[str, int],
        target: Tuple[str, int],
        *,
        max_connections: int = 1000,
        connect_timeout: float = 10.0,
        engine: str = "hub",
        threads: int = 1,
        hub: Optional[RelayHub] = None,
        verbose: bool = False,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        if engine not in ("hub", "asyncio"):
            raise ValueError(f"engine must be 'hub' or 'asyncio', not {engine!r}")
        if threads < 1:
            raise ValueError("threads must be >= 1")
        self.listen = listen
        self.target = target
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.engine = engine
        self.threads = threads
        self.verbose = verbose
        self.listener: Optional[socket.socket] = None
        self._address: Optional[Tuple[str, int]] = None
        self._hub = hub
        self._own_hub = hub is None
        self._hub_listener: Optional[_Listener] = None
        self._target_addr: Optional[Tuple[int, Any]] = None
        self._resolving: Optional["asyncio.Task[None]"] = None
        self._last_resolve = 0.0
        self._stopped: Optional["asyncio.Future[None]"] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        # The asyncio engine's counts (the hub keeps its own in C).
        self._counts = {"active": 0, "peak": 0, "served": 0, "bytes_up": 0, "bytes_down": 0}
        self._tasks: Set["asyncio.Task[None]"] = set()
        self._slots: Optional[asyncio.Semaphore] = None
        self._accepting: Optional["asyncio.Task[None]"] = None

    # -- counters ---------------------------------------------------------
    def _count(self, name: str) -> int:
        if self._hub_listener is not None:
            return int(self._hub_listener.stats().get(name, 0))
        return self._counts[name]

    @property
    def active(self) -> int:
        """Clients being relayed now."""
        return self._count("active")

    @property
    def peak(self) -> int:
        """Most clients relayed at once so far."""
        return self._count("peak")

    @property
    def served(self) -> int:
        """Clients whose relay ended (a failed connect to the target counts)."""
        return self._count("served")

    @property
    def bytes_up(self) -> int:
        """Bytes relayed from clients to the target."""
        return self._count("bytes_up")

    @property
    def bytes_down(self) -> int:
        """Bytes relayed from the target to clients."""
        return self._count("bytes_down")

    @property
    def address(self) -> Tuple[str, int]:
        """The bound (host, port)."""
        if self._address is None:
            raise RuntimeError("not started")
        return self._address

    # -- lifecycle --------------------------------------------------------
    async def _resolve(self) -> Tuple[int, Any]:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(self.target[0], self.target[1], type=socket.SOCK_STREAM)
        family, _, _, _, addr = infos[0]
        self._last_resolve = time.monotonic()
        return family, addr

    async def start(self) -> None:
        """Bind, listen, resolve the target, and (engine "hub") start relaying."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stopped = loop.create_future()
        self._target_addr = await self._resolve()
        infos = socket.getaddrinfo(self.listen[0], self.listen[1], type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, type_, proto, _, addr = infos[0]
        hub_threads = 0
        if self.engine == "hub":
            hub_threads = self.threads if self._hub is None else self._hub.threads
        # Several engine threads: one listening socket each (SO_REUSEPORT),
        # so that the kernel spreads the clients over them.
        count = hub_threads if hub_threads > 1 and hasattr(socket, "SO_REUSEPORT") else 1
        listeners: List[socket.socket] = []
        try:
            for _ in range(count):
                listener = socket.socket(family, type_, proto)
                listeners.append(listener)
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if count > 1:
                    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                listener.bind(addr)
                listener.listen(min(socket.SOMAXCONN, 4096))
                listener.setblocking(False)
                addr = listener.getsockname()  # the others bind the port the first got
            self._address = listeners[0].getsockname()[:2]
            if self.engine == "hub":
                if self._hub is None:
                    self._hub = RelayHub(self.threads)
                self._hub_listener = self._hub._listen(
                    listeners, self._target_addr, max_connections=self.max_connections,
                    connect_timeout=self.connect_timeout, verbose=self.verbose,
                )
                loop.add_reader(self._hub_listener.fileno(), self._on_records)
        except BaseException:
            for listener in listeners:
                listener.close()
            if self._own_hub and self._hub is not None:
                self._hub.close()
            raise
        self.listener = listeners[0]  # detached (fileno() == -1) when the hub took it
        self._slots = asyncio.Semaphore(self.max_connections)

    def _on_records(self) -> None:
        assert self._hub_listener is not None
        for kind, value in self._hub_listener.records():
            if kind == "connect_failed":
                log.warning("connect to %s:%d failed: %s", self.target[0], self.target[1], _strerror(value))
                if self._resolving is None:
                    self._resolving = asyncio.ensure_future(self._re_resolve())
            else:
                peer, up, down, exc = value
                if exc is None:
                    log.info("%s: %d bytes up, %d down", peer, up, down)
                else:
                    log.info("%s: ended by %s after %d bytes up, %d down", peer, exc.strerror, up, down)

    async def _re_resolve(self) -> None:
        """Resolve the target again after a failed connect (at most once a
        second), then let the next failure ask again."""
        try:
            wait = self._last_resolve + _RESOLVE_INTERVAL - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                self._target_addr = await self._resolve()
            except OSError as exc:
                log.warning("cannot resolve %s: %s", self.target[0], exc)
            if self._hub_listener is not None and self._target_addr is not None:
                self._hub_listener.set_target(self._target_addr)
        finally:
            self._resolving = None

    async def serve_forever(self) -> None:
        """Relay until :meth:`close` (or until cancelled)."""
        if self._address is None:
            await self.start()
        assert self._stopped is not None
        if self.engine == "hub":
            await asyncio.shield(self._stopped)
            return
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
        """The asyncio engine: one client."""
        loop = asyncio.get_running_loop()
        upstream: Optional[socket.socket] = None
        counts = self._counts
        counts["active"] += 1
        counts["peak"] = max(counts["peak"], counts["active"])
        try:
            conn.setblocking(False)
            assert self._target_addr is not None
            family, addr = self._target_addr
            upstream = socket.socket(family, socket.SOCK_STREAM)
            upstream.setblocking(False)
            try:
                await asyncio.wait_for(loop.sock_connect(upstream, addr), self.connect_timeout)
            except OSError:
                if self._resolving is None:
                    self._resolving = asyncio.ensure_future(self._re_resolve())
                raise
            up, down = await aio.proxy(conn, upstream)
            counts["bytes_up"] += up
            counts["bytes_down"] += down
            log.info("%s: %d bytes up, %d down", peer, up, down)
        except (OSError, asyncio.TimeoutError) as exc:
            if isinstance(exc, TransferError):
                log.info("%s: ended by %s after %d bytes", peer, exc.strerror, exc.transferred)
            else:
                log.warning("%s: %s", peer, exc)
        finally:
            counts["active"] -= 1
            counts["served"] += 1
            conn.close()
            if upstream is not None:
                upstream.close()
            assert self._slots is not None
            self._slots.release()

    async def close(self) -> None:
        """Stop accepting, end every relayed connection, close what was opened."""
        if self._resolving is not None:
            self._resolving.cancel()
        if self._hub_listener is not None:
            assert self._loop is not None
            self._loop.remove_reader(self._hub_listener.fileno())
            self._hub_listener.close()  # returns once its relays ended
        if self._own_hub and self._hub is not None:
            self._hub.close()
        if self._accepting is not None and self._accepting is not asyncio.current_task():
            self._accepting.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.listener is not None:
            self.listener.close()
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _strerror(err: int) -> str:
    import os

    return os.strerror(err)
