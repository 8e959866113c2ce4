"""The ticket base: the kernel's promise about memory it may still read.

With ``MSG_ZEROCOPY`` sends and with ``vmsplice`` the kernel keeps reading
the caller's memory after the system call returned. Every buffer handed to
such a call is *pinned* with ``ffi.from_buffer`` -- the buffer export is
held, so a ``bytearray`` cannot be resized (BufferError) and the object
cannot be freed -- and the pin belongs to a :class:`Ticket`, which releases
it exactly once, when the kernel is done with the memory.

This module holds what every kind of ticket shares; the kinds themselves
live with the code that knows when the kernel is done:

- send tickets (``zcio.zerocopy``): done when the socket's completions cover
  their send ids;
- pipe tickets (``zcio.pipes``): done when the pipe's reader consumed past
  their bytes.

Three process-wide lists of pins live here too, because both kinds use them:

- *watchers* (``BufferPool``) hear of every ticket that pins memory, so a
  pool buffer returns to its pool only when its tickets are done;
- *kept* tickets are pending tickets that nothing else references (pipe
  tickets): they are held here until done and polled by passers-by;
- *abandoned* tickets can never learn that the kernel is done (their socket
  was closed, or the process forked): their pins are kept for the life of
  the process.
"""
from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Iterable
from typing import Any, Callable, Protocol

from ._binding import ffi

__all__ = [
    "Lent",
    "Ticket",
    "Watcher",
    "abandon",
    "abandoned",
    "announce",
    "keep",
    "kept",
    "let_go",
    "poll_kept",
    "remaining",
    "run",
    "unwatch",
    "watch",
]

Callback = Callable[["Ticket"], None]

# One lock for every ticket's hand-over from pending to done, and for the
# kept and abandoned sets. Held only for a few assignments, never around I/O.
_lock = threading.Lock()


class Ticket:
    """The kernel's promise about one ``sendall`` or ``vmsplice``.

    A ticket is done when the kernel no longer reads the memory it covers:
    all zero-copy completions for its sends arrived (sender tickets), or the
    pipe's reader consumed past its bytes (vmsplice tickets). Its pins are
    released at that moment, exactly once. Sends done by plain copy give a
    ticket that is done from the start.

    Tickets are not created directly.
    """

    __slots__ = ("__weakref__", "_callbacks", "_copied", "_done", "_pins", "nbytes")

    def __init__(self, nbytes: int, pins: list[Any] | None = None) -> None:
        #: Bytes the call handed to the kernel under this ticket.
        self.nbytes = nbytes
        self._copied = False
        if pins is None:  # nothing for the kernel to read later: done now
            self._done = True
            self._pins: list[Any] = []
            self._callbacks: list[Callback] | None = None
        else:
            self._done = False
            self._pins = pins
            self._callbacks = []

    def done(self) -> bool:
        """True once the kernel is done with this ticket's memory.

        Looks for progress first (reaps completions, checks the pipe),
        without blocking.

        Raises:
            OSError: reading the socket's error queue failed (EBADF when the
                socket was closed under an open sender).
        """
        if not self._done:
            self._poll()
        return self._done

    def wait(self, timeout: float | None = None) -> bool:
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
        if self._done:
            return True
        return self._wait(timeout)

    @property
    def copied(self) -> bool:
        """True if a completion covering this ticket said the kernel copied."""
        return self._copied

    def __repr__(self) -> str:
        state = "done" if self._done else "pending"
        copied = " copied" if self._copied else ""
        return f"<zcio.Ticket {state} nbytes={self.nbytes}{copied}>"

    # -- for the kinds of tickets

    def _poll(self) -> None:
        """Look for progress without blocking (a kind of ticket overrides it)."""

    def _wait(self, timeout: float | None) -> bool:
        """Wait for :meth:`_finish` (a kind of ticket overrides it)."""
        return self._done

    def _finish(self) -> list[Callback]:
        """Release the pins and mark the ticket done; only the first call acts.

        Returns the callbacks, which the caller runs (:func:`run`) after
        dropping its own locks.
        """
        with _lock:
            callbacks, self._callbacks = self._callbacks, None
            if callbacks is None:
                return []  # done already
            pins, self._pins = self._pins, []
        for pin in pins:  # before _done: whoever sees done may resize the buffer
            ffi.release(pin)
        self._done = True
        return callbacks

    def _add_callback(self, fn: Callback) -> None:
        """Call ``fn(ticket)`` once the ticket is done (now, if it is)."""
        with _lock:
            if self._callbacks is not None:
                self._callbacks.append(fn)
                return
        fn(self)


def run(callbacks: Iterable[Callback], ticket: Ticket) -> None:
    """Run the callbacks :meth:`Ticket._finish` returned."""
    for fn in callbacks:
        fn(ticket)


def remaining(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (a ``time.monotonic()``), None for none."""
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())


# ---------------------------------------------------------------- lent buffers


class Lent:
    """A buffer lent by a pool; zero-copy calls pin its :attr:`memory`."""

    __slots__ = ()

    @property
    def memory(self) -> memoryview:  # pragma: no cover - overridden
        """The memory to pin."""
        raise NotImplementedError


class Watcher(Protocol):
    """What :func:`watch` accepts: told of every range a ticket pins."""

    def _link(self, ticket: Ticket, address: int, length: int) -> None: ...


# Held weakly; a plain dict, whose emptiness costs nothing to check on the
# hot path (every zero-copy sendall announces its ticket).
_watchers: dict[int, weakref.ReferenceType[Watcher]] = {}


def watch(watcher: Watcher) -> None:
    """From now on, :func:`announce` tells ``watcher._link(ticket, address,
    length)`` of every range a ticket pins (held weakly)."""
    key = id(watcher)
    _watchers[key] = weakref.ref(watcher, lambda _, key=key: _watchers.pop(key, None))  # type: ignore[misc]


def unwatch(watcher: Watcher) -> None:
    """Undo :func:`watch`."""
    _watchers.pop(id(watcher), None)


def announce(ticket: Ticket) -> None:
    """A ticket now pins memory the kernel may read later: tell the watchers."""
    if not _watchers:
        return
    for ref in list(_watchers.values()):
        watcher = ref()
        if watcher is None:
            continue
        for pin in list(ticket._pins):
            watcher._link(ticket, int(ffi.cast("uintptr_t", pin)), len(pin))


# ---------------------------------------------------------------- kept, abandoned

_kept: set[Ticket] = set()
_abandoned: list[Ticket] = []


def keep(ticket: Ticket) -> None:
    """Hold a pending ticket until it is done, so dropping it changes nothing."""
    with _lock:
        if ticket._callbacks is not None:  # not finished (see _finish)
            _kept.add(ticket)


def let_go(ticket: Ticket) -> None:
    """A kept ticket is done: stop holding it (its kind calls this on finishing)."""
    with _lock:
        _kept.discard(ticket)


def kept() -> int:
    """How many kept tickets are not done yet."""
    return len(_kept)


def poll_kept() -> None:
    """Look for progress on every kept ticket (a finished one is let go)."""
    with _lock:
        tickets = list(_kept)
    for t in tickets:
        t.done()


def abandon(tickets: Iterable[Ticket]) -> None:
    """Keep these tickets' pins for the life of the process: nothing can
    tell any more when the kernel is done with their memory."""
    with _lock:
        _abandoned.extend(tickets)


def abandoned() -> tuple[int, int]:
    """(tickets, bytes) abandoned so far."""
    with _lock:
        tickets = list(_abandoned)
    return len(tickets), sum(t.nbytes for t in tickets)


def _forget_in_child() -> None:
    """After fork, the child keeps the kept tickets' pins for good: the pipes
    are shared with the parent, whose reader may not be done."""
    global _lock
    _lock = threading.Lock()
    _abandoned.extend(_kept)
    _kept.clear()


os.register_at_fork(after_in_child=_forget_in_child)
