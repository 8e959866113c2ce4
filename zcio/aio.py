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
from typing import IO, Any, Callable, Dict, List, Optional, Tuple, Union

from ._binding import lib
from ._errors import TransferError
from ._tee import Tee
from ._transfer import Plan, Xfer, fd_kind, require_nonblocking
from ._transports import detach, loop_factory, transport_sendfile
from .hub import relay
from .lowlevel import FdLike, _fd, _nonneg
from .pipes import PipePool
from .zerocopy.aio import AsyncTicket, AsyncZeroCopySender

__all__ = [
    "Transfer",
    "Plan",
    "splice_pipe",
    "sendfile",
    "tee_pipe",
    "proxy",
    "AsyncZeroCopySender",
    "AsyncTicket",
    "transport_sendfile",
    "loop_factory",
    "detach",
    "relay",
]

_DONE, _MORE, _WAIT = lib.ZCIO_DONE, lib.ZCIO_MORE, lib.ZCIO_WAIT


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

    ``wait()`` wakes the awaiting task; ``watch()`` instead calls a function
    from the loop each time, which saves the task a round trip per wake.
    """

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.registered: Dict[Tuple[int, int], Callable[[int], Any]] = {}
        self.fut: Optional["asyncio.Future[None]"] = None
        self.on_ready: Callable[[], None] = self._wake

    def _ready(self) -> None:
        self.on_ready()

    def _wake(self) -> None:
        if self.fut is not None and not self.fut.done():
            self.fut.set_result(None)

    def _register(self, wanted: List[Tuple[int, int]]) -> None:
        for key in [k for k in self.registered if k not in wanted]:
            self.registered.pop(key)(key[0])
        for key in wanted:
            if key not in self.registered:
                fd, events = key
                if events & select.POLLIN:
                    self.loop.add_reader(fd, self._ready)
                    self.registered[key] = self.loop.remove_reader
                else:
                    self.loop.add_writer(fd, self._ready)
                    self.registered[key] = self.loop.remove_writer

    async def wait(self, wanted: List[Tuple[int, int]]) -> None:
        self.on_ready = self._wake
        self._register(wanted)
        self.fut = self.loop.create_future()
        try:
            await self.fut
        finally:
            self.fut = None

    def watch(self, wanted: List[Tuple[int, int]], on_ready: Callable[[], None]) -> None:
        """Call ``on_ready`` from the loop whenever one of ``wanted`` is
        ready, until the next ``watch``, ``wait`` or ``close``."""
        self.on_ready = on_ready
        self._register(wanted)

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
        plan: Optional[Plan] = None,
    ) -> None:
        self._args = (src, dst, count, offset, pool, plan)
        self._progress = progress
        self._started = False
        self.transferred = 0
        self.pending = b""
        self.finished = False

    async def run(self) -> int:
        """Move the bytes; see :func:`splice_pipe`. Runs once."""
        if self._started:
            raise RuntimeError("a Transfer runs once")
        self._started = True
        src, dst, count, offset, pool, plan = self._args
        self._args = None  # type: ignore[assignment]  # hold no fd objects past the run
        try:
            # The set-up undoes itself if it fails; a buffered reader's bytes
            # it took are then on the exception.
            t = Xfer(src, dst, count, offset, pool, loop=True, plan=plan)
        except BaseException as exc:
            self.pending = getattr(exc, "pending", b"")
            self.finished = True
            raise
        try:
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
    plan: Optional[Plan] = None,
) -> int:
    """Move bytes from ``src`` to ``dst`` without blocking the event loop.

    The same paths, fallbacks and accounting as :func:`zcio.splice_pipe`;
    sockets and pipes must be non-blocking. For a timeout, wrap the call in
    ``asyncio.wait_for`` / ``asyncio.timeout``. To read the accounting after
    a cancellation on every Python version, use :class:`Transfer`. ``plan``
    (``Plan.probe(src, dst)``) lets repeated calls on the same two fds skip
    looking at them.

    Returns:
        The number of bytes that reached ``dst``.

    Raises:
        TransferError: with ``transferred`` and ``pending``.
        ValueError: a blocking socket or pipe, a negative count or offset.
        asyncio.CancelledError: with ``transferred`` and ``pending`` set.
    """
    return await Transfer(src, dst, count, offset=offset, progress=progress, pool=pool, plan=plan).run()


async def _run(t: Xfer, progress: Optional[Progress]) -> int:
    waiter = _Waiter()
    try:
        with t.outcome():
            await _deliver(t, waiter, progress)
    finally:
        waiter.close()
    return t.transferred


async def _deliver(t: Xfer, waiter: _Waiter, progress: Optional[Progress]) -> None:
    x = t.x
    while t.prefix < len(t.head):
        try:
            t.prefix += os.write(x.dst, memoryview(t.head)[t.prefix :])
        except BlockingIOError:
            await waiter.wait([(x.dst, select.POLLOUT)])
        except OSError as exc:
            raise t.error(exc.errno or errno.EIO) from None
    # The pump runs from the loop's readiness callbacks for as long as it
    # only has to wait again, and the task wakes once, at the end: each wake
    # then costs the loop's callback and the system calls, not a future and
    # a task step as well (CPU per GiB is what a sendfile server pays).
    done: asyncio.Future[None] = waiter.loop.create_future()
    later: Optional[asyncio.Handle] = None

    def step() -> None:
        nonlocal later
        if done.done():
            return
        try:
            while True:
                before = int(x.transferred)
                rc = lib.zcio_pump(x, _SLICE_BYTES, _SLICE_MS, 0)
                if rc >= 0 or not t.fall_back(-rc):
                    break
            if rc == _DONE:
                done.set_result(None)
                return
            if rc < 0:
                done.set_exception(t.error(-rc))
                return
            if progress is not None and int(x.transferred) != before:
                progress(t.transferred)
        except Exception as exc:  # noqa: BLE001 - raised in the awaiting task
            done.set_exception(exc)
            return
        if rc == _WAIT:
            waiter.watch([(x.wait_fd[i], x.wait_events[i]) for i in range(x.nwait)], step)
        elif later is None:  # a slice is used up: let others run, then go on
            later = waiter.loop.call_soon(step_later)

    def step_later() -> None:
        nonlocal later
        later = None
        step()

    try:
        step()
        await done
    finally:
        if later is not None:
            later.cancel()
    if progress is not None:
        progress(t.transferred)


async def sendfile(
    sock: FdLike,
    file: Union[IO[bytes], int],
    offset: int = 0,
    count: Optional[int] = None,
    *,
    plan: Optional[Plan] = None,
) -> int:
    """Send a file over a non-blocking socket, like ``loop.sock_sendfile``.

    What the two fds are is known from the contract (a regular file, a
    socket), so a call asks the kernel nothing about them: a file served in
    slices costs one sendfile per slice. Anything else still works, by the
    fallbacks.

    Args:
        sock: a connected, non-blocking stream socket.
        file: a regular file opened in binary mode (or its fd).
        offset: where in the file to start.
        count: bytes to send; None sends to the end of the file.
        plan: a :class:`Plan` for ``(file, sock)`` to use instead.

    Returns:
        The number of bytes sent. A file object's position is set to
        ``offset`` plus that number (also on error or cancellation).
    """
    offset = _nonneg(offset, "offset")
    sent = 0
    try:
        if plan is None:
            plan = Plan(_fd(file), _fd(sock), "file", "socket")
        sent = await Transfer(file, sock, count, offset=offset, plan=plan).run()
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
    t = Tee(src, dst, mirror, count)
    try:
        require_nonblocking(None, t.src, fd_kind(t.src), "src")
        require_nonblocking(None, t.dst, t.to_dst.dst_kind, "dst")
        require_nonblocking(None, t.mirror, t.to_mirror.dst_kind, "mirror")
        while True:
            want = t.want()
            n = t.fill(want) if want else 0
            if n is None:
                await _ready([(t.src, select.POLLIN)])
                continue
            if n == 0:
                return t.total
            t.duplicate(n)
            await splice_pipe(t.copy.r, t.mirror, n, plan=t.to_mirror)
            delivery = Transfer(t.main.r, t.dst, n, plan=t.to_dst)
            try:
                await delivery
            finally:  # also the part of the chunk that reached dst before an error
                t.total += delivery.transferred
    except OSError as exc:
        raise t.error(exc) from exc
    except BaseException as exc:
        exc.transferred = t.total  # type: ignore[attr-defined]
        exc.pending = t.pending()  # type: ignore[attr-defined]
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
