"""Per-socket zero-copy state, and the graveyard that outlives senders.

The send-id counter belongs to the socket, not to the sender, so zcio keeps
one :class:`SocketRecord` per socket (keyed by the socket's inode): the
:class:`~zcio.zerocopy.CompletionTracker`, the tickets still in flight, the
``policy="auto"`` state and the counters. A second sender on the same
socket -- after the first was closed -- adopts the record and continues the
id sequence; two open senders on one socket are refused.

A sender closed (or collected) with sends in flight parks its record in the
:class:`Registry`'s graveyard; later calls reap it (a new sender,
``sendall``, ``flush``, :func:`reap_graveyard`, and once more, bounded, at
interpreter exit). If the socket itself is closed while tickets are parked,
their completions can never be read again, yet the kernel may still
transmit the pages: their pins are abandoned (kept for the life of the
process). After ``os.fork()`` the child forgets the parent's records
(reading their error queues would steal the parent's completions) and keeps
any parked pins for good.
"""
from __future__ import annotations

import atexit
import contextlib
import errno as _errno
import math
import os
import select
import threading
import time
from collections import deque
from typing import Callable

from .. import _tickets, lowlevel
from .._tickets import Callback, Ticket, remaining
from ..lowlevel import Completion, _poll_fd
from ._tracker import CompletionTracker

__all__ = [
    "AUTO_COPIED_LIMIT",
    "AUTO_ENOBUFS_LIMIT",
    "Registry",
    "SendTicket",
    "SocketRecord",
    "graveyard_stats",
    "reap_graveyard",
    "registry",
]

_U32 = 1 << 32

#: policy="auto": consecutive send ids reported COPIED before MSG_ZEROCOPY is dropped.
AUTO_COPIED_LIMIT = 32
#: policy="auto": consecutive ENOBUFS with nothing in flight before MSG_ZEROCOPY is dropped.
AUTO_ENOBUFS_LIMIT = 8

_SLICE = 0.05  # longest single poll() while waiting (other threads may reap)
_GRAVEYARD_INTERVAL = 0.1  # at most this often, sendall() reaps the graveyard
_AT_EXIT_TIMEOUT = 1.0
_COUNTERS = (
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
)


class SendTicket(Ticket):
    """A sendall's ticket: done when completions cover its send ids.

    Its sends took the ids ``first_id`` .. ``last_id`` (u32, ``sends`` of
    them, contiguous: one sendall at a time per socket).
    """

    __slots__ = ("_record", "busy", "first_id", "last_id", "sends")

    def __init__(self, nbytes: int, pin: object, record: SocketRecord) -> None:
        super().__init__(nbytes, [pin])
        self._record = record
        self.first_id = self.last_id = 0
        self.sends = 0
        self.busy = True  # sendall may still add sends to this ticket

    def _poll(self) -> None:
        self._record.reap_now()

    def _wait(self, timeout: float | None) -> bool:
        return self._record.wait_until(lambda: self._done, timeout)



class SocketRecord:
    """Everything zcio must remember about one socket's zero-copy sends.

    Outlives the sender: a closed or collected sender leaves it (with the
    tickets still in flight) in the graveyard, and the next sender on the
    same socket adopts it, so the id sequence continues. ``lock`` guards the
    tracker and ``pending``; counters are written by the one sending thread.
    """

    def __init__(self, fd: int, ident: tuple[int, int]) -> None:
        self.fd = fd
        self.ident = ident
        self.lock = threading.RLock()
        self.tracker = CompletionTracker()
        self.pending: deque[SendTicket] = deque()
        self.pinned_bytes = 0
        self.active = False  # a sender is attached
        self.lost = False  # the socket was closed while tickets were parked
        self.finished_total = 0  # tickets finished by reaping, ever
        self.adopt(fd, "auto")

    def adopt(self, fd: int, policy: str) -> None:
        """A new sender takes the record: per-sender state starts afresh."""
        self.fd = fd
        self.lost = False
        self.active = True
        self.policy = policy
        self.switched_off = False
        self.switch_reason: str | None = None
        self.copied_run = 0  # consecutive send ids reported COPIED
        self.enobufs_idle = 0  # consecutive ENOBUFS with nothing in flight
        self.since_reap = 0  # zero-copy sends since the last reap
        self.counters = dict.fromkeys(_COUNTERS, 0)

    def switch_off(self, reason: str) -> None:
        """policy="auto": stop using MSG_ZEROCOPY for this sender's life."""
        with self.lock:
            self.switched_off = True
            self.switch_reason = reason

    # -- a sendall's ticket

    def issue(self, ticket: SendTicket, first: bool) -> int:
        """The id for the ticket's next zero-copy send, issued before the
        send (its completion may race the return). The ticket's ``first``
        send also registers it: it is pending from now on."""
        with self.lock:
            if first:
                ticket.first_id = self.tracker.next_id
                self.pending.append(ticket)
                self.pinned_bytes += ticket.nbytes
            send_id = self.tracker.issue()
        if first:
            _tickets.announce(ticket)
        return send_id

    def retract(self, send_id: int) -> None:
        """The send of ``send_id`` failed: the kernel took no id."""
        with self.lock:
            self.tracker.retract(send_id)

    def settle(self, ticket: SendTicket, registered: bool) -> None:
        """sendall is done adding sends: finish the ticket if it can be."""
        callbacks: list[Callback] = []
        with self.lock:
            ticket.busy = False
            if not registered:
                callbacks = ticket._finish()
            elif not (ticket.sends and self.tracker.any_pending(ticket.first_id, ticket.last_id)):
                try:
                    self.pending.remove(ticket)
                except ValueError:  # pragma: no cover - already collected
                    pass
                else:
                    self.pinned_bytes -= ticket.nbytes
                    callbacks = ticket._finish()
        if callbacks:
            _tickets.run(callbacks, ticket)

    # -- reaping

    def reap_now(self) -> tuple[int, int]:
        """Drain the error queue without blocking.

        Returns:
            (completions processed, tickets finished).

        Raises:
            OSError: from recvmsg (EBADF when an attached sender's socket
                was closed).
        """
        done: list[tuple[Ticket, list[Callback]]] = []
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
        for ticket, callbacks in done:
            if callbacks:
                _tickets.run(callbacks, ticket)
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

    def _apply(self, comps: list[Completion]) -> list[SendTicket]:
        tracker = self.tracker
        c = self.counters
        for first, last, copied in comps:
            new = tracker.complete(first, last)
            c["completions"] += 1
            c["completed_sends"] += new
            if copied:
                c["copied_completions"] += 1
                c["copied_sends"] += new
                self.copied_run += new
                self._mark_copied(first, last)
            else:
                self.copied_run = 0
        if self.policy == "auto" and not self.switched_off and self.copied_run >= AUTO_COPIED_LIMIT:
            self.switched_off = True
            self.switch_reason = "copied"
        return self._collect()

    def _mark_copied(self, first: int, last: int) -> None:
        """The kernel copied the sends ``first..last``: say so on their tickets."""
        pending = self.pending
        if not pending:
            return
        # Tickets are in id order: positions relative to the oldest one
        # tell where to stop.
        base = pending[0].first_id
        end = (last - first) % _U32
        stop = (last - base) % _U32
        for t in pending:
            if (t.first_id - base) % _U32 > stop:
                break
            if t.sends and ((first - t.first_id) % _U32 < t.sends or (t.first_id - first) % _U32 <= end):
                t._copied = True

    def _collect(self) -> list[SendTicket]:
        """Take the finished tickets out of ``pending`` (under the lock)."""
        tracker = self.tracker
        pending = self.pending
        finished: list[SendTicket] = []
        while pending:
            t = pending[0]
            if t.busy or (t.sends and tracker.any_pending(t.first_id, t.last_id)):
                break
            pending.popleft()
            finished.append(t)
        if tracker.gaps and pending:
            keep: deque[SendTicket] = deque()
            for t in pending:
                if not t.busy and not (t.sends and tracker.any_pending(t.first_id, t.last_id)):
                    finished.append(t)
                else:
                    keep.append(t)
            self.pending = keep
        for t in finished:
            self.pinned_bytes -= t.nbytes
        return finished

    def wait_until(self, cond: Callable[[], bool], timeout: float | None) -> bool:
        """Reap (waiting for POLLERR in slices) until ``cond()`` or timeout.

        Slices keep a waiter responsive when another thread reaps the
        completion it was waiting for.

        Raises:
            OSError: EBADF when an attached sender's socket was closed.
        """
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        backoff = 0.001
        while True:
            self.reap_now()
            if cond():
                return True
            if self.lost:
                return False
            left = remaining(deadline)
            if left is not None and left <= 0:
                return False
            revents = _poll_fd(self.fd, 0, _SLICE if left is None else min(_SLICE, left))
            if revents & select.POLLNVAL:
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
                    left = remaining(deadline)
                    time.sleep(backoff if left is None else min(backoff, left))
                    backoff = min(backoff * 2, _SLICE)
                else:
                    backoff = 0.001


class Registry:
    """The process's socket records, and the graveyard of parked ones.

    One lock guards the records and the graveyard; each record's own lock
    guards its tickets.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.records: dict[tuple[int, int], SocketRecord] = {}
        self.graveyard: set[SocketRecord] = set()
        self._prune_at = 256
        self._last_reap = 0.0

    def attach(self, fd: int, policy: str) -> SocketRecord:
        """The record of the socket at ``fd``, for a new sender.

        Raises:
            ValueError: the socket already has an open sender.
            OSError: fstat failed.
        """
        st = os.fstat(fd)
        ident = (st.st_dev, st.st_ino)
        with self.lock:
            record = self.records.get(ident)
            if record is not None and record.active:
                raise ValueError("this socket already has an open ZeroCopySender")
            if record is None:
                if len(self.records) >= self._prune_at:
                    self._prune()
                record = self.records[ident] = SocketRecord(fd, ident)
            self.graveyard.discard(record)  # adopt what a previous sender left
            record.adopt(fd, policy)
        return record

    def park(self, record: SocketRecord) -> None:
        """A sender closed or was collected: park its record if sends are in flight.

        Called from close() and from a sender's finalizer, possibly inside a
        garbage collection; so it takes no record lock and does no I/O.
        """
        with self.lock:
            record.active = False
            if record.pending:
                self.graveyard.add(record)

    def reap(self, timeout: float = 0.0) -> int:
        """See :func:`reap_graveyard`."""
        self._last_reap = time.monotonic()
        _tickets.poll_kept()
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            with self.lock:
                graves = list(self.graveyard)
            for record in graves:
                try:
                    record.reap_now()
                except OSError:
                    record.lost = True
                with self.lock:
                    if record.lost:
                        self._bury(record)
                    elif not record.pending:
                        self.graveyard.discard(record)
            left = deadline - time.monotonic()
            with self.lock:
                graves = list(self.graveyard)
            if not graves or left <= 0:
                break
            p = select.poll()
            for record in graves:
                p.register(record.fd, 0)
            p.poll(max(1, math.ceil(min(left, _SLICE) * 1000)))
        with self.lock:
            parked = sum(len(record.pending) for record in self.graveyard)
        return parked + _tickets.abandoned()[0]

    def maybe_reap(self) -> None:
        """Reap the graveyard if something waits there and it is time."""
        if (self.graveyard or _tickets.kept()) and time.monotonic() - self._last_reap >= _GRAVEYARD_INTERVAL:
            self.reap(0.0)

    def stats(self) -> dict[str, int]:
        """See :func:`graveyard_stats`."""
        with self.lock:
            graves = list(self.graveyard)
        abandoned_tickets, abandoned_bytes = _tickets.abandoned()
        return {
            "sockets": len(graves),
            "tickets": sum(len(record.pending) for record in graves),
            "bytes": sum(record.pinned_bytes for record in graves),
            "abandoned_tickets": abandoned_tickets,
            "abandoned_bytes": abandoned_bytes,
            "vmsplice_tickets": _tickets.kept(),
        }

    def _bury(self, record: SocketRecord) -> None:
        """The socket is gone: keep its pins for the life of the process."""
        with record.lock:
            record.lost = True
            tickets, record.pending = record.pending, deque()
        _tickets.abandon(tickets)
        self.graveyard.discard(record)

    def _prune(self) -> None:
        """Forget sockets no longer open in this process (under the lock)."""
        open_inodes: set[int] = set()
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
        for ident, record in list(self.records.items()):
            if record.active or ident[1] in open_inodes:
                continue
            del self.records[ident]
            if record.pending:
                self._bury(record)
        self._prune_at = max(256, 2 * len(self.records))

    def forget_in_child(self) -> None:
        """After fork the child must not read the parent's error queues."""
        self.lock = threading.RLock()
        for record in self.graveyard:
            _tickets.abandon(record.pending)
        self.graveyard.clear()
        self.records.clear()

    def at_exit(self) -> None:
        """Reap the graveyard once more, bounded, as the interpreter exits."""
        if self.graveyard:
            with contextlib.suppress(OSError):  # best effort at shutdown
                self.reap(_AT_EXIT_TIMEOUT)


#: The process's registry.
registry = Registry()
atexit.register(registry.at_exit)
# Registered after zcio._tickets' own fork handler, which this one relies on.
os.register_at_fork(after_in_child=registry.forget_in_child)


def reap_graveyard(timeout: float = 0.0) -> int:
    """Reap the completions of closed or collected senders' parked sends.

    Tickets whose completions arrived are finished (pins released); parked
    records whose socket was closed meanwhile are abandoned (their pins are
    kept for the life of the process). Also checks the pending vmsplice
    tickets.

    Args:
        timeout: seconds to keep waiting for the remaining completions
            (0: do not wait).

    Returns:
        How many tickets are still parked (graveyard and abandoned).
    """
    return registry.reap(timeout)


def graveyard_stats() -> dict[str, int]:
    """What closed or collected senders left behind.

    Returns:
        ``sockets``, ``tickets``, ``bytes``: parked records waiting for
        completions; ``abandoned_tickets``, ``abandoned_bytes``: pins kept for
        the life of the process because their socket was closed first (or
        the process forked); ``vmsplice_tickets``: vmsplice tickets not done
        yet.
    """
    return registry.stats()
