"""One sendall as a step: send what the socket takes now, or say what to wait for.

:class:`SendOp` holds one ``sendall`` in progress. Its :meth:`SendOp.step`
makes one attempt and returns either the bytes the socket accepted (``n``,
0 when it only reaped or retried) or a :class:`Wait` -- "wait for ``fd`` to
be ready for ``events``" -- and never blocks. A driver calls it until
:attr:`SendOp.finished`, waiting in between: the blocking sender
(``ZeroCopySender.sendall``) with ``poll()``, the asyncio one
(``AsyncZeroCopySender.sendall``) through the event loop. All policy lives
in the step -- chunking, the threshold, ``policy="auto"``, ENOBUFS, reaping
every ``reap_every`` sends -- so both drivers behave alike.

ENOBUFS (the socket's optmem, which every unread notification counts
against, or the locked-memory limit): with nothing in flight the chunk goes
by plain copy (no notification can come); with sends in flight the step
reaps and retries, and when nothing was ready it asks to wait briefly for a
completion (a :class:`Wait` with no events and a ``timeout``); if none came
by the next step, that chunk goes by copy.
"""
from __future__ import annotations

import errno as _errno
import os
import select
from typing import Any, NamedTuple

from .._binding import ffi, lib
from .._errors import TransferError, transfer_error
from ._registry import AUTO_ENOBUFS_LIMIT, SendTicket, SocketRecord

__all__ = ["Route", "SendOp", "Wait"]

_MAX_CHUNK = 1 << 20  # most bytes per zero-copy send() on a stream socket
_ENOBUFS_WAIT = 0.05  # seconds to wait for a completion after ENOBUFS

# The C call of the hot path, looked up through this module so tests can
# inject faults (e.g. ENOBUFS) by replacing it.
_c_send = lib.zcio_send


class Wait(NamedTuple):
    """What a step waits for before the next one.

    ``events`` is ``select.POLLOUT`` (the socket is full) or 0 (a completion
    on the error queue: POLLERR, which is always reported). ``timeout`` is
    the most seconds worth waiting (None: the caller's own limit); when it
    runs out, the next step goes on regardless.
    """

    fd: int
    events: int
    timeout: float | None = None


class Route:
    """Where and how a sender sends: the settings every step reads.

    Args:
        fd: the socket.
        stream: a stream socket (else datagrams: one send per sendall).
        zerocopy: SO_ZEROCOPY is on and the policy allows MSG_ZEROCOPY.
        threshold, policy, reap_every: as for ``ZeroCopySender``.
    """

    __slots__ = ("fd", "policy", "reap_every", "stream", "threshold", "zerocopy")

    def __init__(self, fd: int, stream: bool, zerocopy: bool, threshold: int, policy: str, reap_every: int) -> None:
        self.fd = fd
        self.stream = stream
        self.zerocopy = zerocopy
        self.threshold = threshold
        self.policy = policy
        self.reap_every = reap_every


class SendOp:
    """One ``sendall`` in progress: the pin, the ticket, the bytes sent.

    Args:
        route: the sender's settings.
        record: the socket's record.
        data: a C-contiguous bytes-like object (pinned here).
        sent: bytes of ``data`` already sent by a plain write.

    Raises:
        TypeError: ``data`` does not export the buffer protocol.
        BufferError: ``data`` is not C-contiguous.
    """

    __slots__ = (
        "_copy_next",
        "_registered",
        "_waited",
        "finished",
        "pin",
        "record",
        "route",
        "sent",
        "ticket",
        "total",
    )

    def __init__(self, route: Route, record: SocketRecord, data: Any, sent: int) -> None:
        self.pin = ffi.from_buffer(data)
        self.total = len(self.pin)
        self.route = route
        self.record = record
        self.ticket = SendTicket(self.total, self.pin, record)
        self.sent = sent
        #: True once everything is sent (a stream) or the datagram went.
        self.finished = route.stream and sent == self.total
        self._registered = False  # the ticket is in the record's pending list
        self._copy_next = False  # ENOBUFS: the next chunk goes by copy
        self._waited = False  # the last step asked to wait for a completion
        c = record.counters
        c["sendalls"] += 1
        if sent:
            c["copy_sends"] += 1
            c["copy_bytes"] += sent

    def step(self) -> int | Wait:
        """Make one attempt; never blocks.

        Returns:
            The bytes the socket accepted (0: it only reaped, or retries),
            or the :class:`Wait` to honour before the next step.

        Raises:
            OSError: from the kernel (the driver turns it into a
                TransferError when part was sent: :meth:`fail`).
        """
        remaining = self.total - self.sent
        if self._waited:
            self._waited = False
            if self.reap() == 0:
                self._copy_next = True  # no completion came: copy this chunk
        route, record = self.route, self.record
        if (
            self._copy_next
            or not route.zerocopy
            or remaining < route.threshold
            or remaining == 0
            or record.switched_off
        ):
            return self._copy(remaining)
        return self._zerocopy(remaining)

    def reap(self) -> int:
        """Drain completions now; returns how many were processed."""
        self.record.since_reap = 0
        return self.record.reap_now()[0]

    def timed_out(self, timeout: float) -> TransferError:
        """The error for "no progress within ``timeout`` seconds"."""
        return transfer_error(_errno.ETIMEDOUT, self.sent, b"", f"no progress within {timeout:g} seconds")

    def finish(self) -> SendTicket:
        """Everything is sent: settle the ticket and return it."""
        self.record.settle(self.ticket, self._registered)
        return self.ticket

    def fail(self, exc: BaseException, ticket: object | None = None) -> BaseException:
        """The step or the wait raised ``exc``: settle the ticket and say what
        to raise. After part was sent, an OSError becomes a TransferError with
        ``.transferred`` and ``.ticket`` (``ticket``, or the send ticket)."""
        self.record.settle(self.ticket, self._registered)
        shown = self.ticket if ticket is None else ticket
        if isinstance(exc, TransferError):
            exc.ticket = shown  # type: ignore[attr-defined]
        elif self.sent and isinstance(exc, OSError):
            err = transfer_error(exc.errno or _errno.EIO, self.sent, b"", exc.strerror)
            err.ticket = shown  # type: ignore[attr-defined]
            return err
        return exc

    # -- the two ways to send

    def _zerocopy(self, remaining: int) -> int | Wait:
        route, record = self.route, self.record
        chunk = min(remaining, _MAX_CHUNK) if route.stream else remaining
        send_id = record.issue(self.ticket, not self._registered)
        self._registered = True
        n: int = _c_send(route.fd, self.pin + self.sent, chunk, 0)
        if n < 0:
            record.retract(send_id)
            return self._refused(-n)
        ticket = self.ticket
        ticket.last_id = send_id
        ticket.sends += 1
        c = record.counters
        c["zerocopy_sends"] += 1
        c["zerocopy_bytes"] += n
        record.enobufs_idle = 0
        record.since_reap += 1
        if record.since_reap >= route.reap_every:
            self.reap()
        self.sent += n
        if not route.stream or self.sent == self.total:
            self.finished = True
        return n

    def _copy(self, remaining: int) -> int | Wait:
        try:
            n = os.write(self.route.fd, ffi.buffer(self.pin + self.sent, remaining))
        except BlockingIOError:
            return self._full()
        c = self.record.counters
        if self._copy_next:
            c["enobufs_copies"] += 1
            self._copy_next = False
        c["copy_sends"] += 1
        c["copy_bytes"] += n
        self.sent += n
        if not self.route.stream or self.sent == self.total:
            self.finished = True
        return n

    def _full(self) -> Wait:
        self.record.counters["eagain_waits"] += 1
        return Wait(self.route.fd, select.POLLOUT)

    def _refused(self, err: int) -> int | Wait:
        if err == _errno.EINTR:
            return 0  # the driver's loop lets signal handlers run (PEP 475)
        if err in (_errno.EAGAIN, _errno.EWOULDBLOCK):
            return self._full()
        if err != _errno.ENOBUFS:
            raise OSError(err, os.strerror(err))
        record = self.record
        record.counters["enobufs"] += 1
        if record.tracker.outstanding == 0:
            # Nothing in flight: no completion will come to free anything.
            record.enobufs_idle += 1
            if self.route.policy == "auto" and record.enobufs_idle >= AUTO_ENOBUFS_LIMIT:
                record.switch_off("enobufs")
            self._copy_next = True
            return 0
        if self.reap() > 0:
            return 0  # optmem freed: retry zero-copy
        self._waited = True
        return Wait(self.route.fd, 0, _ENOBUFS_WAIT)
