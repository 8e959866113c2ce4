"""BufferPool: page-aligned buffers that come back only when the kernel is done.

The pool maps its buffers from one anonymous ``mmap`` (hugetlbfs pages or a
transparent-huge-page hint on request, ``mlock`` on request -- both through
the C core, with the system headers' values) and watches every ticket that
pins memory (:func:`zcio._tickets.watch`): a buffer is lent again only after
its user released it and every ticket referencing it -- sender or vmsplice --
is done.
"""
from __future__ import annotations

import mmap
import operator
import os
import resource
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

from .. import _tickets
from .._binding import ffi, lib
from .._tickets import Lent, Ticket, remaining

if TYPE_CHECKING:  # pragma: no cover
    from typing_extensions import Self

__all__ = ["BufferPool", "PoolBuffer"]

_PAGE = mmap.PAGESIZE


def _hugepage_size() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("Hugepagesize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 2 << 20


def _mlock(address: int, length: int) -> None:
    err = -lib.zcio_mlock(ffi.cast("void *", address), length)
    if err:
        soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        limit = "unlimited" if soft == resource.RLIM_INFINITY else f"{soft} bytes"
        raise OSError(
            err,
            f"mlock of {length} bytes failed ({os.strerror(err)}): RLIMIT_MEMLOCK is {limit} "
            f"and this process lacks CAP_IPC_LOCK; raise the limit (ulimit -l, "
            f"LimitMEMLOCK= in systemd) or use BufferPool(..., mlock=False)",
        )


class PoolBuffer(Lent):
    """One buffer of a :class:`BufferPool`, lent to one user.

    ``memory`` is a writable memoryview of exactly ``size`` bytes at a
    page-aligned address. Pass it (or a slice, or the PoolBuffer itself) to
    :meth:`ZeroCopySender.sendall` or ``Pipe.vmsplice``: the pool notices
    tickets that reference its memory by address. Call :meth:`release` (or
    leave the ``with`` block) when you are done writing; the buffer goes back
    to the pool once every such ticket is done as well.
    """

    __slots__ = ("_pool", "_view", "address", "index")

    def __init__(self, pool: BufferPool, index: int, address: int, view: memoryview) -> None:
        self._pool: BufferPool | None = pool
        #: Position of this buffer in its pool.
        self.index = index
        #: Address of the first byte (page-aligned).
        self.address = address
        self._view: memoryview | None = view

    @property
    def memory(self) -> memoryview:
        """The writable memoryview (ValueError after :meth:`release`)."""
        if self._view is None:
            raise ValueError("PoolBuffer used after release()")
        return self._view

    @property
    def released(self) -> bool:
        """Whether :meth:`release` ran: the memory is no longer this object's."""
        return self._view is None

    def __len__(self) -> int:
        return len(self.memory)

    def release(self) -> None:
        """Give the buffer back: reusable once its tickets are done. Idempotent."""
        view, self._view = self._view, None
        pool, self._pool = self._pool, None
        if view is not None:
            try:
                view.release()  # make stray uses fail loudly
            except BufferError:
                pass  # exported (e.g. pinned by a ticket): the pin keeps it
        if pool is not None:
            pool._user_done(self.index)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self._view is None else f"size={len(self._view)}"
        return f"<zcio.PoolBuffer #{self.index} {state} at {self.address:#x}>"


class BufferPool:
    """Page-aligned buffers that come back only when the kernel is done.

    The pool maps ``count`` buffers of ``size`` bytes from one anonymous
    ``mmap``, each starting on a page boundary (a huge-page boundary with
    hugetlbfs). :meth:`acquire` lends a :class:`PoolBuffer`; a buffer is
    reused only after its user released it **and** every ticket referencing
    its memory is done -- sender tickets (zero-copy completions) and
    vmsplice tickets (the pipe's reader consumed past it) alike. Tickets are
    matched to buffers by address, so slices and memoryviews of a buffer
    count too. Thread-safe.

    Args:
        size: bytes per buffer (> 0).
        count: number of buffers (> 0).
        huge_pages: back the pool with huge pages: MAP_HUGETLB if hugetlbfs
            pages are reserved, otherwise an madvise(MADV_HUGEPAGE) hint
            (transparent huge pages); ``hugetlb`` says which happened.
        mlock: lock the pool in memory (no page faults, no swap).

    Raises:
        ValueError: a size or count <= 0.
        OSError: mmap failed; mlock failed (the message names RLIMIT_MEMLOCK).
    """

    def __init__(self, size: int, count: int, *, huge_pages: bool = False, mlock: bool = False) -> None:
        size = operator.index(size)
        count = operator.index(count)
        if size <= 0 or count <= 0:
            raise ValueError(f"size and count must be > 0, got {size} and {count}")
        self.size = size
        self.count = count
        #: True when the pool is backed by hugetlbfs pages (MAP_HUGETLB).
        self.hugetlb = False
        self.page_size = _PAGE
        mm: mmap.mmap | None = None
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        if huge_pages:
            hsize = _hugepage_size()
            stride = -(-size // hsize) * hsize
            try:
                mm = mmap.mmap(-1, stride * count, flags=flags | lib.MAP_HUGETLB, prot=prot)
                self.hugetlb = True
                self.page_size = hsize
            except OSError:
                mm = None  # no huge pages reserved: fall back below
        self.stride = -(-size // self.page_size) * self.page_size
        if mm is None:
            mm = mmap.mmap(-1, self.stride * count, flags=flags, prot=prot)
            if huge_pages and hasattr(mm, "madvise") and hasattr(mmap, "MADV_HUGEPAGE"):
                try:
                    mm.madvise(mmap.MADV_HUGEPAGE)
                except OSError:
                    pass
        self._mm = mm
        pin = ffi.from_buffer(mm)
        self.base = int(ffi.cast("uintptr_t", pin))
        ffi.release(pin)
        self.locked = False
        if mlock:
            try:
                _mlock(self.base, self.stride * count)
            except BaseException:
                mm.close()
                raise
            self.locked = True
        self._cond = threading.Condition(threading.Lock())
        self._free: deque[int] = deque(range(count))
        self._lent = [False] * count  # handed to a user, not released yet
        self._refs = [0] * count  # pending tickets referencing the buffer
        self._tickets: dict[Ticket, list[int]] = {}
        self._closed = False
        _tickets.watch(self)

    # -- public

    def acquire(self, timeout: float | None = None) -> PoolBuffer | None:
        """Lend a buffer, waiting (up to ``timeout``) for one to come back.

        While waiting, the tickets holding buffers are polled (completions
        reaped, pipes checked), so buffers return without other calls.

        Args:
            timeout: most seconds to wait; None waits indefinitely, 0 does
                not wait.

        Returns:
            A :class:`PoolBuffer`, or None when none became free in time.

        Raises:
            ValueError: the pool is closed.
        """
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        delay = 0.0005
        while True:
            with self._cond:
                if self._closed:
                    raise ValueError("BufferPool is closed")
                if self._free:
                    i = self._free.popleft()
                    self._lent[i] = True
                    off = i * self.stride
                    view = memoryview(self._mm)[off : off + self.size]
                    return PoolBuffer(self, i, self.base + off, view)
                tickets = list(self._tickets)
            for t in tickets:
                t.done()  # reaps; a finished ticket calls back into the pool
            with self._cond:
                if self._free:
                    continue
                left = remaining(deadline)
                if left is not None and left <= 0:
                    return None
                self._cond.wait(delay if left is None else min(delay, left))
            delay = min(delay * 2, 0.02)

    @property
    def free(self) -> int:
        """Buffers ready to lend."""
        return len(self._free)

    @property
    def in_use(self) -> int:
        """Buffers lent and not released by their user."""
        return sum(self._lent)

    @property
    def busy(self) -> int:
        """Buffers released by their user but still referenced by a ticket."""
        with self._cond:
            return sum(1 for i in range(self.count) if not self._lent[i] and self._refs[i])

    def close(self) -> None:
        """Stop lending; unmap the memory once no buffer or pin refers to it.

        Unmapping never endangers in-flight sends: the kernel holds its own
        references to the pages it still reads.
        """
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        _tickets.unwatch(self)
        try:
            self._mm.close()
        except BufferError:
            pass  # views or pins are alive; the mapping goes with the last one

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran."""
        return self._closed

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<zcio.BufferPool size={self.size} count={self.count} free={len(self._free)} "
            f"hugetlb={self.hugetlb} locked={self.locked}>"
        )

    # -- internals

    def _link(self, ticket: Ticket, address: int, length: int) -> None:
        end = self.base + self.stride * self.count
        if length <= 0 or address >= end or address + length <= self.base:
            return
        first = (max(address, self.base) - self.base) // self.stride
        last = (min(address + length, end) - 1 - self.base) // self.stride
        indices = list(range(first, last + 1))
        with self._cond:
            for i in indices:
                self._refs[i] += 1
            first_link = ticket not in self._tickets
            self._tickets.setdefault(ticket, []).extend(indices)
        if first_link:
            ticket._add_callback(self._ticket_done)

    def _ticket_done(self, ticket: Ticket) -> None:
        with self._cond:
            indices = self._tickets.pop(ticket, [])
            for i in indices:
                self._refs[i] -= 1
                self._maybe_free(i)
            self._cond.notify_all()

    def _user_done(self, index: int) -> None:
        with self._cond:
            self._lent[index] = False
            self._maybe_free(index)
            self._cond.notify_all()

    def _maybe_free(self, i: int) -> None:
        if not self._lent[i] and self._refs[i] == 0 and i not in self._free:
            self._free.append(i)
