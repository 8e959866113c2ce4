"""Zero-copy sends and buffer lifetime: ZeroCopySender, Ticket, BufferPool.

With ``MSG_ZEROCOPY`` (and with ``vmsplice``) the kernel keeps reading the
caller's memory after the system call returned. Python, meanwhile, is free to
resize a ``bytearray`` or hand a freed buffer's memory to the next object;
the kernel would then transmit whatever is there now. This module closes that
gap:

- **Pins.** Every buffer handed to :meth:`ZeroCopySender.sendall` or
  :func:`pipe_vmsplice` is pinned with ``ffi.from_buffer`` (the buffer export
  is held: a ``bytearray`` cannot be resized, ``BufferError``; the object
  cannot be freed). The pin belongs to the :class:`Ticket` the call returns
  and is released exactly once, when the ticket is done: when the kernel's
  completions cover every send id that referenced the buffer, or when the
  pipe's reader has consumed past the vmspliced bytes. Dropping the ticket
  does not release the pin early: the sender (or, for vmsplice, this module)
  keeps a reference to every ticket that is not done.

- **Completion tracking.** Each successful ``send()`` with ``MSG_ZEROCOPY``
  takes the next id of the socket's 32-bit counter (a partial send on a
  stream socket takes one; a failed send none). Completions are inclusive,
  coalesced ranges that may arrive out of order and wrap past ``2**32 - 1``;
  :class:`CompletionTracker` turns them into "these ids are done".

- **Per-socket state outlives the sender.** The id counter belongs to the
  socket, not to the sender, so zcio keeps one small record per socket
  (keyed by the socket's inode) holding the tracker and the tickets still in
  flight. A second sender on the same socket -- after the first was closed --
  continues the id sequence. Two open senders on one socket are refused.
  Do not mix ``zcio.send_zerocopy`` and a sender on one socket: the ids would
  no longer line up.

- **The graveyard.** :meth:`ZeroCopySender.close` flushes with a bounded
  wait. If completions still have not come (a stalled peer), the pins are
  *not* released: the socket's record, with its pending tickets, is parked
  in a module-level graveyard and reaped later -- opportunistically by later
  calls into this module (a new sender, ``sendall``, ``flush``, ``close``),
  explicitly by :func:`reap_graveyard`, and once more (bounded, 1 s) at
  interpreter exit. A sender that is garbage-collected parks its record the
  same way (``weakref.finalize``, no ``__del__``). If the socket itself is
  closed while tickets are parked, their completions can never be read
  again, yet the kernel may still transmit the pages (a closed TCP socket
  keeps sending its queued data): those pins are then kept for the life of
  the process and counted as ``abandoned`` in :func:`graveyard_stats`. To
  avoid that, ``flush()`` (or ``close(timeout=...)`` long enough) before
  closing a socket whose peer may be slow.

- **ENOBUFS.** A zero-copy send fails with ENOBUFS when the socket's
  ancillary memory (``optmem_max``, which every not-yet-reaped notification
  counts against) or the locked-memory limit is exhausted. The sender reaps
  completions every ``reap_every`` (32) zero-copy sends, as the kernel's
  selftest does. On ENOBUFS with sends in flight it reaps and retries (waiting
  up to 50 ms for POLLERR when nothing was ready); with nothing in flight --
  or when that brief wait brought nothing -- it sends that chunk by plain
  copy: no notification can be waited for that might never come.

- **policy="auto".** Loopback and veth to a local socket always copy (the
  completions say ``COPIED``), so ``MSG_ZEROCOPY`` only adds work there.
  With ``policy="auto"`` a sender stops passing ``MSG_ZEROCOPY`` once
  :data:`AUTO_COPIED_LIMIT` (32) consecutive send ids were reported copied
  with no true zero-copy completion in between, or once
  :data:`AUTO_ENOBUFS_LIMIT` (8) consecutive ENOBUFS came with nothing in
  flight (a locked-memory limit too small for any send); from then on it
  sends by plain copy and its tickets are done at once. ``stats`` says so
  (``policy_switched_off``, ``switch_reason``); the decision lasts for the
  sender's life (a new sender on the socket starts afresh). ``"always"`` and
  ``"never"`` force the choice.

- **Threads and fork.** One thread at a time may call ``sendall`` on a
  sender (a second one gets RuntimeError); tickets may be polled and waited
  on from any thread, and whoever reaps finishes everyone's tickets. After
  ``os.fork()`` the child forgets the parent's records (reading their error
  queues would steal the parent's completions) and keeps any parked pins for
  good; do not use a parent's sender in the child.

Vmsplice tickets (:func:`pipe_vmsplice`, called by ``Pipe.vmsplice``)
resolve once the pipe's reader has consumed past the mapped bytes. A reader
that *splices* those pages onward (to a socket, say) keeps referencing them
after the ticket resolved -- the pipe only passed page references along. For
sockets, use :class:`ZeroCopySender`, whose completions say when the kernel
is really done.

:class:`BufferPool` hands out page-aligned buffers from one anonymous
``mmap`` and takes a buffer back only when its user released it *and* every
ticket referencing its memory (sender or vmsplice) is done -- the safe way to
reuse memory under zero-copy sends.
"""
from __future__ import annotations

import atexit
import bisect
import errno as _errno
import math
import mmap
import operator
import os
import platform
import resource
import select
import socket
import threading
import time
import weakref
from collections import deque
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Deque,
    Dict,
    Iterable,
    List,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
)

from . import lowlevel
from ._binding import ffi, lib
from ._errors import TransferError, transfer_error
from .lowlevel import Completion, FdLike, _fd, _nonneg, _poll_fd

if TYPE_CHECKING:  # pragma: no cover
    from .pipes import Pipe

__all__ = [
    "AUTO_COPIED_LIMIT",
    "AUTO_ENOBUFS_LIMIT",
    "DEFAULT_THRESHOLD",
    "BufferPool",
    "CompletionTracker",
    "PoolBuffer",
    "Ticket",
    "ZeroCopySender",
    "graveyard_stats",
    "pipe_vmsplice",
    "reap_graveyard",
]

_U32 = 1 << 32

#: Sends smaller than this many bytes are plain copies (gRPC uses 16 KiB).
DEFAULT_THRESHOLD = 16 * 1024
#: policy="auto": consecutive send ids reported COPIED before MSG_ZEROCOPY is dropped.
AUTO_COPIED_LIMIT = 32
#: policy="auto": consecutive ENOBUFS with nothing in flight before MSG_ZEROCOPY is dropped.
AUTO_ENOBUFS_LIMIT = 8

_MAX_CHUNK = 1 << 20  # most bytes per zero-copy send() on a stream socket
_ENOBUFS_WAIT = 0.05  # seconds to wait for a completion after ENOBUFS
_SLICE = 0.05  # longest single poll() while waiting (other threads may reap)
_CLOSE_TIMEOUT = 1.0
_GRAVEYARD_INTERVAL = 0.1  # at most this often, sendall() reaps the graveyard
_ENOTSUPP = 524  # the kernel's internal ENOTSUPP, seen by old kernels' callers
_ZC_UNSUPPORTED = {_errno.EOPNOTSUPP, _errno.ENOPROTOOPT, _ENOTSUPP}
_IOV_MAX = 1024
_POLLOUT = select.POLLOUT
_POLLERR = select.POLLERR
_POLLNVAL = select.POLLNVAL
_PAGE = mmap.PAGESIZE

# The C calls used on hot paths, looked up through the module so tests can
# inject faults (e.g. ENOBUFS) by replacing them.
_c_send = lib.zcio_send
_c_vmsplice = lib.zcio_vmsplice

Buffer = Any  # any object exporting the buffer protocol


# ---------------------------------------------------------------- tracker


class CompletionTracker:
    """Which ``MSG_ZEROCOPY`` send ids of one socket still await completion.

    Pure bookkeeping, no system calls. Ids are the socket's u32 counter:
    :meth:`issue` hands out the next one (wrapping from ``2**32 - 1`` to 0)
    and :meth:`complete` takes the kernel's inclusive ranges -- coalesced,
    in any order, possibly wrapped (``last < first``). Internally ids are
    numbered without wrapping; the state is a low-water mark (every id
    before it is complete) plus a sorted list of completed intervals above
    it, so memory stays proportional to the number of out-of-order gaps.

    Fewer than ``2**32`` ids may be outstanding at once (the kernel's own
    limit is far lower: optmem allows a few hundred notifications).

    Args:
        first_id: the id the next :meth:`issue` returns (0 for a fresh
            socket; tests start near ``2**32`` to exercise the wrap).

    Raises:
        ValueError: ``first_id`` outside ``[0, 2**32)``.
    """

    __slots__ = ("_low", "_next", "_starts", "_ends", "_covered")

    def __init__(self, first_id: int = 0) -> None:
        first_id = operator.index(first_id)
        if not 0 <= first_id < _U32:
            raise ValueError(f"first_id must be in [0, 2**32), got {first_id}")
        self._low = first_id  # every id before this one is complete
        self._next = first_id  # the next id to issue (unwrapped)
        self._starts: List[int] = []  # completed intervals [start, end) above _low
        self._ends: List[int] = []
        self._covered = 0  # ids inside those intervals

    @property
    def next_id(self) -> int:
        """The id the next :meth:`issue` returns."""
        return self._next % _U32

    @property
    def outstanding(self) -> int:
        """How many issued ids are not complete yet."""
        return self._next - self._low - self._covered

    def issue(self) -> int:
        """Record one successful zero-copy send and return its id."""
        send_id = self._next % _U32
        self._next += 1
        return send_id

    def complete(self, first: int, last: int) -> int:
        """Mark the inclusive range ``first..last`` complete.

        Ids never issued, and ids already complete, are ignored (the kernel
        sends neither; a bug elsewhere must not release a pin early).

        Args:
            first: the range's first id (``ee_info``).
            last: its last id (``ee_data``); ``last < first`` means the range
                wrapped past ``2**32 - 1``.

        Returns:
            How many ids became complete.

        Raises:
            ValueError: an id outside ``[0, 2**32)``.
        """
        if not (0 <= first < _U32 and 0 <= last < _U32):
            raise ValueError(f"send ids must be in [0, 2**32), got {first}..{last}")
        lo, hi = self._seq_range(first, last)
        return self._complete_seq(lo, hi)

    def is_pending(self, send_id: int) -> bool:
        """True if ``send_id`` was issued and is not complete yet."""
        seq = self._low + ((send_id - self._low) % _U32)
        if seq >= self._next:
            return False
        return not self._covers(seq, seq + 1)

    # Unwrapped interface, for the sender (all under its lock).

    def _seq_range(self, first: int, last: int) -> Tuple[int, int]:
        """The unwrapped half-open range for the inclusive u32 range."""
        lo = self._low + ((first - self._low) % _U32)
        if lo >= self._next:
            lo -= _U32  # starts before the low-water mark (already complete)
        return lo, lo + ((last - first) % _U32) + 1

    def _complete_seq(self, lo: int, hi: int) -> int:
        lo = max(lo, self._low)
        hi = min(hi, self._next)
        if lo >= hi:
            return 0
        starts, ends = self._starts, self._ends
        i = bisect.bisect_left(ends, lo)  # first interval ending at or after lo
        j = bisect.bisect_right(starts, hi)  # intervals [i, j) overlap or touch
        new = hi - lo
        for k in range(i, j):
            new -= max(0, min(ends[k], hi) - max(starts[k], lo))
        if i < j:
            lo = min(lo, starts[i])
            hi = max(hi, ends[j - 1])
            self._covered -= sum(ends[k] - starts[k] for k in range(i, j))
        starts[i:j] = [lo]
        ends[i:j] = [hi]
        self._covered += hi - lo
        if starts[0] == self._low:
            self._covered -= ends[0] - starts[0]
            self._low = ends[0]
            del starts[0]
            del ends[0]
        return new

    def _covers(self, lo: int, hi: int) -> bool:
        """True if every id in ``[lo, hi)`` is complete."""
        if hi <= self._low:
            return True
        if lo < self._low:
            return False  # _low itself is not complete
        k = bisect.bisect_right(self._starts, lo) - 1
        return k >= 0 and self._ends[k] >= hi

    def __repr__(self) -> str:
        return (
            f"<CompletionTracker next_id={self.next_id} outstanding={self.outstanding} "
            f"gaps={len(self._starts)}>"
        )


# ---------------------------------------------------------------- tickets

_cb_lock = threading.Lock()  # guards Ticket._done/_callbacks hand-over


class Ticket:
    """The kernel's promise about one ``sendall`` or ``vmsplice``.

    A ticket is done when the kernel no longer reads the memory it covers:
    all zero-copy completions for its sends arrived (sender tickets), or
    the pipe's reader consumed past its bytes (vmsplice tickets). Its pins
    are released at that moment, exactly once. Sends done by plain copy give
    a ticket that is done from the start.

    Tickets are not created directly.
    """

    __slots__ = (
        "nbytes",
        "_done",
        "_copied",
        "_pins",
        "_callbacks",
        "_source",
        "_start",
        "_end",
        "_busy",
        "_pipe",
        "__weakref__",
    )

    def __init__(self, nbytes: int, source: Optional["_Source"] = None) -> None:
        #: Bytes the call handed to the kernel under this ticket.
        self.nbytes = nbytes
        self._done = False
        self._copied = False
        self._pins: List[Any] = []
        self._callbacks: Optional[List[Callable[["Ticket"], None]]] = []
        self._source = source
        self._start = 0  # sender: unwrapped send ids [_start, _end)
        self._end = 0  # vmsplice: pipe.written after the bytes went in
        self._busy = False  # sendall still adding sends to this ticket
        self._pipe: Optional["Pipe"] = None

    def done(self) -> bool:
        """True once the kernel is done with this ticket's memory.

        Reaps pending completions first (without blocking).

        Raises:
            OSError: reading the socket's error queue failed (EBADF when the
                socket was closed under an open sender).
        """
        if not self._done and self._source is not None:
            self._source.poll(self)
        return self._done

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait until the ticket is done, as :meth:`threading.Event.wait`.

        Sender tickets reap completions themselves (polling the socket for
        POLLERR); vmsplice tickets poll the pipe with a short back-off,
        because no event tells when a reader consumed.

        Args:
            timeout: seconds to wait at most; None waits indefinitely.

        Returns:
            True when done, False when the timeout expired first.

        Raises:
            OSError: as :meth:`done`.
        """
        if self._done or self._source is None:
            return self._done
        return self._source.wait(self, timeout)

    @property
    def copied(self) -> bool:
        """True if a completion covering this ticket said the kernel copied."""
        return self._copied

    def _finish(self) -> List[Callable[["Ticket"], None]]:
        """Release the pins and mark done; the caller ensures once only.

        Returns the callbacks, which the caller runs after dropping its locks.
        """
        pins, self._pins = self._pins, []
        for pin in pins:
            ffi.release(pin)
        self._pipe = None
        with _cb_lock:
            self._done = True
            callbacks, self._callbacks = self._callbacks, None
        return callbacks or []

    def _add_callback(self, fn: Callable[["Ticket"], None]) -> None:
        """Call ``fn(ticket)`` once the ticket is done (now, if it is)."""
        with _cb_lock:
            if not self._done:
                assert self._callbacks is not None
                self._callbacks.append(fn)
                return
        fn(self)

    def __repr__(self) -> str:
        state = "done" if self._done else "pending"
        copied = " copied" if self._copied else ""
        return f"<zcio.Ticket {state} nbytes={self.nbytes}{copied}>"


def _nbytes(data: Any) -> int:
    """Size in bytes of a bytes-like object."""
    cls = type(data)
    if cls is bytes or cls is bytearray:
        return len(data)
    if cls is memoryview:
        return data.nbytes  # type: ignore[no-any-return]
    return memoryview(data).nbytes


def _done_ticket(nbytes: int) -> Ticket:
    t = Ticket(nbytes)
    t._done = True
    return t


def _run(callbacks: Iterable[Callable[[Ticket], None]], ticket: Ticket) -> None:
    for fn in callbacks:
        fn(ticket)


class _Source:
    """What a pending ticket asks to make progress."""

    def poll(self, ticket: Ticket) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def wait(self, ticket: Ticket, timeout: Optional[float]) -> bool:  # pragma: no cover
        raise NotImplementedError


def _remaining(deadline: Optional[float]) -> Optional[float]:
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())


# ---------------------------------------------------------------- per-socket state


def _new_counters() -> Dict[str, int]:
    return dict.fromkeys(
        (
            "sendalls",
            "zerocopy_sends",
            "copy_sends",
            "zerocopy_bytes",
            "copy_bytes",
            "completions",
            "copied_completions",
            "completed_sends",
            "copied_sends",
            "enobufs",
            "enobufs_copies",
            "eagain_waits",
        ),
        0,
    )


class _SocketState(_Source):
    """Everything zcio must remember about one socket's zero-copy sends.

    Outlives the sender: a closed or collected sender leaves it (with the
    tickets still in flight) in the graveyard, and the next sender on the
    same socket adopts it, so the id sequence continues.
    """

    def __init__(self, fd: int, ident: Tuple[int, int]) -> None:
        self.fd = fd
        self.ident = ident
        self.lock = threading.RLock()
        self.tracker = CompletionTracker()
        self.pending: Deque[Ticket] = deque()
        self.pinned_bytes = 0
        self.active = False
        self.lost = False  # the socket was closed while tickets were parked
        self.policy = "auto"
        self.switched_off = False
        self.switch_reason: Optional[str] = None
        self.copied_run = 0
        self.finished_total = 0  # tickets finished by reaping, ever
        self.counters = _new_counters()

    # -- reaping

    def reap_now(self) -> Tuple[int, int]:
        """Drain the error queue without blocking.

        Returns (completions processed, tickets finished).
        """
        done: List[Tuple[Ticket, List[Callable[[Ticket], None]]]] = []
        with self.lock:
            if not self.pending and self.tracker.outstanding == 0:
                return 0, 0
            if not self.active and not self._same_socket():
                return 0, 0
            comps = lowlevel.read_completions(self.fd)
            if comps and not self.active and not self._same_socket():
                # The fd changed hands while we read: the completions belong
                # to another socket. Keep ours pending (late, never early).
                return 0, 0
            finished = self._apply(comps) if comps else []
            for t in finished:
                done.append((t, t._finish()))
            self.finished_total += len(finished)
        for t, callbacks in done:
            _run(callbacks, t)
        return len(comps), len(finished)

    def _same_socket(self) -> bool:
        try:
            st = os.fstat(self.fd)
        except OSError:
            self.lost = True
            return False
        if (st.st_dev, st.st_ino) != self.ident:
            self.lost = True
            return False
        return True

    def _apply(self, comps: List[Completion]) -> List[Ticket]:
        tr = self.tracker
        c = self.counters
        for first, last, copied in comps:
            lo, hi = tr._seq_range(first, last)
            new = tr._complete_seq(lo, hi)
            c["completions"] += 1
            c["completed_sends"] += new
            if copied:
                c["copied_completions"] += 1
                c["copied_sends"] += new
                self.copied_run += new
                for t in self.pending:
                    if t._start >= hi:
                        break
                    if t._end > lo:
                        t._copied = True
            else:
                self.copied_run = 0
        if (
            self.policy == "auto"
            and not self.switched_off
            and self.copied_run >= AUTO_COPIED_LIMIT
        ):
            self.switched_off = True
            self.switch_reason = "copied"
        return self._collect()

    def _collect(self) -> List[Ticket]:
        """Take the finished tickets out of ``pending`` (under the lock)."""
        tr = self.tracker
        pending = self.pending
        finished: List[Ticket] = []
        while pending:
            t = pending[0]
            if t._busy or t._end > tr._low:
                break
            pending.popleft()
            finished.append(t)
        if tr._starts and pending:
            keep: Deque[Ticket] = deque()
            for t in pending:
                if not t._busy and tr._covers(t._start, t._end):
                    finished.append(t)
                else:
                    keep.append(t)
            self.pending = keep
        for t in finished:
            self.pinned_bytes -= t.nbytes
        return finished

    # -- waiting (the _Source interface, plus flush)

    def poll(self, ticket: Ticket) -> None:
        self.reap_now()

    def wait(self, ticket: Ticket, timeout: Optional[float]) -> bool:
        return self.wait_until(lambda: ticket._done, timeout)

    def wait_until(self, cond: Callable[[], bool], timeout: Optional[float]) -> bool:
        """Reap (waiting for POLLERR in slices) until ``cond()`` or timeout.

        Slices keep a waiter responsive when another thread reaps the
        completion it was waiting for.
        """
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        backoff = 0.001
        while True:
            self.reap_now()
            if cond():
                return True
            if self.lost:
                return False
            left = _remaining(deadline)
            if left is not None and left <= 0:
                return False
            revents = _poll_fd(self.fd, 0, _SLICE if left is None else min(_SLICE, left))
            if revents & _POLLNVAL:
                if not self.active:
                    self.lost = True
                    return False
                raise OSError(_errno.EBADF, "the socket was closed while sends were in flight")
            if revents:
                n, _ = self.reap_now()
                if cond():
                    return True
                if n == 0:
                    # POLLHUP, or an error that is not a completion: there is
                    # nothing to reap, so back off instead of spinning.
                    left = _remaining(deadline)
                    time.sleep(backoff if left is None else min(backoff, left))
                    backoff = min(backoff * 2, _SLICE)
                else:
                    backoff = 0.001


# ---------------------------------------------------------------- registry, graveyard

_registry_lock = threading.RLock()
_states: Dict[Tuple[int, int], _SocketState] = {}
_prune_at = 256
_graveyard: Set[_SocketState] = set()
_abandoned: List[Ticket] = []
_last_graveyard_reap = 0.0


def _socket_ident(fd: int) -> Tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _prune_states() -> None:
    """Forget sockets no longer open in this process (under _registry_lock)."""
    global _prune_at
    open_inodes: Set[int] = set()
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        names = []
    for name in names:
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            open_inodes.add(int(target[8:-1]))
    for ident, st in list(_states.items()):
        if st.active or ident[1] in open_inodes:
            continue
        del _states[ident]
        if st.pending:
            _bury(st)
    _prune_at = max(256, 2 * len(_states))


def _bury(st: _SocketState) -> None:
    """The socket is gone: keep its pins for the life of the process."""
    with st.lock:
        st.lost = True
        _abandoned.extend(st.pending)
        st.pending = deque()
    _graveyard.discard(st)


def _park(st: _SocketState) -> None:
    """A sender closed or was collected: park its record if sends are in flight.

    Called from close() and from the sender's weakref.finalize, possibly
    inside a garbage collection; so it takes no state lock and does no I/O.
    """
    with _registry_lock:
        st.active = False
        if st.pending:
            _graveyard.add(st)


def reap_graveyard(timeout: float = 0.0) -> int:
    """Reap the completions of closed or collected senders' parked sends.

    Tickets whose completions arrived are finished (pins released); parked
    records whose socket was closed meanwhile are moved to the abandoned
    list (their pins are kept for the life of the process). Also checks the
    pending vmsplice tickets.

    Args:
        timeout: seconds to keep waiting for the remaining completions
            (0: do not wait).

    Returns:
        How many tickets are still parked (graveyard and abandoned).
    """
    global _last_graveyard_reap
    _last_graveyard_reap = time.monotonic()
    _poll_vmsplice_tickets()
    deadline = time.monotonic() + max(0.0, timeout)
    while True:
        with _registry_lock:
            graves = list(_graveyard)
        for st in graves:
            try:
                st.reap_now()
            except OSError:
                st.lost = True
            with _registry_lock:
                if st.lost:
                    _bury(st)
                elif not st.pending:
                    _graveyard.discard(st)
        left = deadline - time.monotonic()
        with _registry_lock:
            graves = list(_graveyard)
        if not graves or left <= 0:
            break
        p = select.poll()
        for st in graves:
            p.register(st.fd, 0)
        p.poll(max(1, math.ceil(min(left, _SLICE) * 1000)))
    with _registry_lock:
        return sum(len(st.pending) for st in _graveyard) + len(_abandoned)


def graveyard_stats() -> Dict[str, int]:
    """What closed or collected senders left behind.

    Returns:
        ``sockets``, ``tickets``, ``bytes``: parked records waiting for
        completions; ``abandoned_tickets``, ``abandoned_bytes``: pins kept for
        the life of the process because their socket was closed first;
        ``vmsplice_tickets``: vmsplice tickets not done yet.
    """
    with _registry_lock:
        graves = list(_graveyard)
        abandoned = list(_abandoned)
    with _vm_lock:
        vm = len(_vm_pending)
    return {
        "sockets": len(graves),
        "tickets": sum(len(st.pending) for st in graves),
        "bytes": sum(st.pinned_bytes for st in graves),
        "abandoned_tickets": len(abandoned),
        "abandoned_bytes": sum(t.nbytes for t in abandoned),
        "vmsplice_tickets": vm,
    }


def _maybe_reap_graveyard() -> None:
    if (_graveyard or _vm_pending) and time.monotonic() - _last_graveyard_reap >= _GRAVEYARD_INTERVAL:
        reap_graveyard(0.0)


def _at_exit() -> None:
    if _graveyard:
        try:
            reap_graveyard(1.0)
        except Exception:  # pragma: no cover - best effort at shutdown
            pass


atexit.register(_at_exit)


def _forget_in_child() -> None:
    """After fork the child must not read the parent's error queues."""
    global _registry_lock, _cb_lock, _vm_lock
    _registry_lock = threading.RLock()
    _cb_lock = threading.Lock()
    _vm_lock = threading.RLock()
    for st in list(_graveyard):
        _abandoned.extend(st.pending)
    _graveyard.clear()
    _states.clear()
    _abandoned.extend(_vm_pending)
    _vm_pending.clear()


os.register_at_fork(after_in_child=_forget_in_child)


# ---------------------------------------------------------------- the sender


def _sock_info(sock: Any, fd: int) -> Tuple[int, Optional[socket.socket], bool]:
    """(SO_TYPE, a socket object for setsockopt, whether we must close it)."""
    if isinstance(sock, socket.socket) and sock.fileno() == fd:
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE), sock, False
    import fcntl

    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    dup = os.dup(fd)
    try:
        tmp = socket.socket(fileno=dup)
    except BaseException:
        os.close(dup)
        raise
    # socket.socket() may set O_NONBLOCK (a default timeout): the file
    # description is shared with the caller's fd, so put its flags back.
    if fcntl.fcntl(fd, fcntl.F_GETFL) != flags:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)
    return tmp.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE), tmp, True


_POLICIES = ("auto", "always", "never")


class ZeroCopySender:
    """Sends buffers on a TCP or connected UDP socket with ``MSG_ZEROCOPY``.

    The sender enables ``SO_ZEROCOPY`` on the socket (if the socket refuses
    -- EOPNOTSUPP, ENOPROTOOPT or the old kernels' 524 -- it falls back to
    plain copy sends and says so in :attr:`stats`). Each :meth:`sendall`
    returns a :class:`Ticket`; the buffer stays pinned until the ticket is
    done. The sender does not own the socket: :meth:`close` flushes and
    leaves it open; close the sender before the socket. Blocking sockets,
    sockets with a timeout and non-blocking sockets all work (on EAGAIN the
    sender polls for POLLOUT, reaping completions meanwhile).

    Not for concurrent ``sendall`` from several threads (RuntimeError);
    tickets may be waited on from any thread. See the module documentation
    for pin lifetime, the graveyard, ENOBUFS and ``policy="auto"``.

    Args:
        sock: a connected TCP or UDP socket (or its fd, or an object with
            ``fileno()``). A ``socket.socket`` is kept referenced, and its
            ``gettimeout()`` is the default ``timeout`` of :meth:`sendall`.
        threshold: sends smaller than this many bytes are plain copies
            (default 16 KiB).
        policy: ``"auto"`` (drop MSG_ZEROCOPY once copies persist),
            ``"always"`` or ``"never"``.
        reap_every: drain completions after this many zero-copy sends, so
            unread notifications do not exhaust optmem (default 32).

    Raises:
        ValueError: a bad policy, threshold or reap_every; the socket already
            has an open sender.
        OSError: ``sock`` is not a socket (ENOTSOCK), or setting
            SO_ZEROCOPY failed for another reason than lack of support.
    """

    def __init__(
        self,
        sock: FdLike,
        *,
        threshold: int = DEFAULT_THRESHOLD,
        policy: str = "auto",
        reap_every: int = 32,
    ) -> None:
        if policy not in _POLICIES:
            raise ValueError(f"policy must be one of {_POLICIES}, got {policy!r}")
        threshold = _nonneg(threshold, "threshold")
        reap_every = operator.index(reap_every)
        if reap_every < 1:
            raise ValueError(f"reap_every must be >= 1, got {reap_every}")
        self._closed = True  # until fully set up
        fd = _fd(sock)
        kind, sobj, temporary = _sock_info(sock, fd)
        try:
            if kind not in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                raise ValueError("ZeroCopySender needs a stream or datagram socket")
            zc_error: Optional[int] = None
            if policy != "never":
                assert sobj is not None
                try:
                    sobj.setsockopt(socket.SOL_SOCKET, lowlevel.SO_ZEROCOPY, 1)
                except OSError as exc:
                    if exc.errno not in _ZC_UNSUPPORTED:
                        raise
                    zc_error = exc.errno
        finally:
            if temporary and sobj is not None:
                sobj.close()
        self.threshold = threshold
        self.policy = policy
        self.reap_every = reap_every
        self._sock = sock
        self._fd = fd
        self._stream = kind == socket.SOCK_STREAM
        self._zc_enabled = policy != "never" and zc_error is None
        self._zc_error = zc_error
        self._since_reap = 0
        self._enobufs_idle = 0
        self._send_lock = threading.Lock()
        ident = _socket_ident(fd)
        with _registry_lock:
            st = _states.get(ident)
            if st is not None and st.active:
                raise ValueError("this socket already has an open ZeroCopySender")
            if st is None:
                if len(_states) >= _prune_at:
                    _prune_states()
                st = _SocketState(fd, ident)
                _states[ident] = st
            _graveyard.discard(st)  # adopt what a previous sender left
            st.fd = fd
            st.lost = False
            st.active = True
            st.policy = policy
            st.switched_off = False
            st.switch_reason = None
            st.copied_run = 0
            st.counters = _new_counters()
        self._state = st
        self._finalizer = weakref.finalize(self, _park, st)
        self._finalizer.atexit = False
        self._closed = False
        _maybe_reap_graveyard()

    # -- public API

    def sendall(self, data: Union[Buffer, "PoolBuffer"], *, timeout: Optional[float] = None) -> Ticket:
        """Send all of ``data`` and return the ticket that tracks its memory.

        On a stream socket every byte is sent (zero-copy sends take at most
        1 MiB each, which bounds the locked memory one call needs); on a
        datagram socket exactly one datagram. Parts of at least
        ``threshold`` bytes go with ``MSG_ZEROCOPY`` and keep ``data`` pinned
        until the kernel's completions cover them; smaller parts (and
        everything once zero-copy is off) are plain copies. A ticket with no
        zero-copy send is done on return.

        Args:
            data: a C-contiguous bytes-like object, or a :class:`PoolBuffer`.
            timeout: most seconds to wait without progress when the socket
                is not writable (EAGAIN); None means the socket's own
                ``gettimeout()`` if it has a positive one, else no limit.

        Returns:
            The ticket.

        Raises:
            TimeoutError: no progress within ``timeout`` (a
                :class:`~zcio.TransferError` if part was sent; see below).
            OSError: from the kernel (EMSGSIZE for a too-large datagram,
                BrokenPipeError, ...). If part of ``data`` was already sent,
                the error is a :class:`~zcio.TransferError` with
                ``.transferred`` (bytes the socket accepted), ``.pending``
                (``b""``: the rest is ``data[transferred:]``) and ``.ticket``
                (wait for it before reusing ``data``).
            ValueError: the sender is closed.
            RuntimeError: ``sendall`` is already running in another thread.
            TypeError: ``data`` does not export the buffer protocol.
            BufferError: ``data`` is not C-contiguous.
        """
        if self._closed:
            raise ValueError("sendall() on a closed ZeroCopySender")
        lock = self._send_lock
        if not lock.acquire(False):
            raise RuntimeError("ZeroCopySender.sendall() called from two threads at once")
        try:
            if _graveyard:
                _maybe_reap_graveyard()
            buf: Any = data
            cls = type(buf)
            if cls is bytes or cls is bytearray:
                total = len(buf)
            else:
                if isinstance(buf, PoolBuffer):
                    buf = buf.memory
                total = _nbytes(buf)
            st = self._state
            start = 0
            if total < self.threshold or not self._zc_enabled or st.switched_off:
                # Plain copy: nothing outlives the call, so no pin and no
                # bookkeeping -- one write, and done unless it was partial.
                try:
                    start = os.write(self._fd, buf)
                except BlockingIOError:
                    pass
                if start == total:
                    c = st.counters
                    c["sendalls"] += 1
                    if start or not self._stream:
                        c["copy_sends"] += 1
                        c["copy_bytes"] += start
                    return _done_ticket(total)
            return self._sendall(buf, self._timeout(timeout), start)
        finally:
            lock.release()

    def reap(self, timeout: float = 0.0) -> int:
        """Drain the completions waiting on the socket's error queue.

        Args:
            timeout: if nothing finished right away and sends are in flight,
                wait up to this many seconds for POLLERR (0: never wait).

        Returns:
            How many tickets finished (not completions processed; those are
            in ``stats["completions"]``).

        Raises:
            OSError: reading the error queue failed.
        """
        st = self._state
        before = st.finished_total
        st.reap_now()
        if timeout > 0 and st.finished_total == before and st.pending:
            st.wait_until(lambda: st.finished_total != before or not st.pending, timeout)
        return st.finished_total - before

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until no ticket of this socket is in flight.

        Args:
            timeout: most seconds to wait; None waits indefinitely.

        Returns:
            True when everything completed, False on timeout.

        Raises:
            OSError: reading the error queue failed.
        """
        st = self._state
        ok = st.wait_until(lambda: not st.pending, timeout)
        _maybe_reap_graveyard()
        return ok

    @property
    def in_flight(self) -> int:
        """Bytes pinned by tickets that are not done yet (0 when flushed).

        ``stats`` also has ``in_flight_tickets`` and ``in_flight_sends``
        (zero-copy send ids not yet completed).
        """
        return self._state.pinned_bytes

    @property
    def zerocopy(self) -> bool:
        """True while sends of at least ``threshold`` bytes use MSG_ZEROCOPY."""
        st = self._state
        return self._zc_enabled and not (st.switched_off and self.policy == "auto")

    @property
    def stats(self) -> Dict[str, Any]:
        """Counters of this sender (a new dict each time).

        Keys: ``policy``; ``zerocopy_enabled`` (SO_ZEROCOPY is set and the
        policy allows it) and ``zerocopy_error`` (the errno that refused
        SO_ZEROCOPY, else None); ``policy_switched_off`` (bool: "auto"
        stopped using MSG_ZEROCOPY) and ``switch_reason`` ("copied",
        "enobufs" or None); ``sendalls`` (calls); ``sends`` (send system
        calls that accepted bytes) = ``zerocopy_sends`` + ``copy_sends``;
        ``bytes`` = ``zerocopy_bytes`` + ``copy_bytes``; ``completions`` and
        ``copied_completions`` (notifications read, and those flagged
        COPIED); ``completed_sends`` and ``copied_sends`` (send ids they
        covered); ``enobufs`` (ENOBUFS seen); ``enobufs_copies`` (chunks sent
        by copy because of it); ``eagain_waits``; ``in_flight_tickets``,
        ``in_flight_sends``, ``in_flight_bytes``.
        """
        st = self._state
        with st.lock:
            out: Dict[str, Any] = dict(st.counters)
            out.update(
                sends=out["zerocopy_sends"] + out["copy_sends"],
                bytes=out["zerocopy_bytes"] + out["copy_bytes"],
                policy=self.policy,
                zerocopy_enabled=self._zc_enabled,
                zerocopy_error=self._zc_error,
                policy_switched_off=st.switched_off,
                switch_reason=st.switch_reason,
                in_flight_tickets=len(st.pending),
                in_flight_sends=st.tracker.outstanding,
                in_flight_bytes=st.pinned_bytes,
            )
        return out

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, timeout: Optional[float] = _CLOSE_TIMEOUT) -> None:
        """Flush (at most ``timeout`` seconds) and detach from the socket.

        The socket stays open. Tickets whose completions did not come in
        time keep their pins: the socket's record is parked in the
        graveyard and reaped later (see the module documentation).
        Idempotent.

        Args:
            timeout: most seconds to wait for completions (None: no limit).
        """
        if self._closed:
            return
        self._closed = True
        try:
            self.flush(timeout)
        except OSError:
            pass  # the socket is gone; the record is parked or abandoned
        finally:
            self._finalizer()

    def __enter__(self) -> "ZeroCopySender":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self._fd}"
        return (
            f"<zcio.ZeroCopySender {state} policy={self.policy!r} "
            f"zerocopy={self.zerocopy} in_flight={self._state.pinned_bytes}>"
        )

    # -- internals

    def _timeout(self, timeout: Optional[float]) -> Optional[float]:
        if timeout is not None:
            return max(0.0, float(timeout))
        gettimeout = getattr(self._sock, "gettimeout", None)
        if gettimeout is not None:
            t = gettimeout()
            if t:  # None (blocking) or 0.0 (non-blocking): wait without limit
                return float(t)
        return None

    def _use_zerocopy(self, nbytes: int) -> bool:
        if not self._zc_enabled or nbytes < self.threshold or nbytes == 0:
            return False
        return not (self.policy == "auto" and self._state.switched_off)

    def _reap(self) -> int:
        self._since_reap = 0
        n, _ = self._state.reap_now()
        return n

    def _sendall(self, data: Any, timeout: Optional[float], sent: int) -> Ticket:
        """The general path; ``sent`` bytes already went by a plain write."""
        pin = ffi.from_buffer(data)
        total = len(pin)
        st = self._state
        c = st.counters
        c["sendalls"] += 1
        if sent:
            c["copy_sends"] += 1
            c["copy_bytes"] += sent
        ticket = Ticket(total, st)
        ticket._pins = [pin]
        ticket._busy = True
        registered = False
        fd = self._fd
        stream = self._stream
        force_copy = False
        try:
            while True:
                remaining = total - sent
                if stream and remaining == 0:
                    break
                chunk = min(remaining, _MAX_CHUNK) if stream else remaining
                if not force_copy and self._use_zerocopy(remaining):
                    if not registered:
                        with st.lock:
                            ticket._start = ticket._end = st.tracker._next
                            st.pending.append(ticket)
                            st.pinned_bytes += total
                        registered = True
                        _link_pools(ticket)
                    with st.lock:
                        seq = st.tracker._next
                        st.tracker._next = seq + 1  # optimistic: completions may race the return
                    n = _c_send(fd, pin + sent, chunk, 0)
                    if n < 0:
                        with st.lock:
                            st.tracker._next = seq  # failed: the kernel took no id
                        err = -n
                        if err == _errno.EINTR:
                            continue  # signal handlers run here (PEP 475)
                        if err in (_errno.EAGAIN, _errno.EWOULDBLOCK):
                            self._wait_writable(timeout, sent)
                            continue
                        if err == _errno.ENOBUFS:
                            force_copy = self._on_enobufs()
                            continue
                        raise OSError(err, os.strerror(err))
                    ticket._end = seq + 1
                    c["zerocopy_sends"] += 1
                    c["zerocopy_bytes"] += n
                    self._enobufs_idle = 0
                    self._since_reap += 1
                    if self._since_reap >= self.reap_every:
                        self._reap()
                else:
                    try:
                        n = os.write(fd, ffi.buffer(pin + sent, remaining))
                    except BlockingIOError:
                        self._wait_writable(timeout, sent)
                        continue
                    if force_copy:
                        c["enobufs_copies"] += 1
                        force_copy = False
                    c["copy_sends"] += 1
                    c["copy_bytes"] += n
                sent += n
                if not stream:
                    break
        except BaseException as exc:
            self._settle(ticket, registered)
            if isinstance(exc, TransferError):
                exc.ticket = ticket  # type: ignore[attr-defined]
            elif sent and isinstance(exc, OSError):
                err = transfer_error(exc.errno or _errno.EIO, sent, b"", exc.strerror)
                err.ticket = ticket  # type: ignore[attr-defined]
                raise err from exc
            raise
        self._settle(ticket, registered)
        return ticket

    def _settle(self, ticket: Ticket, registered: bool) -> None:
        """sendall is done adding sends: finish the ticket if it can be."""
        st = self._state
        callbacks: List[Callable[[Ticket], None]] = []
        with st.lock:
            ticket._busy = False
            if not registered:
                callbacks = ticket._finish()
            elif ticket._end == ticket._start or st.tracker._covers(ticket._start, ticket._end):
                try:
                    st.pending.remove(ticket)
                except ValueError:  # pragma: no cover - already collected
                    pass
                else:
                    st.pinned_bytes -= ticket.nbytes
                    callbacks = ticket._finish()
        _run(callbacks, ticket)

    def _on_enobufs(self) -> bool:
        """Handle ENOBUFS; returns True to send the next chunk by copy."""
        st = self._state
        st.counters["enobufs"] += 1
        if st.tracker.outstanding == 0:
            # Nothing in flight: no completion will come to free anything.
            self._enobufs_idle += 1
            if self.policy == "auto" and self._enobufs_idle >= AUTO_ENOBUFS_LIMIT:
                with st.lock:
                    st.switched_off = True
                    st.switch_reason = "enobufs"
            return True
        if self._reap() > 0:
            return False  # optmem freed: retry zero-copy
        revents = _poll_fd(self._fd, 0, _ENOBUFS_WAIT)
        if revents & _POLLERR and self._reap() > 0:
            return False
        return True  # nothing came back quickly: copy this chunk

    def _wait_writable(self, timeout: Optional[float], sent: int) -> None:
        """Wait for POLLOUT, reaping completions on POLLERR meanwhile."""
        st = self._state
        st.counters["eagain_waits"] += 1
        revents = _poll_fd(self._fd, _POLLOUT, timeout)
        if revents == 0:
            raise transfer_error(_errno.ETIMEDOUT, sent, b"", f"no progress within {timeout:g} seconds")
        if revents & _POLLNVAL:
            raise OSError(_errno.EBADF, os.strerror(_errno.EBADF))
        if revents & _POLLERR:
            self._reap()
        # Writable, hung up or an error: the next send proceeds or says why.


# ---------------------------------------------------------------- vmsplice

_vm_lock = threading.RLock()
_vm_pending: Set[Ticket] = set()


class _PipeSource(_Source):
    """Vmsplice tickets: done once the pipe's reader consumed past them."""

    def poll(self, ticket: Ticket) -> None:
        callbacks: List[Callable[[Ticket], None]] = []
        with _vm_lock:
            if ticket._done or not self._consumed(ticket):
                return
            _vm_pending.discard(ticket)
            callbacks = ticket._finish()
        _run(callbacks, ticket)

    @staticmethod
    def _consumed(ticket: Ticket) -> bool:
        pipe = ticket._pipe
        if pipe is None or pipe.closed:
            return True  # the pipe's pages went with it (see pipe_vmsplice)
        written = pipe.written
        if written < ticket._end:
            return True  # a pool took the pipe back empty and reset the count
        try:
            pending = pipe.pending
        except (OSError, ValueError):
            return pipe.closed
        return written - pending >= ticket._end

    def wait(self, ticket: Ticket, timeout: Optional[float]) -> bool:
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        delay = 0.0005
        while True:
            self.poll(ticket)
            if ticket._done:
                return True
            left = _remaining(deadline)
            if left is not None and left <= 0:
                return False
            time.sleep(delay if left is None else min(delay, left))
            delay = min(delay * 2, 0.02)


_pipe_source = _PipeSource()


def _poll_vmsplice_tickets() -> None:
    with _vm_lock:
        tickets = list(_vm_pending)
    for t in tickets:
        _pipe_source.poll(t)


def pipe_vmsplice(pipe: "Pipe", buffers: Sequence[Union[Buffer, "PoolBuffer"]], *, timeout: Optional[float] = None) -> Ticket:
    """Map ``buffers`` into ``pipe`` without copying; the ticket keeps them pinned.

    ``Pipe.vmsplice(buffers)`` calls this. All bytes go in: the call loops
    over partial vmsplices and, when the pipe is full, waits for POLLOUT.
    **Deadlock risk:** if nobody reads the pipe (or the reader is this same
    thread, later), a call offering more than the pipe's free space waits
    forever -- pass ``timeout``, size the pipe, or read from another thread.

    The ticket is done once the pipe's reader has consumed past these bytes:
    ``pipe.written`` counts the bytes written through the Pipe object, the
    ticket remembers ``end = pipe.written`` after this call, and the reader
    has consumed ``pipe.written - pipe.pending``. Bytes written into the fd
    behind the Pipe object's back only make the estimate late, never early.
    A closed Pipe resolves its tickets (closing the last fd of a pipe drops
    its pages; if you duplicated the pipe's fds, e.g. into a child process,
    keep the Pipe open until those readers are done). A reader that
    *splices* the pages onward (to a socket, a file) keeps referencing them
    after the ticket resolved; for sockets use :class:`ZeroCopySender`.

    Nothing signals consumption, so ``wait()`` polls with a short back-off.
    Pending vmsplice tickets are also checked by later calls of this
    function, :func:`reap_graveyard` and ``BufferPool.acquire``.

    Args:
        pipe: a :class:`zcio.Pipe` (its ``w`` end is written).
        buffers: a sequence of C-contiguous bytes-like objects or
            :class:`PoolBuffer` objects (not a single one).
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
    _poll_vmsplice_tickets()
    pins: List[Any] = []
    try:
        for b in buffers:
            if isinstance(b, PoolBuffer):
                b = b.memory
            pins.append(ffi.from_buffer(b))
    except BaseException:
        for p in pins:
            ffi.release(p)
        raise
    for p in pins:
        if not len(p):
            ffi.release(p)  # nothing of it goes into the pipe
    pins = [p for p in pins if len(p)]
    total = sum(len(p) for p in pins)
    ticket = Ticket(total, _pipe_source)
    ticket._pins = pins
    if total == 0:
        _run(ticket._finish(), ticket)
        return ticket
    ticket._pipe = pipe
    fd = pipe.w
    iov = ffi.new("struct iovec[]", len(pins))
    for i, p in enumerate(pins):
        iov[i].iov_base = p
        iov[i].iov_len = len(p)
    idx = 0
    moved = 0
    try:
        while moved < total:
            count = min(len(pins) - idx, _IOV_MAX)
            n = _c_vmsplice(fd, iov + idx, count, lib.SPLICE_F_NONBLOCK)
            if n < 0:
                err = -n
                if err == _errno.EINTR:
                    continue
                if err in (_errno.EAGAIN, _errno.EWOULDBLOCK):
                    revents = _poll_fd(fd, _POLLOUT, timeout)
                    if revents == 0:
                        raise transfer_error(
                            _errno.ETIMEDOUT, moved, b"", f"no room in the pipe within {timeout:g} seconds"
                        )
                    if revents & _POLLNVAL:
                        raise OSError(_errno.EBADF, os.strerror(_errno.EBADF))
                    continue
                raise OSError(err, os.strerror(err))
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
    except BaseException as exc:
        if moved == 0:
            _run(ticket._finish(), ticket)
            if isinstance(exc, TransferError):
                raise OSError(exc.errno, exc.strerror) from None
            raise
        ticket._end = pipe.written
        ticket.nbytes = moved
        with _vm_lock:
            _vm_pending.add(ticket)
        _link_pools(ticket)
        if isinstance(exc, OSError):
            if not isinstance(exc, TransferError):
                exc = transfer_error(exc.errno or _errno.EIO, moved, b"", exc.strerror)
            exc.ticket = ticket  # type: ignore[attr-defined]
            raise exc
        raise
    ticket._end = pipe.written
    with _vm_lock:
        _vm_pending.add(ticket)
    _link_pools(ticket)
    return ticket


# ---------------------------------------------------------------- buffer pool

_pools: "weakref.WeakSet[BufferPool]" = weakref.WeakSet()


def _link_pools(ticket: Ticket) -> None:
    """Make every pool buffer under the ticket's pins wait for the ticket."""
    if not _pools:
        return
    for pool in list(_pools):
        for pin in list(ticket._pins):
            pool._link(ticket, int(ffi.cast("uintptr_t", pin)), len(pin))


def _map_hugetlb_flag() -> Optional[int]:
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i386", "i686", "aarch64", "arm64", "s390x", "riscv64", "ppc64le", "ppc64", "loongarch64") or machine.startswith("arm"):
        return 0x40000
    return None  # other architectures use other values: skip hugetlbfs


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
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mlock.restype = ctypes.c_int
    if libc.mlock(ctypes.c_void_p(address), ctypes.c_size_t(length)) != 0:
        err = ctypes.get_errno()
        soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        limit = "unlimited" if soft == resource.RLIM_INFINITY else f"{soft} bytes"
        raise OSError(
            err,
            f"mlock of {length} bytes failed ({os.strerror(err)}): RLIMIT_MEMLOCK is {limit} "
            f"and this process lacks CAP_IPC_LOCK; raise the limit (ulimit -l, "
            f"LimitMEMLOCK= in systemd) or use BufferPool(..., mlock=False)",
        )


class PoolBuffer:
    """One buffer of a :class:`BufferPool`, lent to one user.

    ``memory`` is a writable memoryview of exactly ``size`` bytes at a
    page-aligned address. Pass it (or a slice, or the PoolBuffer itself) to
    :meth:`ZeroCopySender.sendall` or ``Pipe.vmsplice``: the pool notices
    tickets that reference its memory by address. Call :meth:`release` (or
    leave the ``with`` block) when you are done writing; the buffer goes back
    to the pool once every such ticket is done as well.
    """

    __slots__ = ("_pool", "index", "address", "_view")

    def __init__(self, pool: "BufferPool", index: int, address: int, view: memoryview) -> None:
        self._pool: Optional[BufferPool] = pool
        #: Position of this buffer in its pool.
        self.index = index
        #: Address of the first byte (page-aligned).
        self.address = address
        self._view: Optional[memoryview] = view

    @property
    def memory(self) -> memoryview:
        """The writable memoryview (ValueError after :meth:`release`)."""
        if self._view is None:
            raise ValueError("PoolBuffer used after release()")
        return self._view

    @property
    def released(self) -> bool:
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

    def __enter__(self) -> "PoolBuffer":
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
        mm: Optional[mmap.mmap] = None
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        if huge_pages:
            huge = _map_hugetlb_flag()
            hsize = _hugepage_size()
            if huge is not None:
                stride = -(-size // hsize) * hsize
                try:
                    mm = mmap.mmap(-1, stride * count, flags=flags | huge, prot=prot)
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
        self._free: Deque[int] = deque(range(count))
        self._lent = [False] * count  # handed to a user, not released yet
        self._refs = [0] * count  # pending tickets referencing the buffer
        self._tickets: Dict[Ticket, List[int]] = {}
        self._closed = False
        _pools.add(self)

    # -- public

    def acquire(self, timeout: Optional[float] = None) -> Optional[PoolBuffer]:
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
                left = _remaining(deadline)
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
        _pools.discard(self)
        try:
            self._mm.close()
        except BufferError:
            pass  # views or pins are alive; the mapping goes with the last one

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "BufferPool":
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
