"""AsyncZeroCopySender: the zero-copy sender driven by an asyncio event loop.

The same step as :class:`~zcio.ZeroCopySender` (:mod:`zcio.zerocopy._step`),
driven through the running loop: a step that would block asks to wait, and
the wait is an awaited ``add_writer`` (the socket is full) or the error
queue's next event (a completion after ENOBUFS), so the loop never blocks.
Re-exported by :mod:`zcio.aio`.
"""
from __future__ import annotations

import asyncio
import os
import select
import socket
from typing import TYPE_CHECKING, Any, Callable

from .._tickets import Lent, Ticket
from ..lowlevel import _fd
from ._registry import SocketRecord
from ._step import SendOp, Wait
from .sender import DEFAULT_THRESHOLD, SenderBase

if TYPE_CHECKING:  # pragma: no cover
    from typing_extensions import Self

__all__ = ["AsyncTicket", "AsyncZeroCopySender"]

_RECHECK = 0.05  # seconds: reap at least this often while awaiting completions

Buffer = Any  # any object exporting the buffer protocol


class _ErrorQueue:
    """Reaps a socket's completions from the loop.

    A private epoll fd watches the socket for EPOLLERR only (edge-triggered)
    and is registered with the loop's ``add_reader``, so the socket's own
    readiness is left to whoever reads it. Holds no reference to the sender,
    so a sender dropped unclosed can be collected.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, record: SocketRecord) -> None:
        self._loop = loop
        self._record = record
        self._epoll = select.epoll()
        try:
            self._epoll.register(fd, select.EPOLLET)  # EPOLLERR/EPOLLHUP are implied
            loop.add_reader(self._epoll.fileno(), self._on_ready)
        except BaseException:
            self._epoll.close()
            raise
        self._event = asyncio.Event()

    def _on_ready(self) -> None:
        self._epoll.poll(0)  # consume the edge
        self._record.reap_now()
        self._event.set()

    async def until(self, cond: Callable[[], bool], timeout: float | None = None) -> bool:
        """Reap until ``cond()``; woken by the error queue, and every 50 ms
        regardless (a missed wake-up costs latency, never a hang).

        Returns:
            True once ``cond()``; False if ``timeout`` seconds passed first.
        """
        try:
            await asyncio.wait_for(self._until(cond), timeout)
        except asyncio.TimeoutError:
            return cond()
        return True

    async def _until(self, cond: Callable[[], bool]) -> None:
        while True:
            self._record.reap_now()
            if cond():
                return
            await self.next_event(_RECHECK)

    async def next_event(self, timeout: float | None) -> None:
        """Wait for the error queue's next event, or ``timeout`` seconds."""
        self._event.clear()
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    def close(self) -> None:
        """Stop watching (on the loop's thread)."""
        if not self._epoll.closed:
            if not self._loop.is_closed():
                self._loop.remove_reader(self._epoll.fileno())
            self._epoll.close()

    def discard(self) -> None:
        """Stop watching, from any thread (a finalizer): the loop removes
        the reader on its own thread; a closed loop has none left."""
        if self._loop.is_closed():
            self._epoll.close()
            return
        try:
            self._loop.call_soon_threadsafe(self.close)
        except RuntimeError:  # the loop closed meanwhile
            self._epoll.close()


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():  # a second readiness, or a cancelled wait
        ready.set_result(None)


async def _writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    """Wait until ``fd`` is writable (or has an error) through the loop."""
    ready: asyncio.Future[None] = loop.create_future()
    loop.add_writer(fd, _wake, ready)
    try:
        await ready
    finally:
        loop.remove_writer(fd)


class AsyncTicket:
    """The ticket of one :meth:`AsyncZeroCopySender.sendall`; awaitable.

    ``await ticket`` (or ``await ticket.wait(timeout)``) returns once the
    kernel is done with every send that referenced the buffer, which stays
    pinned until then.
    """

    def __init__(self, ticket: Ticket, queue: _ErrorQueue) -> None:
        #: Bytes the sendall handed to the kernel.
        self.nbytes = ticket.nbytes
        self._ticket = ticket
        self._queue = queue

    def done(self) -> bool:
        """True once the kernel is done with the memory (reaps first)."""
        return self._ticket.done()

    @property
    def copied(self) -> bool:
        """The kernel copied some of the data after all (always on loopback)."""
        return self._ticket.copied

    async def wait(self, timeout: float | None = None) -> bool:
        """True once done; False if ``timeout`` seconds passed first."""
        return await self._queue.until(self._ticket.done, timeout)

    def __await__(self) -> Any:
        return self.wait().__await__()

    def __repr__(self) -> str:
        return f"<zcio.AsyncTicket of {self._ticket!r}>"


class AsyncZeroCopySender(SenderBase):
    """:class:`zcio.ZeroCopySender` for a non-blocking socket under asyncio.

    ``await sender.sendall(data)`` sends everything (waiting for writability
    through the loop) and returns an :class:`AsyncTicket`. Completions are
    reaped through the loop: a private epoll fd watches the socket for
    EPOLLERR only (edge-triggered) and is registered with ``add_reader``, so
    the socket's own readiness is left to whoever reads it. The sends follow
    the same rules as ZeroCopySender's (threshold, ``policy``, ENOBUFS); a
    wait for a completion after ENOBUFS is awaited on the loop. One sendall
    at a time (a second concurrent one raises RuntimeError).

    Args:
        sock: a connected, non-blocking TCP or UDP socket.
        threshold, policy, reap_every: as for :class:`zcio.ZeroCopySender`.

    Raises:
        ValueError: a blocking socket; as ZeroCopySender.
        RuntimeError: no running event loop.

    Use ``async with`` or ``await sender.aclose()``; the socket stays open.
    Dropped unclosed, it lets go of the socket and its epoll fd (sends in
    flight keep their pins in the graveyard) and warns (ResourceWarning).
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        threshold: int = DEFAULT_THRESHOLD,
        policy: str = "auto",
        reap_every: int = 32,
    ) -> None:
        if os.get_blocking(_fd(sock)):
            raise ValueError("sock must be non-blocking (call setblocking(False))")
        self._loop = asyncio.get_running_loop()
        super().__init__(sock, threshold=threshold, policy=policy, reap_every=reap_every)
        try:
            self._queue = _ErrorQueue(self._loop, self._route.fd, self._record)
        except BaseException:
            self._release()
            raise
        self._on_drop.append(self._queue.discard)

    async def sendall(self, data: Buffer | Lent) -> AsyncTicket:
        """Send all of ``data`` and return the ticket that tracks its memory.

        Raises:
            TransferError: after part was sent (``transferred``, and
                ``ticket`` for the part that went).
            OSError: from the kernel, before anything was sent.
            ValueError: the sender is closed.
            RuntimeError: another sendall of this sender is running.
        """
        op = self._begin(data)
        try:
            if not isinstance(op, SendOp):
                return AsyncTicket(op, self._queue)
            try:
                while not op.finished:
                    wait = op.step()
                    if type(wait) is Wait:
                        await self._honour(wait)
            except BaseException as exc:
                err = op.fail(exc, AsyncTicket(op.ticket, self._queue))
                if err is exc:
                    raise
                raise err from exc
            return AsyncTicket(op.finish(), self._queue)
        finally:
            self._guard.release()

    async def _honour(self, wait: Wait) -> None:
        """Wait as the step asked, on the loop."""
        if wait.events:
            await _writable(self._loop, wait.fd)
        else:
            await self._queue.next_event(wait.timeout)

    def reap(self) -> int:
        """Drain completions now; returns how many tickets finished."""
        return self._reap_now()

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until nothing is in flight; False if ``timeout`` ran out."""
        record = self._record
        return await self._queue.until(lambda: record.pinned_bytes == 0, timeout)

    async def aclose(self, timeout: float | None = 1.0) -> None:
        """Flush (at most ``timeout`` seconds), then detach; the socket stays
        open. Pins still in flight are parked as ZeroCopySender.close does."""
        if self._closed:
            return
        self._closed = True
        try:
            await self.flush(timeout)
        finally:
            self._queue.close()
            self._release()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
