"""zcio.RelayHub: many socket pairs relayed by a C engine, off the GIL.

A hub runs one or more engine threads in C, each with its own epoll set.
:meth:`RelayHub.relay` hands a pair of connected sockets to one of them and
returns a :class:`concurrent.futures.Future`; ``await zcio.aio.relay(a, b)``
awaits the same on the running event loop. The engine threads never touch
Python: results come back through a queue in C whose eventfd wakes either a
collector thread (for the futures of :meth:`RelayHub.relay`) or the event
loop (one reader per loop, not one callback per I/O event).

Per direction the engine copies small messages through a small buffer and
splices streams through a pipe from the hub's bounded pool, switching both
ways as HAProxy's splice-auto does (three reads that fill the 16 KiB buffer
promote a direction to splice; two short reads, a splice under 4 KiB or a
second of silence demote it). :meth:`RelayHub.stats` shows the counts.

Ownership: from ``relay()`` on the hub owns both sockets: it relays
duplicates of their fds that it closes when the relay ends, and the caller's
socket objects are closed by the call (``fileno() == -1``; the connections
stay open through the hub's duplicates). Dropping the objects changes
nothing.
"""
from __future__ import annotations

import operator
import os
import socket
import struct
import threading
import warnings
import weakref
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from ._binding import ffi, lib
from ._errors import TransferError
from ._hub_core import _BATCH, Outcome, _collect, _Core, _Sink, cores
from .lowlevel import _raise
from .pipes import _default_sizing

if TYPE_CHECKING:  # pragma: no cover
    import asyncio
    import concurrent.futures

    from typing_extensions import Self

__all__ = ["RelayHub", "default_hub", "relay"]

class RelayHub:
    """Relays many connected socket pairs on engine threads in C.

    Args:
        threads: engine threads (each with its own epoll set); a relay stays
            on the thread it was given, round-robin. At least 1.

    Raises:
        ValueError: ``threads`` < 1.
        OSError: the threads or their fds could not be created.

    Use ``with RelayHub() as hub:`` or call :meth:`close`; a hub dropped
    unclosed is closed (ending its relays) with a ResourceWarning, as a
    socket is. A hub never keeps the interpreter from exiting; a forked child
    cannot use its parent's hub (RuntimeError), and the child holds none of
    the hub's fds.
    """

    def __init__(self, threads: int = 1) -> None:
        threads = operator.index(threads)
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        size, most = _default_sizing()
        out = ffi.new("zcio_hub **")
        n = lib.zcio_hub_new(threads, size, most, out)
        if n < 0:
            _raise(-n)
        self._core = _Core(out[0], threads)
        cores.add(self._core)
        self._finalizer = weakref.finalize(self, _dropped, self._core, repr(self))
        self._finalizer.atexit = False

    @property
    def threads(self) -> int:
        """The number of engine threads."""
        return self._core.threads

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran (or this is a forked child's copy)."""
        return self._core.state != "open"

    def relay(
        self, a: socket.socket, b: socket.socket, *, half_close: bool = True
    ) -> "concurrent.futures.Future[Tuple[int, int]]":
        """Relay bytes both ways between two connected stream sockets.

        The hub takes both sockets: it relays duplicates of their fds, closes
        the objects given (``fileno() == -1``; the connections stay open) and
        closes its duplicates when the relay ends. Blocking or not, they are made
        non-blocking; TCP sockets get TCP_NODELAY (a relay forwards each
        message as it comes).

        Args:
            a, b: connected ``socket.socket`` objects of type SOCK_STREAM.
            half_close: EOF from one side shuts down the write side of the
                other, and the relay ends when both directions reached EOF.
                False: the first EOF ends the relay (bytes already read are
                delivered first).

        Returns:
            A future (already running; it cannot be cancelled) of
            ``(a_to_b, b_to_a)``, the bytes delivered each way. It fails with
            a :class:`zcio.TransferError` when a direction fails (a reset):
            ``transferred`` and ``pending`` are the failed direction's, and
            ``relayed`` / ``pendings`` hold both directions' counts and
            undelivered bytes. :meth:`close` fails it with
            ConnectionAbortedError (also a TransferError).

        Raises:
            TypeError: a TLS socket (zcio never relays around TLS), or not a
                socket. Nothing is taken.
            ValueError: a closed or non-stream socket, or ``a is b``.
            RuntimeError: the hub is closed, or belongs to the parent process.
        """
        core = self._core
        import concurrent.futures  # here, not at import: `import zcio` stays light

        fut: "concurrent.futures.Future[Tuple[int, int]]" = concurrent.futures.Future()
        fut.set_running_or_notify_cancel()

        def done(outcome: Outcome) -> None:
            result, exc = outcome
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(result)  # type: ignore[arg-type]

        with core.lock:
            core.check_open()
            sink = core.sync_sink()
        core.submit(a, b, half_close, sink, done)
        return fut

    async def _relay_async(self, a: socket.socket, b: socket.socket, half_close: bool) -> Tuple[int, int]:
        import asyncio  # loaded already: this runs on a loop

        core = self._core
        loop = asyncio.get_running_loop()
        with core.lock:
            core.check_open()
        sink = core.loop_sink(loop)
        fut: "asyncio.Future[Tuple[int, int]]" = loop.create_future()

        def done(outcome: Outcome) -> None:
            result, exc = outcome
            if fut.done():
                return
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(result)  # type: ignore[arg-type]

        try:
            engine, rid = core.submit(a, b, half_close, sink, done)
        except BaseException:
            if not sink.waiters:
                sink.close()
            raise
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError as cancelled:
            # End the relay, then report where its bytes went (as aio.proxy).
            core.cancel(engine, rid)
            try:
                result = await fut
                transferred, pending = result, (b"", b"")
            except TransferError as exc:
                transferred = exc.relayed  # type: ignore[attr-defined]
                pending = exc.pendings  # type: ignore[attr-defined]
            cancelled.transferred = transferred  # type: ignore[attr-defined]
            cancelled.pending = pending  # type: ignore[attr-defined]
            raise

    def stats(self) -> Dict[str, Any]:
        """Counters of this hub (like HAProxy's ``show info``).

        Returns:
            ``relays`` (started, active, ended by EOF, failed), ``bytes``
            delivered by method (``copy``, ``splice``), ``reads`` by method,
            ``switches`` (``to_splice``, ``to_copy``), ``buffers`` (copy
            buffers held now), ``pipes`` (created, destroyed, in_use, free,
            exhausted, max, size), ``accepted`` and ``connect_failed`` (for
            listeners), ``threads`` and ``active_per_thread`` (relays each
            engine thread holds now). After close(), the final counts.
        """
        return self._core.stats()

    def close(self) -> None:
        """End every relay and stop the engine threads.

        Relays in flight fail with ConnectionAbortedError (a TransferError
        with their accounting); both peers of each see the connection end.
        Returns once they have (and every future of :meth:`relay` is
        resolved). Idempotent; :meth:`relay` afterwards raises RuntimeError.
        """
        self._core.close()

    def _listen(self, listeners: Sequence[socket.socket], target: Tuple[int, Any], *, max_connections: int,
                connect_timeout: float, verbose: bool = False) -> "_Listener":
        """Accept on ``listeners`` and relay each client to ``target`` (family,
        address tuple), all in the engine (used by ``zcio proxy``). One
        listening socket is shared by every engine thread; several (bound
        with SO_REUSEPORT) are dealt out, one per thread."""
        return _Listener(self._core, listeners, target, max_connections, connect_timeout, verbose)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<zcio.RelayHub threads={self.threads} state={self._core.state}>"


def sockaddr(family: int, address: Any) -> bytes:
    """The C ``struct sockaddr`` bytes of an AF_INET / AF_INET6 address tuple."""
    if family == socket.AF_INET:
        host, port = address[:2]
        return struct.pack("=H", family) + struct.pack("!H", port) + socket.inet_pton(family, host) + bytes(8)
    if family == socket.AF_INET6:
        host, port = address[:2]
        flow = address[2] if len(address) > 2 else 0
        scope = address[3] if len(address) > 3 else 0
        return (struct.pack("=H", family) + struct.pack("!HI", port, flow)
                + socket.inet_pton(family, host.split("%")[0]) + struct.pack("=I", scope))
    raise ValueError(f"unsupported address family {family}")


def _peer(raw: bytes) -> Optional[Tuple[str, int]]:
    if len(raw) >= 8:
        family = struct.unpack("=H", raw[:2])[0]
        port = struct.unpack("!H", raw[2:4])[0]
        if family == socket.AF_INET:
            return socket.inet_ntop(family, raw[4:8]), port
        if family == socket.AF_INET6 and len(raw) >= 24:
            return socket.inet_ntop(family, raw[8:24]), port
    return None


class _Listener:
    """A listening socket whose clients the hub accepts, connects to a target
    and relays, with no Python per connection. ``fileno()`` is an eventfd
    that becomes readable when :meth:`records` has something."""

    def __init__(self, core: _Core, listeners: Sequence[socket.socket], target: Tuple[int, Any],
                 max_connections: int, connect_timeout: float, verbose: bool) -> None:
        if not listeners:
            raise ValueError("no listening socket")
        self.core = core
        self.sink = _Sink()
        addr = sockaddr(*target)
        fds = ffi.new("int[]", [s.fileno() for s in listeners])
        out = ffi.new("zcio_listener **")
        with core.lock:
            try:
                core.check_open()
                n = lib.zcio_hub_listen(core.ptr, fds, len(listeners), addr, len(addr), max_connections,
                                        int(connect_timeout * 1000), self.sink.ptr, 1 if verbose else 0, out)
                if n < 0:
                    _raise(-n)
            except BaseException:
                self.sink.release()
                raise
            for listener in listeners:
                listener.detach()
        self.ptr = out[0]
        self.closed = False
        self.final: Dict[str, int] = {}
        core.listeners.add(self)

    def fileno(self) -> int:
        return self.sink.fd

    def records(self) -> List[Tuple[str, Any]]:
        """``("connect_failed", errno)`` and, when verbose, ``("relay",
        (peer, up, down, error or None))`` for each relay that ended."""
        out: List[Tuple[str, Any]] = []
        while self.sink.ptr is not None:
            n, records = _collect(self.sink.ptr, self.sink.out, 0)
            for kind, _, outcome, err, peer in records:
                if kind == lib.ZCIO_REC_CONNECT_FAILED:
                    out.append(("connect_failed", err))
                elif outcome is not None:
                    result, exc = outcome
                    if result is not None:
                        out.append(("relay", (_peer(peer), result[0], result[1], None)))
                    else:
                        up, down = exc.relayed
                        out.append(("relay", (_peer(peer), up, down, exc)))
            if n < _BATCH:
                break
        return out

    def set_target(self, target: Tuple[int, Any]) -> None:
        """Connect new clients to ``target`` (family, address tuple) from now on."""
        addr = sockaddr(*target)
        with self.core.lock:
            if self.core.state == "open" and not self.closed:
                n = lib.zcio_listener_target(self.ptr, addr, len(addr))
                if n < 0:
                    _raise(-n)

    def _read_stats(self) -> Dict[str, int]:
        s = ffi.new("zcio_listener_stats *")
        lib.zcio_listener_get_stats(self.ptr, s)
        return {"accepted": s.accepted, "active": s.active, "peak": s.peak, "served": s.served,
                "bytes_up": s.bytes_up, "bytes_down": s.bytes_down, "connect_failed": s.connect_failed}

    def stats(self) -> Dict[str, int]:
        """accepted, active, peak, served, bytes_up, bytes_down, connect_failed."""
        with self.core.lock:
            if self.closed or self.core.ptr is None or self.core.pid != os.getpid():
                return dict(self.final)
            return self._read_stats()

    def finish(self) -> None:
        """Keep the final counts (the hub's lock is held; the hub closed it)."""
        if not self.closed:
            self.closed = True
            self.final = self._read_stats()

    def close(self) -> None:
        """Stop accepting and end this listener's relays (returns once done)."""
        with self.core.lock:
            if not self.closed and self.core.ptr is not None and self.core.pid == os.getpid():
                lib.zcio_listener_close(self.ptr)  # waits for the engines, without the GIL
                self.finish()
            self.closed = True
        self.sink.release()


def _dropped(core: _Core, name: str) -> None:
    if core.state == "open" and core.pid == os.getpid():
        warnings.warn(f"unclosed {name}", ResourceWarning, stacklevel=2)
    core.close()


_default: Optional[RelayHub] = None
_default_lock = threading.Lock()


def default_hub() -> RelayHub:
    """The process-wide hub that :func:`zcio.aio.relay` uses when given none.

    Created on first use (one engine thread), and again after it was closed
    or in a forked child.
    """
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            _default = RelayHub()
        return _default


def _forget_in_child() -> None:
    global _default, _default_lock
    _default = None  # the parent's: a new one is made on first use
    _default_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)


async def relay(
    a: socket.socket, b: socket.socket, *, hub: Optional[RelayHub] = None, half_close: bool = True
) -> Tuple[int, int]:
    """Relay both ways between two connected sockets on a hub; await the end.

    What :meth:`RelayHub.relay` does, awaited on the running event loop (the
    stdlib's or uvloop): the hub wakes the loop through one eventfd per loop,
    not once per I/O event, and the loop does no work while bytes move.

    Args:
        a, b: connected stream sockets; the hub takes them (see RelayHub.relay).
        hub: the hub to use; None: :func:`default_hub`.
        half_close: as in :meth:`RelayHub.relay`.

    Returns:
        ``(a_to_b, b_to_a)``.

    Raises:
        TransferError: a direction failed (see :meth:`RelayHub.relay`).
        asyncio.CancelledError: the relay was ended and both sockets closed;
            the exception's ``transferred`` and ``pending`` are tuples of the
            two directions' counts and undelivered bytes (as aio.proxy's).
    """
    return await (default_hub() if hub is None else hub)._relay_async(a, b, half_close)
