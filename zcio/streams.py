"""Moving streams, blocking: splice_pipe, tee_pipe, proxy and stats().

:func:`splice_pipe` picks the cheapest kernel path for the pair of fds it is
given and falls back, path by path, down to a read/write copy when the kernel
refuses one -- but only while nothing has moved, so no byte is lost or
duplicated. The copy loop runs in C with the GIL released, in slices of at
most ~50 ms, so signals, ``timeout`` and ``progress`` get their turn.

Paths (src \\ dst): a regular file to a regular file uses copy_file_range
(keeping the source's holes), to anything else sendfile; a pipe on either
side means a direct splice; a socket (or another non-file source) goes
through a pooled pipe with two splices.

The plan and the exception-safe set-up live in :mod:`zcio._transfer`, shared
with :mod:`zcio.aio`; this module holds the blocking drivers.
"""
from __future__ import annotations

import errno
import os
import select
import socket
import threading
import time
from typing import Any

from . import _stats
from ._binding import lib
from ._errors import TransferError, transfer_timeout
from ._tee import Tee
from ._transfer import Plan, Progress, Xfer
from .lowlevel import FdLike, _fd, _poll_fd
from .pipes import PipePool

__all__ = ["Plan", "proxy", "splice_pipe", "stats", "tee_pipe"]

_DONE, _MORE, _WAIT = lib.ZCIO_DONE, lib.ZCIO_MORE, lib.ZCIO_WAIT
_SLICE_MS = 50
_UNLIMITED = 1 << 62


def stats() -> _stats.Stats:
    """Process-wide counters: bytes and calls per path, fallbacks by reason,
    transfers by outcome, and pipes (created, destroyed, exhausted, in use,
    free)."""
    return _stats.snapshot()


def splice_pipe(
    src: FdLike,
    dst: FdLike,
    count: int | None = None,
    *,
    offset: int | None = None,
    timeout: float | None = None,
    progress: Progress | None = None,
    pool: PipePool | None = None,
    plan: Plan | None = None,
) -> int:
    """Move bytes from ``src`` to ``dst`` by the cheapest path the kernel allows.

    Args:
        src: where bytes come from: an fd, a socket, a binary file object.
        dst: where they go.
        count: how many bytes to move; None moves until end of input. A count
            beyond the end is not an error: the call returns what it moved.
        offset: the source's file offset to start at; the source's position is
            then left alone. None uses (and advances) the current position; for
            a buffered reader that is its ``tell()``, and it is ``seek()``-ed to
            the true end afterwards, also on error. Given for a socket or pipe
            source it raises OSError(ESPIPE) before anything is read.
        timeout: the most seconds the call may wait without progress. Blocking
            fds are switched to non-blocking for the duration of the call (and
            switched back) so that no single system call can outlast it.
            Without a timeout, a call on the main thread (where Python runs
            signal handlers) switches blocking sockets and pipes all the same,
            so that every wait is a poll() of at most 50 ms and Ctrl-C is never
            left waiting behind a system call for the next byte.
        progress: called with the running total after each slice, and last with
            the final total. An exception it raises propagates; the bytes taken
            from src by then are in the exception's ``pending`` attribute.
        pool: the PipePool to take an intermediate pipe from (default: the
            process-wide one). When it is exhausted (or the process is out of
            fds), the transfer copies, and stats() counts the fallback.
        plan: a :class:`Plan` made by ``Plan.probe(src, dst)``, for calls that
            move bytes between the same two fds again and again: they skip
            looking at the fds (fstat, fcntl) each time.

    Returns:
        The number of bytes that reached ``dst``.

    Raises:
        TransferError: on any error once the transfer started, carrying
            ``transferred`` and ``pending``; it is also an instance of the
            builtin OSError subclass for its errno (BrokenPipeError,
            ConnectionResetError, TimeoutError on a timeout, ...).
        ValueError: a negative count or offset, or a negative timeout.
        TypeError: a text-mode file or something that is not an fd.
        OSError: a bad fd, or an error while setting up; then everything is
            as it was (blocking modes, positions), and bytes already taken
            from a buffered reader are in its ``pending``.
        KeyboardInterrupt (or any exception of a signal handler or of
            ``progress``): propagates with ``transferred`` and ``pending``
            attributes set on it.

    A regular file copied to a regular file keeps its holes: they are not
    read, and the destination gets holes where it had no data before (where
    it had, zeros are written). Both file positions end as for a copy.
    """
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be None or >= 0, got {timeout}")
    if timeout is not None:
        switch = "all"
    else:  # only the main thread runs signal handlers: elsewhere a blocking wait is cheaper
        switch = "streams" if threading.current_thread() is threading.main_thread() else "none"
    t = Xfer(src, dst, count, offset, pool, nonblocking=switch, plan=plan)
    try:
        return _run(t, timeout, progress)
    finally:
        t.close()


def _run(t: Xfer, timeout: float | None, progress: Progress | None) -> int:
    x = t.x
    last_progress = time.monotonic()

    def remaining() -> float | None:
        return None if timeout is None else max(0.0, last_progress + timeout - time.monotonic())

    with t.outcome():
        if t.head:
            view = memoryview(t.head)
            while t.prefix < len(view):
                try:
                    t.prefix += os.write(x.dst, view[t.prefix :])
                    last_progress = time.monotonic()
                except BlockingIOError:
                    _poll_fd(x.dst, select.POLLOUT, remaining())
                    if remaining() == 0:
                        raise transfer_timeout(t.transferred, t.pending(), timeout or 0) from None
                except OSError as exc:
                    raise t.error(exc.errno or errno.EIO) from None
            if progress is not None:
                progress(t.transferred)
        max_bytes = (64 << 20) if progress is not None else _UNLIMITED
        while True:
            before = (int(x.transferred), int(x.in_flight))
            budget = _SLICE_MS
            if timeout is not None:
                budget = max(0, min(_SLICE_MS, int(remaining() * 1000)))  # type: ignore[operator]
            rc = lib.zcio_pump(x, max_bytes, budget, 1)
            moved = (int(x.transferred), int(x.in_flight)) != before
            if moved:
                last_progress = time.monotonic()
            if rc == _DONE:
                break
            if rc < 0:
                if t.fall_back(-rc):
                    continue
                raise t.error(-rc)
            if timeout is not None and not moved and remaining() == 0:
                raise transfer_timeout(t.transferred, t.pending(), timeout)
            if progress is not None and moved:
                progress(t.transferred)
        if progress is not None:
            progress(t.transferred)
    return t.transferred


# ------------------------------------------------------------------ tee


def tee_pipe(
    src: FdLike,
    dst: FdLike,
    mirror: FdLike,
    count: int | None = None,
    *,
    timeout: float | None = None,
) -> int:
    """Send every byte of ``src`` to ``dst`` and a copy of it to ``mirror``.

    Each chunk is spliced from ``src`` into a pipe, duplicated with ``tee()``
    into a second pipe, and spliced from the two pipes to ``mirror`` and then
    ``dst``: no copy passes through user space. A source that cannot be
    spliced (a /proc file, say) is read and written instead. Each chunk is
    whatever one read returns, so interactive traffic is mirrored as it comes.

    Args:
        src, dst, mirror: fds or objects with ``fileno()``.
        count: bytes to move; None until EOF.
        timeout: the most seconds to wait without progress at any step.

    Returns:
        The number of bytes that reached ``dst`` (the mirror got the same).

    Raises:
        TransferError: with ``transferred`` (bytes that reached dst) and
            ``pending`` (bytes taken from src that did not reach dst).
    """
    t = Tee(src, dst, mirror, count)
    try:
        while True:
            want = t.want()
            n = t.fill(want) if want else 0
            if n is None:
                if not _poll_fd(t.src, select.POLLIN, timeout):
                    raise transfer_timeout(t.total, t.pending(), timeout or 0)
                continue
            if n == 0:
                return t.total
            t.duplicate(n)
            splice_pipe(t.copy.r, t.mirror, n, timeout=timeout, plan=t.to_mirror)
            try:
                t.total += splice_pipe(t.main.r, t.dst, n, timeout=timeout, plan=t.to_dst)
            except TransferError as exc:  # part of the chunk reached dst
                t.total += exc.transferred
                raise
    except OSError as exc:
        raise t.error(exc) from exc
    finally:
        t.close()


# ------------------------------------------------------------------ proxy


def proxy(a: socket.socket, b: socket.socket, *, half_close: bool = True) -> tuple[int, int]:
    """Relay bytes both ways between two connected sockets until both end.

    When one side reaches EOF, the other side's write half is shut down
    (``half_close``), so a peer that half-closes sees its EOF while the other
    direction keeps flowing. A reset on either side ends both directions.

    Returns:
        ``(a_to_b, b_to_a)``: the bytes delivered each way.

    Raises:
        TransferError: the first error of either direction, once both have
            stopped (the other direction's count is in its message).
        TypeError: an ``ssl.SSLSocket``; nothing is read, sent or shut down.
    """
    _fd(a), _fd(b)  # refuse a TLS socket before either direction starts
    results: list[Any] = [None, None]

    def pump(i: int, src: socket.socket, dst: socket.socket) -> None:
        try:
            results[i] = splice_pipe(src, dst)
            if half_close:
                _shutdown(dst, socket.SHUT_WR)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            results[i] = exc
            _shutdown(src, socket.SHUT_RDWR)
            _shutdown(dst, socket.SHUT_RDWR)

    other = threading.Thread(target=pump, args=(1, b, a), name="zcio-proxy", daemon=True)
    other.start()
    try:
        pump(0, a, b)
    finally:
        other.join()
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results[0], results[1]


def _shutdown(s: socket.socket, how: int) -> None:
    try:
        s.shutdown(how)
    except OSError:
        pass
