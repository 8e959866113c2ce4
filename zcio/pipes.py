"""Pipes: a context-managed pipe pair, and a bounded pool of reusable ones.

Splicing between two non-pipe fds (socket to socket, say) needs a pipe in the
middle. Creating one per transfer costs two fds and a resize; :class:`PipePool`
keeps a bounded number of them, sized from ``/proc/sys/fs/pipe-max-size`` and
the per-user pipe page limits, and never reuses a pipe that still holds data.
"""
from __future__ import annotations

import array
import fcntl
import os
import termios
import threading
import warnings
import weakref
from typing import TYPE_CHECKING, Any, List, Optional, Sequence

from . import _stats
from ._binding import lib
from .lowlevel import features

if TYPE_CHECKING:  # pragma: no cover
    from .zerocopy import Ticket

__all__ = ["Pipe", "PipePool", "default_pool"]

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

    def vmsplice(self, buffers: Sequence[Any]) -> "Ticket":
        """Map ``buffers`` into the pipe without copying; see :mod:`zcio.zerocopy`.

        Returns a ticket that is done once the pipe's reader has consumed past
        these bytes; the buffers stay pinned (a bytearray cannot be resized)
        until then. A reader that splices the pages onward to a socket keeps
        referencing them after that: for sockets use ZeroCopySender.
        """
        from .zerocopy import pipe_vmsplice

        self._check_open()
        return pipe_vmsplice(self, buffers)

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

    def __enter__(self) -> "Pipe":
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
        return self._in_use - len(self._dropped)

    @property
    def free(self) -> int:
        return len(self._free)

    def __enter__(self) -> "PipePool":
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


def pool_gauges() -> "dict[str, int]":
    """Pipes in use and free, over every live pool (for zcio.stats())."""
    pools = list(_pools)
    return {"in_use": sum(p.in_use for p in pools), "free": sum(p.free for p in pools)}


_stats.add_gauges("pipes", pool_gauges)
