"""ZeroCopySender: ``MSG_ZEROCOPY`` sends whose buffers stay pinned until done.

:class:`SenderBase` is what the blocking sender here and the asyncio one
(:mod:`zcio.zerocopy.aio`) share: setting up the socket, its record in the
registry, the first plain-copy attempt of each ``sendall``, the counters,
and letting go of the socket. Each sender then drives the same step
(:mod:`zcio.zerocopy._step`) its own way; :class:`ZeroCopySender` waits
with ``poll()``.
"""
from __future__ import annotations

import errno as _errno
import fcntl
import operator
import os
import select
import socket
import threading
import warnings
import weakref
from typing import TYPE_CHECKING, Any, Callable

from .._errors import ENOTSUPP
from .._tickets import Lent, Ticket
from ..lowlevel import SO_ZEROCOPY, FdLike, _fd, _nonneg, _poll_fd
from ._registry import SocketRecord, registry
from ._step import Route, SendOp, Wait

if TYPE_CHECKING:  # pragma: no cover
    from typing_extensions import Self

__all__ = ["DEFAULT_THRESHOLD", "SenderBase", "ZeroCopySender"]

#: Sends smaller than this many bytes are plain copies (gRPC uses 16 KiB).
DEFAULT_THRESHOLD = 16 * 1024

_POLICIES = ("auto", "always", "never")
_ZC_UNSUPPORTED = {_errno.EOPNOTSUPP, _errno.ENOPROTOOPT, ENOTSUPP}
_CLOSE_TIMEOUT = 1.0

Buffer = Any  # any object exporting the buffer protocol


def _nbytes(data: Any) -> int:
    """Size in bytes of a bytes-like object."""
    if type(data) is memoryview:
        return data.nbytes
    return memoryview(data).nbytes


def _sock_info(sock: Any, fd: int) -> tuple[int, socket.socket | None, bool]:
    """(SO_TYPE, a socket object for setsockopt, whether we must close it)."""
    if isinstance(sock, socket.socket) and sock.fileno() == fd:
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE), sock, False
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


def _enable_zerocopy(sock: Any, fd: int, policy: str) -> tuple[bool, int | None]:
    """Set SO_ZEROCOPY unless the policy is "never".

    Returns:
        (whether the socket is a stream socket, the errno that refused
        SO_ZEROCOPY or None).
    """
    kind, sobj, temporary = _sock_info(sock, fd)
    try:
        if kind not in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            raise ValueError("ZeroCopySender needs a stream or datagram socket")
        if policy != "never":
            assert sobj is not None
            try:
                sobj.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
            except OSError as exc:
                if exc.errno not in _ZC_UNSUPPORTED:
                    raise
                return kind == socket.SOCK_STREAM, exc.errno
        return kind == socket.SOCK_STREAM, None
    finally:
        if temporary and sobj is not None:
            sobj.close()


def _let_go(record: SocketRecord, on_drop: list[Callable[[], None]], message: str) -> None:
    """A sender was dropped unclosed: let go of the socket as close() does,
    but without waiting -- sends in flight keep their pins in the graveyard
    -- and say so, as ``socket.socket`` does."""
    try:
        registry.park(record)
        for fn in on_drop:
            fn()
    finally:
        warnings.warn(message, ResourceWarning, stacklevel=2)


class SenderBase:
    """What every zero-copy sender shares; see :class:`ZeroCopySender`.

    Owns the attachment to the socket's record (no second sender while it
    is open) and, through its tickets, the pins. Dropped unclosed, it parks
    the record as ``close()`` would and warns (ResourceWarning).
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
        reap_every = self._check_reap_every(reap_every)
        self._closed = True  # until fully set up
        fd = _fd(sock)
        stream, zc_error = _enable_zerocopy(sock, fd, policy)
        self._sock = sock
        self._zc_error = zc_error
        self._route = Route(fd, stream, policy != "never" and zc_error is None, threshold, policy, reap_every)
        self._guard = threading.Lock()  # one sendall at a time
        self._record = registry.attach(fd, policy)
        #: Undone by the finalizer only (a subclass adds to it).
        self._on_drop: list[Callable[[], None]] = []
        message = f"unclosed <zcio.{type(self).__name__} fd={fd}>"
        self._finalizer = weakref.finalize(self, _let_go, self._record, self._on_drop, message)
        self._finalizer.atexit = False
        self._closed = False
        registry.maybe_reap()

    # -- settings

    @property
    def threshold(self) -> int:
        """Sends smaller than this many bytes are plain copies."""
        return self._route.threshold

    @threshold.setter
    def threshold(self, value: int) -> None:
        self._route.threshold = _nonneg(value, "threshold")

    @property
    def policy(self) -> str:
        """``"auto"``, ``"always"`` or ``"never"``."""
        return self._route.policy

    @property
    def reap_every(self) -> int:
        """Completions are drained after this many zero-copy sends."""
        return self._route.reap_every

    @reap_every.setter
    def reap_every(self, value: int) -> None:
        self._route.reap_every = self._check_reap_every(value)

    @staticmethod
    def _check_reap_every(value: int) -> int:
        value = operator.index(value)
        if value < 1:
            raise ValueError(f"reap_every must be >= 1, got {value}")
        return value

    # -- state

    @property
    def in_flight(self) -> int:
        """Bytes pinned by tickets that are not done yet (0 when flushed).

        ``stats`` also has ``in_flight_tickets`` and ``in_flight_sends``
        (zero-copy send ids not yet completed).
        """
        return self._record.pinned_bytes

    @property
    def zerocopy(self) -> bool:
        """True while sends of at least ``threshold`` bytes use MSG_ZEROCOPY."""
        return self._route.zerocopy and not (self._record.switched_off and self.policy == "auto")

    @property
    def stats(self) -> dict[str, Any]:
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
        record = self._record
        with record.lock:
            out: dict[str, Any] = dict(record.counters)
            out.update(
                sends=out["zerocopy_sends"] + out["copy_sends"],
                bytes=out["zerocopy_bytes"] + out["copy_bytes"],
                policy=self.policy,
                zerocopy_enabled=self._route.zerocopy,
                zerocopy_error=self._zc_error,
                policy_switched_off=record.switched_off,
                switch_reason=record.switch_reason,
                in_flight_tickets=len(record.pending),
                in_flight_sends=record.tracker.outstanding,
                in_flight_bytes=record.pinned_bytes,
            )
        return out

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran (the socket itself stays open)."""
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self._route.fd}"
        return (
            f"<zcio.{type(self).__name__} {state} policy={self.policy!r} "
            f"zerocopy={self.zerocopy} in_flight={self._record.pinned_bytes}>"
        )

    # -- for the drivers

    def _begin(self, data: Buffer | Lent) -> Ticket | SendOp:
        """Start a sendall, one at a time: the caller releases ``_guard``
        when it returned. Its first attempt: all of a plain-copy send.

        Below the threshold, or with zero-copy off, one write usually sends
        everything: nothing outlives the call, so no pin and no bookkeeping,
        and the ticket is done. Otherwise the step takes over.

        Raises:
            ValueError: the sender is closed.
            RuntimeError: a sendall is already running.
            TypeError, BufferError: ``data`` is not a C-contiguous buffer.
        """
        if self._closed:
            raise ValueError(f"sendall() on a closed {type(self).__name__}")
        if not self._guard.acquire(False):
            raise RuntimeError(f"{type(self).__name__}.sendall() called from two threads or tasks at once")
        try:
            if registry.graveyard:
                registry.maybe_reap()
            buf: Any = data
            cls = type(buf)
            if cls is bytes or cls is bytearray:
                total = len(buf)
            else:
                if isinstance(buf, Lent):
                    buf = buf.memory
                total = _nbytes(buf)
            route, record = self._route, self._record
            sent = 0
            if total < route.threshold or not route.zerocopy or record.switched_off:
                try:
                    sent = os.write(route.fd, buf)
                except BlockingIOError:
                    pass
                if sent == total:
                    c = record.counters
                    c["sendalls"] += 1
                    if sent or not route.stream:
                        c["copy_sends"] += 1
                        c["copy_bytes"] += sent
                    return Ticket(total)
            return SendOp(route, record, buf, sent)
        except BaseException:
            self._guard.release()
            raise

    def _reap_now(self) -> int:
        """Drain completions without waiting; returns the tickets finished."""
        record = self._record
        before = record.finished_total
        record.reap_now()
        return record.finished_total - before

    def _release(self) -> None:
        """Detach from the socket: park the record (sends in flight keep
        their pins). The socket stays open."""
        self._closed = True
        if self._finalizer.detach() is not None:
            registry.park(self._record)


class ZeroCopySender(SenderBase):
    """Sends buffers on a TCP or connected UDP socket with ``MSG_ZEROCOPY``.

    The sender enables ``SO_ZEROCOPY`` on the socket (if the socket refuses
    -- EOPNOTSUPP, ENOPROTOOPT or the old kernels' 524 -- it falls back to
    plain copy sends and says so in :attr:`stats`). Each :meth:`sendall`
    returns a :class:`~zcio.Ticket`; the buffer stays pinned until the
    ticket is done. The sender does not own the socket: :meth:`close`
    flushes and leaves it open; close the sender before the socket. Blocking
    sockets, sockets with a timeout and non-blocking sockets all work (on
    EAGAIN the sender polls for POLLOUT, reaping completions meanwhile).
    A sender dropped unclosed parks its sends in flight (their pins hold)
    and warns (ResourceWarning).

    Not for concurrent ``sendall`` from several threads (RuntimeError);
    tickets may be waited on from any thread. See :mod:`zcio.zerocopy` for
    pin lifetime, the graveyard, ENOBUFS and ``policy="auto"``.

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

    def sendall(self, data: Buffer | Lent, *, timeout: float | None = None) -> Ticket:
        """Send all of ``data`` and return the ticket that tracks its memory.

        On a stream socket every byte is sent (zero-copy sends take at most
        1 MiB each, which bounds the locked memory one call needs); on a
        datagram socket exactly one datagram. Parts of at least
        ``threshold`` bytes go with ``MSG_ZEROCOPY`` and keep ``data`` pinned
        until the kernel's completions cover them; smaller parts (and
        everything once zero-copy is off) are plain copies. A ticket with no
        zero-copy send is done on return.

        Args:
            data: a C-contiguous bytes-like object, or a
                :class:`~zcio.zerocopy.PoolBuffer`.
            timeout: most seconds to wait without progress when the socket
                is not writable (EAGAIN); None means the socket's own
                ``gettimeout()`` if it has a positive one, else no limit.

        Returns:
            The ticket.

        Raises:
            TimeoutError: no progress within ``timeout`` (a
                :class:`~zcio.TransferError` with ``.ticket``).
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
        if timeout is not None:
            timeout = max(0.0, float(timeout))
        op = self._begin(data)
        try:
            if not isinstance(op, SendOp):
                return op
            try:
                while not op.finished:
                    wait = op.step()
                    if type(wait) is Wait:
                        self._block(op, wait, timeout)
            except BaseException as exc:
                err = op.fail(exc)
                if err is exc:
                    raise
                raise err from exc
            return op.finish()
        finally:
            self._guard.release()

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
        record = self._record
        before = record.finished_total
        self._reap_now()
        if timeout > 0 and record.finished_total == before and record.pending:
            record.wait_until(lambda: record.finished_total != before or not record.pending, timeout)
        return record.finished_total - before

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until no ticket of this socket is in flight.

        Args:
            timeout: most seconds to wait; None waits indefinitely.

        Returns:
            True when everything completed, False on timeout.

        Raises:
            OSError: reading the error queue failed.
        """
        record = self._record
        ok = record.wait_until(lambda: not record.pending, timeout)
        registry.maybe_reap()
        return ok

    def close(self, timeout: float | None = _CLOSE_TIMEOUT) -> None:
        """Flush (at most ``timeout`` seconds) and detach from the socket.

        The socket stays open. Tickets whose completions did not come in
        time keep their pins: the socket's record is parked in the
        graveyard and reaped later (see :mod:`zcio.zerocopy`). Idempotent.

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
            self._release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the blocking driver

    def _timeout(self, timeout: float | None) -> float | None:
        """The sendall's timeout, else the socket's own positive one."""
        if timeout is not None:
            return timeout
        gettimeout = getattr(self._sock, "gettimeout", None)
        if gettimeout is not None:
            t = gettimeout()
            if t:  # None (blocking) or 0.0 (non-blocking): wait without limit
                return float(t)
        return None

    def _block(self, op: SendOp, wait: Wait, timeout: float | None) -> None:
        """Wait as the step asked: for POLLOUT (reaping completions on
        POLLERR meanwhile) up to the sendall's ``timeout``, or briefly for a
        completion."""
        if not wait.events:
            _poll_fd(wait.fd, 0, wait.timeout)
            return
        limit = self._timeout(timeout)
        revents = _poll_fd(wait.fd, wait.events, limit if wait.timeout is None else wait.timeout)
        if revents == 0:
            raise op.timed_out(limit or 0.0)
        if revents & select.POLLNVAL:
            raise OSError(_errno.EBADF, os.strerror(_errno.EBADF))
        if revents & select.POLLERR:
            op.reap()
        # Writable, hung up or an error: the next step proceeds or says why.
