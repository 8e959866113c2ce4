"""asyncio versions of zcio's stream movers, for raw non-blocking fds.

Shaped like ``loop.sock_sendfile``: pass non-blocking sockets, pipes or
files (not transports). Readiness comes from the running loop's
``add_reader``/``add_writer``, so these run on the stdlib loop and on uvloop
alike, and the loop is never blocked waiting: each step of the C loop runs
until the kernel would block or a slice of ~2 ms / 8 MiB is used, then
yields. Regular files are read in the loop as ``loop.sock_sendfile`` does.

Like the sync functions, nothing is lost: an error raises TransferError with
``transferred`` and ``pending``; a cancellation ends in CancelledError with
the same two attributes set, and a buffered reader's position is ``seek()``-ed
to the true end.

As with ``loop.sock_recv`` and friends, the fds are registered with the loop
only while a call waits on them; do not use the same fd with another reader
or writer of the loop at the same time.
"""
from __future__ import annotations

import asyncio
import errno
import os
import select
import socket
import stat
import sys
from typing import IO, Any, Callable, Dict, List, Optional, Tuple, Union

from ._binding import lib
from ._errors import TransferError, transfer_error
from .lowlevel import FdLike, _nonneg
from .hub import relay as relay  # noqa: F401  (the relay engine, awaited)
from .pipes import PipePool
from .streams import _Tee, _Transfer
from .zerocopy import DEFAULT_THRESHOLD, PoolBuffer, Ticket, ZeroCopySender

__all__ = [
    "Transfer",
    "splice_pipe",
    "sendfile",
    "tee_pipe",
    "proxy",
    "AsyncZeroCopySender",
    "AsyncTicket",
    "new_event_loop",
]

_DONE, _MORE, _WAIT = lib.ZCIO_DONE, lib.ZCIO_MORE, lib.ZCIO_WAIT


def new_event_loop(uvloop: bool = False, *, warn: str = "zcio") -> Tuple[asyncio.AbstractEventLoop, str]:
    """A new event loop for zcio's servers, and its name.

    uvloop's when asked for and installed; otherwise asyncio's (saying so on
    stderr, prefixed with ``warn``, when uvloop was asked for).
    """
    if uvloop:
        try:
            import uvloop as _uvloop
        except ImportError:
            print(f"{warn}: uvloop is not installed; using asyncio's loop", file=sys.stderr)
        else:
            return _uvloop.new_event_loop(), "uvloop"
    return asyncio.new_event_loop(), "asyncio"
_SLICE_MS = 2
_SLICE_BYTES = 8 << 20

Progress = Callable[[int], Any]


class _Waiter:
    """Waits for fd readiness through the running loop's add_reader and
    add_writer, keeping a registration from one wait to the next when the
    same (fd, event) is wanted again: a relay waits on the same socket over
    and over, and each registration costs the loop a system call or two.
    Registrations not wanted by the current wait are dropped, so a ready fd
    nobody waits for cannot make the loop spin. ``close()`` drops them all.
    """

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.registered: Dict[Tuple[int, int], Callable[[int], Any]] = {}
        self.fut: Optional["asyncio.Future[None]"] = None

    def _wake(self) -> None:
        if self.fut is not None and not self.fut.done():
            self.fut.set_result(None)

    async def wait(self, wanted: List[Tuple[int, int]]) -> None:
        for key in [k for k in self.registered if k not in wanted]:
            self.registered.pop(key)(key[0])
        for key in wanted:
            if key not in self.registered:
                fd, events = key
                if events & select.POLLIN:
                    self.loop.add_reader(fd, self._wake)
                    self.registered[key] = self.loop.remove_reader
                else:
                    self.loop.add_writer(fd, self._wake)
                    self.registered[key] = self.loop.remove_writer
        self.fut = self.loop.create_future()
        try:
            await self.fut
        finally:
            self.fut = None

    def close(self) -> None:
        for (fd, _), remove in self.registered.items():
            remove(fd)
        self.registered.clear()


async def _ready(fds: List[Tuple[int, int]]) -> None:
    """Wait once until one of ``(fd, POLLIN|POLLOUT)`` is ready."""
    waiter = _Waiter()
    try:
        await waiter.wait(fds)
    finally:
        waiter.close()


def _check_nonblocking(fd: int, name: str) -> None:
    """Sockets and pipes must be non-blocking: a blocking one would stall the
    loop. Files and devices are used as they are (as loop.sock_sendfile does)."""
    mode = os.fstat(fd).st_mode
    if (stat.S_ISSOCK(mode) or stat.S_ISFIFO(mode)) and os.get_blocking(fd):
        raise ValueError(f"{name} must be non-blocking (call setblocking(False) or os.set_blocking)")


class Transfer:
    """One asyncio transfer whose accounting outlives it.

    ``await Transfer(src, dst, ...)`` (or ``await transfer.run()``) does what
    :func:`splice_pipe` does; afterwards -- completed, failed or cancelled --
    ``transferred`` and ``pending`` say where every byte taken from src went.
    (The exceptions carry the same two attributes, but before Python 3.11 a
    task's awaiter receives a fresh CancelledError without them: keep the
    Transfer to read them on every version.)

    Attributes:
        transferred: bytes that reached dst so far (final once ``finished``).
        pending: bytes taken from src and not delivered, once finished.
        finished: the run ended (by completion, error or cancellation).
    """

    def __init__(
        self,
        src: FdLike,
        dst: FdLike,
        count: Optional[int] = None,
        *,
        offset: Optional[int] = None,
        progress: Optional[Progress] = None,
        pool: Optional[PipePool] = None,
    ) -> None:
        self._args = (src, dst, count, offset, pool)
        self._progress = progress
        self._t: Optional[_Transfer] = None
        self.transferred = 0
        self.pending = b""
        self.finished = False

    async def run(self) -> int:
        """Move the bytes; see :func:`splice_pipe`. Runs once."""
        if self._t is not None or self.finished:
            raise RuntimeError("a Transfer runs once")
        src, dst, count, offset, pool = self._args
        t = self._t = _Transfer(src, dst, count, offset, pool, nonblocking=False)
        try:
            _check_nonblocking(t.x.src, "src")
            _check_nonblocking(t.x.dst, "dst")
            return await _run(t, self._progress)
        except BaseException as exc:
            self.pending = getattr(exc, "pending", b"")
            raise
        finally:
            self.transferred = t.transferred
            self.finished = True
            t.close()

    def __await__(self) -> Any:
        return self.run().__await__()


async def splice_pipe(
    src: FdLike,
    dst: FdLike,
    count: Optional[int] = None,
    *,
    offset: Optional[int] = None,
    progress: Optional[Progress] = None,
    pool: Optional[PipePool] = None,
) -> int:
    """Move bytes from ``src`` to ``dst`` without blocking the event loop.

    The same paths, fallbacks and accounting as :func:`zcio.splice_pipe`;
    sockets and pipes must be non-blocking. For a timeout, wrap the call in
    ``asyncio.wait_for`` / ``asyncio.timeout``. To read the accounting after
    a cancellation on every Python version, use :class:`Transfer`.

    Returns:
        The number of bytes that reached ``dst``.

    Raises:
        TransferError: with ``transferred`` and ``pending``.
        ValueError: a blocking socket or pipe, a negative count or offset.
        asyncio.CancelledError: with ``transferred`` and ``pending`` set.
    """
    return await Transfer(src, dst, count, offset=offset, progress=progress, pool=pool).run()


async def _run(t: _Transfer, progress: Optional[Progress]) -> int:
    waiter = _Waiter()
    try:
        with t.outcome():
            await _deliver(t, waiter, progress)
    finally:
        waiter.close()
    return t.transferred


async def _deliver(t: _Transfer, waiter: _Waiter, progress: Optional[Progress]) -> None:
    x = t.x
    while t.prefix < len(t.head):
        try:
            t.prefix += os.write(x.dst, memoryview(t.head)[t.prefix :])
        except BlockingIOError:
            await waiter.wait([(x.dst, select.POLLOUT)])
        except OSError as exc:
            raise t.error(exc.errno or errno.EIO) from None
    while True:
        before = int(x.transferred)
        rc = lib.zcio_pump(x, _SLICE_BYTES, _SLICE_MS, 0)
        if rc == _DONE:
            break
        if rc < 0:
            if t.fall_back(-rc):
                continue
            raise t.error(-rc)
        if progress is not None and int(x.transferred) != before:
            progress(t.transferred)
        if rc == _WAIT:
            await waiter.wait([(x.wait_fd[i], x.wait_events[i]) for i in range(x.nwait)])
        else:
            await asyncio.sleep(0)  # a slice is used up: let others run
    if progress is not None:
        progress(t.transferred)


async def sendfile(
    sock: FdLike, file: Union[IO[bytes], int], offset: int = 0, count: Optional[int] = None
) -> int:
    """Send a file over a non-blocking socket, like ``loop.sock_sendfile``.

    Args:
        sock: a connected, non-blocking stream socket.
        file: a regular file opened in binary mode (or its fd).
        offset: where in the file to start.
        count: bytes to send; None sends to the end of the file.

    Returns:
        The number of bytes sent. A file object's position is set to
        ``offset`` plus that number (also on error or cancellation).
    """
    offset = _nonneg(offset, "offset")
    sent = 0
    try:
        sent = await splice_pipe(file, sock, count, offset=offset)
        return sent
    except BaseException as exc:
        sent = getattr(exc, "transferred", 0)
        raise
    finally:
        if not isinstance(file, int) and hasattr(file, "seek"):
            file.seek(offset + sent)


# ------------------------------------------------------------------ tee


async def tee_pipe(src: FdLike, dst: FdLike, mirror: FdLike, count: Optional[int] = None) -> int:
    """Every byte of ``src`` to ``dst``, and a copy to ``mirror`` (tee()).

    The asyncio twin of :func:`zcio.tee_pipe`; fds must be non-blocking.

    Returns:
        The bytes that reached ``dst`` (the mirror got the same).

    Raises:
        TransferError: ``transferred`` counts bytes that reached dst,
            ``pending`` the bytes taken from src that did not.
        asyncio.CancelledError: with the same two attributes set.
    """
    t = _Tee(src, dst, mirror, count)
    try:
        for fd, name in ((t.src, "src"), (t.dst, "dst"), (t.mirror, "mirror")):
            _check_nonblocking(fd, name)
        while True:
            want = t.want()
            n = t.fill(want) if want else 0
            if n is None:
                await _ready([(t.src, select.POLLIN)])
                continue
            if n == 0:
                return t.total
            t.duplicate(n)
            await splice_pipe(t.copy.r, t.mirror, n)
            delivery = Transfer(t.main.r, t.dst, n)
            try:
                await delivery
            finally:  # also the part of the chunk that reached dst before an error
                t.total += delivery.transferred
    except OSError as exc:
        raise t.error(exc) from exc
    except BaseException as exc:
        exc.transferred = t.total  # type: ignore[attr-defined]
        exc.pending = t.main.drain()  # type: ignore[attr-defined]
        raise
    finally:
        t.close()


# ------------------------------------------------------------------ proxy


async def proxy(a: socket.socket, b: socket.socket, *, half_close: bool = True) -> Tuple[int, int]:
    """Relay both ways between two connected non-blocking sockets until both end.

    EOF on one side shuts down the write half of the other (``half_close``);
    an error on either side (a reset) shuts both sockets down so the other
    direction ends too.

    Returns:
        ``(a_to_b, b_to_a)``.

    Raises:
        TransferError: the first error, once both directions stopped.
        asyncio.CancelledError: both directions are cancelled; each count is
            on the exception as ``transferred`` (a tuple) and ``pending``
            (a tuple of the two directions' pending bytes).
    """

    async def one_way(src: socket.socket, dst: socket.socket) -> int:
        try:
            n = await splice_pipe(src, dst)
        except TransferError:
            for s in (src, dst):
                _shutdown(s, socket.SHUT_RDWR)
            raise
        if half_close:
            _shutdown(dst, socket.SHUT_WR)
        return n

    ab = asyncio.ensure_future(one_way(a, b))
    ba = asyncio.ensure_future(one_way(b, a))
    try:
        results = await asyncio.gather(ab, ba, return_exceptions=True)
    except asyncio.CancelledError as exc:
        for task in (ab, ba):
            task.cancel()
        done = await asyncio.gather(ab, ba, return_exceptions=True)
        exc.transferred = tuple(_count(r) for r in done)  # type: ignore[attr-defined]
        exc.pending = tuple(getattr(r, "pending", b"") for r in done)  # type: ignore[attr-defined]
        raise
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results[0], results[1]  # type: ignore[return-value]


def _count(r: Any) -> int:
    return r if isinstance(r, int) else int(getattr(r, "transferred", 0))


def _shutdown(s: socket.socket, how: int) -> None:
    try:
        s.shutdown(how)
    except OSError:
        pass


# ------------------------------------------------------------ zero-copy sends


class _LoopSender(ZeroCopySender):
    """A ZeroCopySender that never waits inside a call: the event loop waits."""

    def _on_enobufs(self) -> bool:
        st = self._state
        st.counters["enobufs"] += 1
        if st.tracker.outstanding and self._reap() > 0:
            return False  # optmem freed: retry zero-copy
        # Nothing came back right now: copy this chunk rather than block the
        # loop waiting for a completion.
        return True


class AsyncTicket:
    """The tickets of one :meth:`AsyncZeroCopySender.sendall`; awaitable.

    ``await ticket`` (or ``await ticket.wait(timeout)``) returns once the
    kernel is done with every send that referenced the buffer, which stays
    pinned until then.
    """

    def __init__(self, tickets: List[Ticket], sender: "AsyncZeroCopySender") -> None:
        self._tickets = tickets
        self._sender = sender

    def done(self) -> bool:
        return all(t.done() for t in self._tickets)

    @property
    def copied(self) -> bool:
        """The kernel copied some of the data after all (always on loopback)."""
        return any(t.copied for t in self._tickets)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self._tickets)

    async def wait(self, timeout: Optional[float] = None) -> bool:
        """True once done; False if ``timeout`` seconds passed first."""
        try:
            await asyncio.wait_for(self._sender._until(self.done), timeout)
        except asyncio.TimeoutError:
            return self.done()
        return True

    def __await__(self) -> Any:
        return self.wait().__await__()


class AsyncZeroCopySender:
    """:class:`zcio.ZeroCopySender` for a non-blocking socket under asyncio.

    ``await sender.sendall(data)`` sends everything (waiting for writability
    through the loop) and returns an :class:`AsyncTicket`. Completions are
    reaped through the loop: a private epoll fd watches the socket for
    EPOLLERR only (edge-triggered) and is registered with ``add_reader``, so
    the socket's own readiness is left to whoever reads it. Where the send
    path would wait for a completion after ENOBUFS, this one copies instead.

    Args:
        sock: a connected, non-blocking TCP or UDP socket.
        threshold, policy, reap_every: as for :class:`zcio.ZeroCopySender`.

    Use ``async with`` or ``await sender.aclose()``; the socket stays open.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        threshold: int = DEFAULT_THRESHOLD,
        policy: str = "auto",
        reap_every: int = 32,
    ) -> None:
        _check_nonblocking(sock.fileno(), "sock")
        self._loop = asyncio.get_running_loop()
        self._sender = _LoopSender(sock, threshold=threshold, policy=policy, reap_every=reap_every)
        self._fd = sock.fileno()
        self._epoll = select.epoll()
        self._epoll.register(self._fd, select.EPOLLET)  # EPOLLERR/EPOLLHUP are implied
        self._loop.add_reader(self._epoll.fileno(), self._on_error_queue)
        self._event = asyncio.Event()

    def _on_error_queue(self) -> None:
        self._epoll.poll(0)  # consume the edge
        self._sender.reap()
        self._event.set()

    async def _until(self, cond: Callable[[], bool]) -> None:
        """Reap until ``cond()``; woken by the error queue, and every 50 ms
        regardless (a missed wake-up costs latency, never a hang)."""
        while True:
            self._sender.reap()
            if cond():
                return
            self._event.clear()
            try:
                await asyncio.wait_for(self._event.wait(), 0.05)
            except asyncio.TimeoutError:
                pass

    async def sendall(self, data: Any) -> AsyncTicket:
        """Send all of ``data`` and return the ticket that tracks its memory.

        Raises:
            TransferError: after part was sent (``transferred``, and
                ``ticket`` for the part that went).
            OSError: from the kernel, before anything was sent.
        """
        view = data.memory if isinstance(data, PoolBuffer) else data
        tickets: List[Ticket] = []
        sent = 0
        while True:
            part = view if sent == 0 else memoryview(view).cast("B")[sent:]
            try:
                tickets.append(self._sender.sendall(part, timeout=0))
                return AsyncTicket(tickets, self)
            except OSError as exc:
                ticket = getattr(exc, "ticket", None)
                if ticket is not None:
                    tickets.append(ticket)
                sent += getattr(exc, "transferred", 0)
                # timeout=0 turns "would block" into ETIMEDOUT: wait, go on.
                if not (isinstance(exc, TransferError) and exc.errno == errno.ETIMEDOUT):
                    if not sent:
                        raise
                    err = transfer_error(exc.errno or errno.EIO, sent, b"", exc.strerror)
                    err.ticket = AsyncTicket(tickets, self)  # type: ignore[attr-defined]
                    raise err from exc
            await _ready([(self._fd, select.POLLOUT)])

    def reap(self) -> int:
        """Drain completions now; returns how many tickets finished."""
        return self._sender.reap()

    async def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until nothing is in flight; False if ``timeout`` ran out."""
        try:
            await asyncio.wait_for(self._until(lambda: self._sender.in_flight == 0), timeout)
        except asyncio.TimeoutError:
            return self._sender.in_flight == 0
        return True

    @property
    def in_flight(self) -> int:
        """Bytes pinned by sends the kernel has not completed."""
        return self._sender.in_flight

    @property
    def stats(self) -> Dict[str, Any]:
        return self._sender.stats

    async def aclose(self, timeout: Optional[float] = 1.0) -> None:
        """Flush (at most ``timeout`` seconds), then detach; the socket stays
        open. Pins still in flight are parked as ZeroCopySender.close does."""
        if self._epoll.closed:
            return
        try:
            await self.flush(timeout)
        finally:
            self._loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
            self._sender.close(timeout=0)

    async def __aenter__(self) -> "AsyncZeroCopySender":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
