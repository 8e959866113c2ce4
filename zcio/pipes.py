"""Pipes: a context-managed pipe pair, and a bounded pool of reusable ones.

Splicing between two non-pipe fds (socket to socket, say) needs a pipe in the
middle. Creating one per transfer costs two fds and a resize; :class:`PipePool`
keeps a bounded number of them, sized from ``/proc/sys/fs/pipe-max-size`` and
the per-user pipe page limits, and never reuses a pipe that still holds data.
"""
from __future__ import annotations

import array
import errno as _errno
import fcntl
import os
import select
import termios
import threading
import time
import warnings
import weakref
from typing import TYPE_CHECKING, Any, List, Optional, Sequence

from . import _stats, _tickets
from ._binding import ffi, lib
from ._errors import TransferError, transfer_error
from ._tickets import Lent, Ticket, remaining
from .lowlevel import _poll_fd, features

if TYPE_CHECKING:  # pragma: no cover
    from typing_extensions import Self

__all__ = ["Pipe", "PipePool", "PipeTicket", "default_pool", "pipe_vmsplice"]

_PAGE = os.sysconf("SC_PAGE_SIZE")


class Pipe:
    """A pipe pair ``(r, w)`` owned by this object.

    Both ends are created close-on-exec (and non-blocking unless asked
    otherwise) and are closed by :meth:`close` or at the end of a ``with``
    block; after that ``r`` and ``w`` are -1, so a reused fd number is never
    touched. The object is not thread-safe: one user at a time. A Pipe
    dropped unclosed is closed by its finalizer, with a ResourceWarning (as
    ``socket.socket`` does); one taken from a :class:`PipePool` and dropped
    unreleased also gives its place in the pool back.

    Args:
        size: if given, the capacity to ask for with F_SETPIPE_SZ (the kernel
            rounds up to a power-of-two number of pages; more than
            pipe-max-size needs CAP_SYS_RESOURCE).
        nonblocking: create both ends O_NONBLOCK (the default).
    """

    __slots__ = ("r", "w", "written", "_pool", "__weakref__")

    def __init__(self, size: Optional[int] = None, *, nonblocking: bool = True) -> None:
        # Owned state first, so that the finalizer finds it whatever fails next.
        self.r = self.w = -1
        #: The pool this pipe is checked out of, if any (set by PipePool).
        self._pool: Optional[PipePool] = None
        flags = os.O_CLOEXEC | (os.O_NONBLOCK if nonblocking else 0)
        self.r, self.w = os.pipe2(flags)
        #: Bytes written into the pipe through this object (vmsplice tickets
        #: use it to tell when the reader has consumed past their bytes).
        self.written = 0
        if size is not None:
            try:
                self.size = size
            except BaseException:
                self.close()
                raise

    @property
    def closed(self) -> bool:
        """Whether both ends were closed (``r`` and ``w`` are -1 then)."""
        return self.r < 0

    def _check_open(self) -> None:
        if self.r < 0:
            raise ValueError("I/O operation on a closed Pipe")

    @property
    def size(self) -> int:
        """The pipe's capacity in bytes (F_GETPIPE_SZ); settable (F_SETPIPE_SZ)."""
        self._check_open()
        return fcntl.fcntl(self.w, lib.F_GETPIPE_SZ)

    @size.setter
    def size(self, value: int) -> None:
        self._check_open()
        if value <= 0:
            raise ValueError(f"pipe size must be > 0, got {value}")
        fcntl.fcntl(self.w, lib.F_SETPIPE_SZ, value)

    @property
    def pending(self) -> int:
        """Bytes currently in the pipe, waiting for its reader (FIONREAD)."""
        self._check_open()
        buf = array.array("i", [0])
        fcntl.ioctl(self.r, termios.FIONREAD, buf, True)
        return buf[0]

    def drain(self, limit: Optional[int] = None) -> bytes:
        """Read (at most ``limit``) bytes now in the pipe, without blocking."""
        self._check_open()
        want = self.pending if limit is None else min(limit, self.pending)
        parts: List[bytes] = []
        while want > 0:
            try:
                chunk = os.read(self.r, want)
            except BlockingIOError:
                break
            if not chunk:
                break
            parts.append(chunk)
            want -= len(chunk)
        return b"".join(parts)

    def vmsplice(self, buffers: Sequence[Any], *, timeout: Optional[float] = None) -> PipeTicket:
        """Map ``buffers`` into the pipe without copying; see :func:`pipe_vmsplice`.

        Returns a ticket that is done once the pipe's reader has consumed past
        these bytes; the buffers stay pinned (a bytearray cannot be resized)
        until then. A reader that splices the pages onward to a socket keeps
        referencing them after that: for sockets use ZeroCopySender.
        ``timeout`` bounds the wait for room in a full pipe.
        """
        self._check_open()
        return pipe_vmsplice(self, buffers, timeout=timeout)

    def close(self) -> None:
        """Close both ends (idempotent)."""
        self._close_fds()

    def _close_fds(self, _close: Any = os.close) -> None:
        # os.close bound early: a finalizer may run when module globals are gone.
        r, w = self.r, self.w
        self.r = self.w = -1
        for fd in (r, w):
            if fd >= 0:
                _close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if getattr(self, "r", -1) < 0 and getattr(self, "w", -1) < 0:
            return
        pool, self._pool = self._pool, None
        if pool is not None:
            # The pool's user took it and dropped it: that user is warned, and
            # the pool gets its place back.
            _warn(f"{self!r} taken from {pool!r} was never released", ResourceWarning, source=self)
            pool._dropped.append(None)
        else:
            _warn(f"unclosed {self!r}", ResourceWarning, source=self)
        self._close_fds()

    def __repr__(self) -> str:
        if self.closed:
            return "<zcio.Pipe closed>"
        return f"<zcio.Pipe r={self.r} w={self.w}>"


# ---------------------------------------------------------------- vmsplice

_IOV_MAX = 1024


class PipeTicket(Ticket):
    """A vmsplice ticket: done once the pipe's reader consumed past its bytes.

    ``pipe.written`` counts the bytes written through the Pipe object; the
    ticket remembers ``end``, its value after this ticket's bytes went in;
    the reader has consumed ``pipe.written - pipe.pending``. A closed Pipe
    resolves its tickets (the pipe's pages went with it).
    """

    __slots__ = ("_end", "_pipe")

    def __init__(self, pins: List[Any], pipe: Pipe) -> None:
        super().__init__(sum(len(p) for p in pins), pins)
        self._pipe: Optional[Pipe] = pipe
        self._end = 0

    def _poll(self) -> None:
        if self._consumed():
            _tickets.run(self._finish(), self)

    def _consumed(self) -> bool:
        pipe = self._pipe
        if pipe is None or pipe.closed:
            return True  # the pipe's pages went with it (see pipe_vmsplice)
        written = pipe.written
        if written < self._end:
            return True  # a pool took the pipe back empty and reset the count
        try:
            pending = pipe.pending
        except (OSError, ValueError):
            return pipe.closed
        return written - pending >= self._end

    def _wait(self, timeout: Optional[float]) -> bool:
        # Nothing signals consumption: poll with a short back-off.
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        delay = 0.0005
        while True:
            self._poll()
            if self._done:
                return True
            left = remaining(deadline)
            if left is not None and left <= 0:
                return False
            time.sleep(delay if left is None else min(delay, left))
            delay = min(delay * 2, 0.02)

    def _finish(self) -> List[_tickets.Callback]:
        callbacks = super()._finish()
        self._pipe = None
        _tickets.let_go(self)
        return callbacks


def _pin_all(buffers: Sequence[Any]) -> List[Any]:
    """Pin each non-empty buffer (a lent pool buffer: its memory)."""
    pins: List[Any] = []
    try:
        for b in buffers:
            pins.append(ffi.from_buffer(b.memory if isinstance(b, Lent) else b))
    except BaseException:
        for p in pins:
            ffi.release(p)
        raise
    for p in pins:
        if not len(p):
            ffi.release(p)  # nothing of it goes into the pipe
    return [p for p in pins if len(p)]


def pipe_vmsplice(pipe: Pipe, buffers: Sequence[Any], *, timeout: Optional[float] = None) -> PipeTicket:
    """Map ``buffers`` into ``pipe`` without copying; the ticket keeps them pinned.

    ``Pipe.vmsplice(buffers)`` calls this. All bytes go in: the call loops
    over partial vmsplices and, when the pipe is full, waits for POLLOUT.
    **Deadlock risk:** if nobody reads the pipe (or the reader is this same
    thread, later), a call offering more than the pipe's free space waits
    forever -- pass ``timeout``, size the pipe, or read from another thread.

    The ticket is done once the pipe's reader has consumed past these bytes
    (see :class:`PipeTicket`). Bytes written into the fd behind the Pipe
    object's back only make the estimate late, never early. A closed Pipe
    resolves its tickets (closing the last fd of a pipe drops its pages; if
    you duplicated the pipe's fds, e.g. into a child process, keep the Pipe
    open until those readers are done). A reader that *splices* the pages
    onward (to a socket, a file) keeps referencing them after the ticket
    resolved; for sockets use :class:`~zcio.ZeroCopySender`.

    Nothing signals consumption, so ``wait()`` polls with a short back-off.
    Pending vmsplice tickets are also checked by later calls of this
    function, ``zcio.zerocopy.reap_graveyard`` and ``BufferPool.acquire``.

    Args:
        pipe: a :class:`Pipe` (its ``w`` end is written).
        buffers: a sequence of C-contiguous bytes-like objects or
            ``zcio.zerocopy.PoolBuffer`` objects (not a single one).
        timeout: most seconds to wait for room in a full pipe without
            progress; None: no limit.

    Returns:
        The ticket (done at once when ``buffers`` hold no bytes).

    Raises:
        TypeError: ``buffers`` is itself bytes-like, or holds a non-buffer.
        ValueError: the pipe is closed.
        TimeoutError: no room in the pipe within ``timeout``.
        OSError: from vmsplice. After some bytes went in, the error is a
            :class:`~zcio.TransferError` with ``.transferred`` and
            ``.ticket`` (covering the bytes that went in).
    """
    if isinstance(buffers, (bytes, bytearray, memoryview, str)):
        raise TypeError("buffers must be a sequence of bytes-like objects, not a single one")
    if pipe.closed:
        raise ValueError("vmsplice into a closed Pipe")
    _tickets.poll_kept()
    ticket = PipeTicket(_pin_all(buffers), pipe)
    if ticket.nbytes == 0:
        _tickets.run(ticket._finish(), ticket)
        return ticket
    start = pipe.written
    try:
        _vmsplice_all(pipe, ticket._pins, timeout)
    except BaseException as exc:
        moved = pipe.written - start
        if moved == 0:
            _tickets.run(ticket._finish(), ticket)
            if isinstance(exc, TransferError):
                raise OSError(exc.errno, exc.strerror) from None
            raise
        ticket.nbytes = moved
        _hand_over(ticket, pipe)
        if isinstance(exc, TransferError):
            exc.ticket = ticket  # type: ignore[attr-defined]
        elif isinstance(exc, OSError):
            err = transfer_error(exc.errno or _errno.EIO, moved, b"", exc.strerror)
            err.ticket = ticket  # type: ignore[attr-defined]
            raise err from exc
        raise
    _hand_over(ticket, pipe)
    return ticket


def _hand_over(ticket: PipeTicket, pipe: Pipe) -> None:
    """The ticket's bytes are in the pipe: keep it until the reader is past them."""
    ticket._end = pipe.written
    _tickets.keep(ticket)
    _tickets.announce(ticket)


def _vmsplice_all(pipe: Pipe, pins: List[Any], timeout: Optional[float]) -> None:
    """vmsplice every pinned byte into the pipe, waiting for room; each byte
    that goes in is counted in ``pipe.written`` at once."""
    total = sum(len(p) for p in pins)
    fd = pipe.w
    iov = ffi.new("struct iovec[]", len(pins))
    for i, p in enumerate(pins):
        iov[i].iov_base = p
        iov[i].iov_len = len(p)
    idx = 0
    moved = 0
    while moved < total:
        n = lib.zcio_vmsplice(fd, iov + idx, min(len(pins) - idx, _IOV_MAX), lib.SPLICE_F_NONBLOCK)
        if n < 0:
            err = -n
            if err == _errno.EINTR:
                continue
            if err not in (_errno.EAGAIN, _errno.EWOULDBLOCK):
                raise OSError(err, os.strerror(err))
            revents = _poll_fd(fd, select.POLLOUT, timeout)
            if revents == 0:
                raise transfer_error(_errno.ETIMEDOUT, moved, b"", f"no room in the pipe within {timeout:g} seconds")
            if revents & select.POLLNVAL:
                raise OSError(_errno.EBADF, os.strerror(_errno.EBADF))
            continue
        moved += n
        pipe.written += n
        while n > 0:  # advance the iovec past what went in
            entry = iov[idx]
            if n >= entry.iov_len:
                n -= entry.iov_len
                idx += 1
            else:
                entry.iov_base = ffi.cast("char *", entry.iov_base) + n
                entry.iov_len -= n
                n = 0


def _default_sizing() -> "tuple[int, int]":
    """(pipe size, most pipes) from pipe-max-size and the per-user page limits.

    The per-user soft limit counts every pipe page the user has in every
    process; past it new pipes get one page. The pool takes at most a quarter
    of it, so other pipes of the user keep their room.
    """
    f = features()
    size = min(1 << 20, f["pipe_max_size"] or (1 << 20))
    size = max(size, f["pipe_default_size"] or 65536)
    soft = f["pipe_user_pages_soft"] or 0
    if soft:
        budget_pages = soft // 4
        most = max(4, budget_pages * _PAGE // size)
    else:
        most = 64
    return size, most


class PipePool:
    """A bounded pool of reusable, non-blocking pipes.

    :meth:`acquire` returns a pipe, or None when ``max_pipes`` are in use (the
    caller then copies instead, and the shortfall is counted in
    ``zcio.stats()``). :meth:`release` keeps an empty pipe for reuse and
    destroys one that still holds data, or that came back closed. Thread-safe.
    After ``os.fork()`` the child drops the pipes it inherited.

    The pool owns its free pipes; a pipe it hands out belongs to the caller
    until released (dropping it unreleased warns, see :class:`Pipe`). A pool
    dropped with free pipes unclosed closes them, with a ResourceWarning.

    Args:
        max_pipes: most pipes in use at once (default: from the per-user pipe
            page limits).
        pipe_size: capacity to give each pipe (default: min(1 MiB,
            pipe-max-size)); a refused resize is ignored.
    """

    def __init__(self, max_pipes: Optional[int] = None, pipe_size: Optional[int] = None) -> None:
        size, most = _default_sizing()
        self.max_pipes = most if max_pipes is None else int(max_pipes)
        self.pipe_size = size if pipe_size is None else int(pipe_size)
        if self.max_pipes < 0:
            raise ValueError("max_pipes must be >= 0")
        if self.pipe_size <= 0:
            raise ValueError("pipe_size must be > 0")
        self._lock = threading.Lock()
        self._free: List[Pipe] = []
        self._in_use = 0
        # One entry per pipe dropped unreleased. Appended by Pipe's finalizer,
        # which may run while this thread holds _lock, so it takes no lock;
        # _settle() folds the entries into _in_use under the lock.
        self._dropped: List[None] = []
        self._closed = False
        self._lives_with_process = False  # the default pool: never warns
        _pools.add(self)

    def _settle(self) -> None:
        n = len(self._dropped)
        if n:
            del self._dropped[:n]
            self._in_use -= n

    def acquire(self) -> Optional[Pipe]:
        """A pipe for exclusive use until :meth:`release`, or None if exhausted."""
        with self._lock:
            if self._closed:
                raise ValueError("PipePool is closed")
            self._settle()
            if self._free:
                self._in_use += 1
                pipe = self._free.pop()
                pipe._pool = self
                return pipe
            if self._in_use >= self.max_pipes:
                _stats.count_pipe("exhausted")
                return None
            self._in_use += 1
        try:
            pipe = Pipe()
        except OSError:
            with self._lock:
                self._in_use -= 1
            raise
        pipe._pool = self
        try:
            pipe.size = self.pipe_size
        except OSError:
            pass  # over pipe-max-size or the user's page limit: keep what we got
        _stats.count_pipe("created")
        return pipe

    def release(self, pipe: Pipe) -> None:
        """Give a pipe back: reused if empty, destroyed if it holds data.

        Raises:
            ValueError: the pipe is not checked out of this pool (released
                twice, or never taken from it); the pipe is left alone.
        """
        if pipe._pool is not self:
            raise ValueError(f"{pipe!r} is not checked out of {self!r}")
        pipe._pool = None
        keep = not pipe.closed and pipe.pending == 0
        with self._lock:
            self._settle()
            self._in_use -= 1
            if keep and not self._closed:
                pipe.written = 0
                self._free.append(pipe)
                return
        pipe.close()
        _stats.count_pipe("destroyed")

    def close(self) -> None:
        """Close the free pipes; pipes in use are closed when released."""
        with self._lock:
            self._closed = True
            free, self._free = self._free, []
        for pipe in free:
            pipe.close()
            _stats.count_pipe("destroyed")

    @property
    def in_use(self) -> int:
        """Pipes checked out now (acquired and not released)."""
        return self._in_use - len(self._dropped)

    @property
    def free(self) -> int:
        """Empty pipes kept for reuse now."""
        return len(self._free)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self, _warn: Any = warnings.warn) -> None:
        free = getattr(self, "_free", None)
        if not free:
            return
        if not self._lives_with_process:  # the default pool ends with the process
            _warn(f"unclosed {self!r}", ResourceWarning, source=self)
        # Unreachable: nobody holds the lock. Not counted in stats, which may
        # be gone if this runs at interpreter exit.
        self._closed = True
        self._free = []
        for pipe in free:
            pipe._close_fds()

    def __repr__(self) -> str:
        return (
            f"<zcio.PipePool in_use={self.in_use} free={len(self._free)} "
            f"max_pipes={self.max_pipes} pipe_size={self.pipe_size}>"
        )

    def _after_fork_in_child(self) -> None:
        # The parent's pipes are shared with it now: never reuse them here.
        self._lock = threading.Lock()
        free, self._free = self._free, []
        self._in_use = 0
        self._dropped = []
        for pipe in free:
            pipe.close()


_pools: "weakref.WeakSet[PipePool]" = weakref.WeakSet()
_default: Optional[PipePool] = None
_default_lock = threading.Lock()


def default_pool() -> PipePool:
    """The process-wide pool that splice_pipe uses when given none."""
    global _default
    with _default_lock:
        if _default is None:
            _default = PipePool()
            _default._lives_with_process = True
        return _default


def _forget_in_child() -> None:
    global _default_lock
    _default_lock = threading.Lock()
    for pool in list(_pools):
        pool._after_fork_in_child()


os.register_at_fork(after_in_child=_forget_in_child)


def pool_gauges() -> "tuple[int, int]":
    """Pipes in use and free, over every live pool (for zcio.stats())."""
    pools = list(_pools)
    return sum(p.in_use for p in pools), sum(p.free for p in pools)


_stats.set_pipe_gauges(pool_gauges)
