"""CompletionTracker: which MSG_ZEROCOPY send ids of a socket are complete.

Each successful ``send()`` with ``MSG_ZEROCOPY`` takes the next id of the
socket's 32-bit counter (a partial send on a stream socket takes one; a
failed send none). Completions are inclusive, coalesced ranges that may
arrive out of order and wrap past ``2**32 - 1``; the tracker turns them into
"these ids are done". Pure bookkeeping: no system calls, no locks (its
owner holds one).
"""
from __future__ import annotations

import bisect
import operator

__all__ = ["CompletionTracker"]

_U32 = 1 << 32


class CompletionTracker:
    """Which ``MSG_ZEROCOPY`` send ids of one socket still await completion.

    Ids are the socket's u32 counter: :meth:`issue` hands out the next one
    (wrapping from ``2**32 - 1`` to 0) and :meth:`complete` takes the
    kernel's inclusive ranges -- coalesced, in any order, possibly wrapped
    (``last < first``). :meth:`is_pending` and :meth:`any_pending` answer for
    one id and for a ticket's range of ids. Internally ids are numbered
    without wrapping; the state is a low-water mark (every id before it is
    complete) plus a sorted list of completed intervals above it, so memory
    stays proportional to the number of out-of-order gaps.

    Fewer than ``2**32`` ids may be outstanding at once (the kernel's own
    limit is far lower: optmem allows a few hundred notifications).

    Args:
        first_id: the id the next :meth:`issue` returns (0 for a fresh
            socket; tests start near ``2**32`` to exercise the wrap).

    Raises:
        ValueError: ``first_id`` outside ``[0, 2**32)``.
    """

    __slots__ = ("_covered", "_ends", "_low", "_next", "_starts")

    def __init__(self, first_id: int = 0) -> None:
        first_id = operator.index(first_id)
        if not 0 <= first_id < _U32:
            raise ValueError(f"first_id must be in [0, 2**32), got {first_id}")
        self._low = first_id  # every id before this one is complete
        self._next = first_id  # the next id to issue (unwrapped)
        self._starts: list[int] = []  # completed intervals [start, end) above _low
        self._ends: list[int] = []
        self._covered = 0  # ids inside those intervals

    @property
    def next_id(self) -> int:
        """The id the next :meth:`issue` returns."""
        return self._next % _U32

    @property
    def outstanding(self) -> int:
        """How many issued ids are not complete yet."""
        return self._next - self._low - self._covered

    @property
    def gaps(self) -> int:
        """How many runs of ids completed out of order, ahead of an older
        pending id (0 when completions came in order)."""
        return len(self._starts)

    def issue(self) -> int:
        """Record one zero-copy send and return its id.

        Issue the id *before* the send: its completion may be read (by
        another thread) before the send call returns, and ids not issued
        yet are ignored by :meth:`complete`.
        """
        send_id = self._next % _U32
        self._next += 1
        return send_id

    def retract(self, send_id: int) -> None:
        """Take back the last issued id: its send failed (the kernel took no id).

        Raises:
            ValueError: ``send_id`` is not the last issued id, or it is
                already complete.
        """
        last = self._next - 1
        if last < self._low or send_id != last % _U32 or self._covers(last, last + 1):
            raise ValueError(f"send id {send_id} is not the last pending id issued")
        self._next = last

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
        lo, hi = self._unwrap(first, last)
        return self._complete(max(lo, self._low), min(hi, self._next))

    def is_pending(self, send_id: int) -> bool:
        """True if ``send_id`` was issued and is not complete yet."""
        return self.any_pending(send_id, send_id)

    def any_pending(self, first: int, last: int) -> bool:
        """True if some id of the inclusive range ``first..last`` was issued
        and is not complete yet (a ticket covering those sends is not done)."""
        low, nxt = self._low, self._next
        if low == nxt:
            return False  # nothing outstanding
        lo = low + ((first - low) % _U32)  # as _unwrap, inline: the hot path
        if lo >= nxt:
            lo -= _U32
        hi = lo + ((last - first) % _U32) + 1
        if hi <= low:
            return False  # all before the low-water mark
        if lo < low or not self._starts:
            return True  # low itself (pending) is in the range, or lo is
        return not self._covers(lo, min(hi, nxt))  # ids not issued are not pending

    def __repr__(self) -> str:
        return (
            f"<CompletionTracker next_id={self.next_id} outstanding={self.outstanding} "
            f"gaps={len(self._starts)}>"
        )

    # -- unwrapped ids

    def _unwrap(self, first: int, last: int) -> tuple[int, int]:
        """The unwrapped half-open range for the inclusive u32 range."""
        lo = self._low + ((first - self._low) % _U32)
        if lo >= self._next:
            lo -= _U32  # starts before the low-water mark (already complete)
        return lo, lo + ((last - first) % _U32) + 1

    def _complete(self, lo: int, hi: int) -> int:
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
