"""Moving streams: splice_pipe, tee_pipe and proxy.

:func:`splice_pipe` picks the cheapest kernel path for the pair of fds it is
given and falls back, path by path, down to a read/write copy when the kernel
refuses one -- but only while nothing has moved, so no byte is lost or
duplicated. The copy loop runs in C with the GIL released, in slices of at
most ~50 ms, so signals, ``timeout`` and ``progress`` get their turn.

Paths (src \\ dst): a regular file to a regular file uses copy_file_range, to
anything else sendfile; a pipe on either side means a direct splice; a socket
(or another non-file source) goes through a pooled pipe with two splices.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import select
import socket
import stat
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from . import _stats
from ._binding import ffi, lib
from ._errors import TransferError, transfer_error, transfer_timeout
from .lowlevel import SPLICE_F_NONBLOCK, FdLike, _fd, _nonneg, _poll_fd, splice, tee
from .pipes import Pipe, PipePool, default_pool

__all__ = ["splice_pipe", "tee_pipe", "proxy", "stats"]

Progress = Callable[[int], Any]

# Method ids of the C core, and the names stats() reports them under.
SENDFILE = lib.ZCIO_M_SENDFILE
COPY_FILE_RANGE = lib.ZCIO_M_COPY_FILE_RANGE
SPLICE = lib.ZCIO_M_SPLICE
PIPE = lib.ZCIO_M_PIPE
RW = lib.ZCIO_M_RW
PATH_NAMES = {
    SENDFILE: "sendfile",
    COPY_FILE_RANGE: "copy_file_range",
    SPLICE: "splice",
    PIPE: "splice_via_pipe",
    RW: "read_write",
}
_CHUNK = {
    SENDFILE: 8 << 20,
    COPY_FILE_RANGE: 64 << 20,
    SPLICE: 16 << 20,
    RW: 256 << 10,
}
_DONE, _MORE, _WAIT = lib.ZCIO_DONE, lib.ZCIO_MORE, lib.ZCIO_WAIT
_SLICE_MS = 50
_UNLIMITED = 1 << 62

# Errors that mean "this path is not for these fds" when nothing has moved.
# 524 is the kernel's internal ENOTSUPP, which some filesystems leak.
_FALLBACK_ERRNOS = frozenset(
    {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV, errno.EPERM, 524}
)


def stats() -> Dict[str, Any]:
    """Process-wide counters: bytes and calls per path, fallbacks by reason,
    transfers by outcome, and pipes (created, destroyed, exhausted, in use,
    free)."""
    return _stats.snapshot()


# ------------------------------------------------------------ the two ends


def _kind(fd: int) -> str:
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode) or stat.S_ISBLK(mode):
        return "file"
    if stat.S_ISFIFO(mode):
        return "pipe"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "other"


def _plan(src: str, dst: str) -> List[int]:
    """The paths to try, cheapest first (SPEC section 2's table)."""
    if src == "pipe" or dst == "pipe":
        return [SPLICE, RW]
    if src == "file" and dst == "file":
        return [COPY_FILE_RANGE, SENDFILE, PIPE, RW]
    if src in ("file", "other"):
        return [SENDFILE, PIPE, RW]
    return [PIPE, RW]  # a socket source


def _resolve(obj: FdLike, name: str) -> Tuple[int, Any]:
    if isinstance(obj, io.TextIOBase):
        raise TypeError(f"{name} is a text-mode file; open it in binary mode")
    return _fd(obj), (None if isinstance(obj, int) else obj)


def _is_buffered(obj: Any) -> bool:
    return isinstance(obj, (io.BufferedReader, io.BufferedWriter, io.BufferedRandom, io.BufferedRWPair))


def _take_buffered(reader: Any, fd: int, limit: Optional[int]) -> bytes:
    """The bytes an unseekable buffered reader already holds, consumed from it.

    The fd is made non-blocking for the peek so that an empty buffer does not
    turn into a blocking read.
    """
    flags = os.get_blocking(fd)
    os.set_blocking(fd, False)
    try:
        try:
            held = reader.peek(0)
        except BlockingIOError:
            held = b""
    finally:
        os.set_blocking(fd, flags)
    if limit is not None:
        held = held[:limit]
    return reader.read(len(held)) if held else b""


class _Transfer:
    """One transfer, from preparation to clean-up; shared by the sync
    splice_pipe here and the one in zcio.aio, which differ only in how they
    wait.

    Holds the C state, the pooled pipe or copy buffer, the plan of paths and
    the bytes of a Python buffer that must go first (``head``). ``close()``
    puts everything back as the caller should find it: the pipe in its pool,
    fds' blocking modes, a buffered reader's position, a buffered writer's.
    """

    def __init__(
        self,
        src: FdLike,
        dst: FdLike,
        count: Optional[int],
        offset: Optional[int],
        pool: Optional[PipePool],
        *,
        nonblocking: bool,
    ) -> None:
        if count is not None:
            count = _nonneg(count, "count")
        if offset is not None:
            offset = _nonneg(offset, "offset")
        src_fd, src_obj = _resolve(src, "src")
        dst_fd, self.dst_obj = _resolve(dst, "dst")
        src_kind, dst_kind = _kind(src_fd), _kind(dst_fd)
        if offset is not None and src_kind in ("pipe", "socket"):
            raise OSError(errno.ESPIPE, f"offset given for a {src_kind} source: {os.strerror(errno.ESPIPE)}")
        self.plan = _plan(src_kind, dst_kind)
        if self.plan[0] != SPLICE and fcntl.fcntl(dst_fd, fcntl.F_GETFL) & os.O_APPEND:
            # No kernel path writes to an O_APPEND file (EINVAL, or EBADF from
            # copy_file_range); go straight to the copy and say so.
            _stats.count_fallback("dst:O_APPEND")
            self.plan = [RW]
        self.dst_fd = dst_fd
        self.pool = pool or default_pool()
        self.pipe: Optional[Pipe] = None
        self.buf: Any = None
        self.method = 0
        self.prefix = 0  # bytes of `head` delivered
        self.head = b""  # an unseekable buffered reader's bytes, delivered first
        self.seek_src: Any = None  # a seekable buffered reader, seek()-ed to the true end
        self.restore: List[int] = []  # fds to switch back to blocking

        if self.dst_obj is not None and hasattr(self.dst_obj, "flush") and not isinstance(self.dst_obj, socket.socket):
            self.dst_obj.flush()
        if offset is None and src_obj is not None and _is_buffered(src_obj):
            if src_obj.seekable():
                offset = src_obj.tell()
                self.seek_src = src_obj
            else:
                self.head = _take_buffered(src_obj, src_fd, count)
                if count is not None:
                    count -= len(self.head)
        if nonblocking:
            for fd in {src_fd, dst_fd}:
                if os.get_blocking(fd):
                    os.set_blocking(fd, False)
                    self.restore.append(fd)

        self.x = x = ffi.new("zcio_xfer *")
        x.src, x.dst = src_fd, dst_fd
        x.pipe_r = x.pipe_w = -1
        x.src_off = -1 if offset is None else offset
        x.remaining = -1 if count is None else count
        self._methods = iter(self.plan)
        if not self._next_method():  # pragma: no cover - RW always works
            raise AssertionError("no usable path")

    @property
    def transferred(self) -> int:
        return self.prefix + int(self.x.transferred)

    def _next_method(self) -> bool:
        for method in self._methods:
            if self._use(method):
                return True
        return False

    def _use(self, method: int) -> bool:
        """Switch to ``method``; False when it cannot be used (no pipe free)."""
        x = self.x
        if method == PIPE:
            if self.pipe is None:
                self.pipe = self.pool.acquire()
                if self.pipe is None:
                    _stats.count_fallback("splice_via_pipe:pool_exhausted")
                    return False
            x.pipe_r, x.pipe_w = self.pipe.r, self.pipe.w
            x.chunk = self.pool.pipe_size
        else:
            x.chunk = _CHUNK[method]
            if method == RW and self.buf is None:
                self.buf = ffi.new("unsigned char[]", _CHUNK[RW])
                x.buf = self.buf
        if method == RW and self.method == PIPE and x.in_flight:
            # The pipe took a chunk that the destination refused: carry it
            # over into the buffer so the copy path delivers it first.
            carried = self.pending()
            ffi.memmove(self.buf, carried, len(carried))
            x.buf_pos = 0
            x.in_flight = len(carried)
        x.method = self.method = method
        return True

    def fall_back(self, err: int) -> bool:
        """After the kernel refused the current path with ``err``: move to the
        next one if that loses nothing, and say whether it did."""
        x = self.x
        method = self.method
        refused = err in _FALLBACK_ERRNOS or (method == COPY_FILE_RANGE and err == errno.EBADF)
        # Only while nothing reached dst; a chunk in our pipe can be carried.
        if not refused or x.transferred or (x.in_flight and method != PIPE):
            return False
        if not self._next_method():
            return False
        _stats.count_fallback(f"{PATH_NAMES[method]}:{errno.errorcode.get(err, err)}")
        return True

    def error(self, err: int) -> TransferError:
        return transfer_error(err, self.transferred, self.pending())

    def pending(self) -> bytes:
        """Recover the bytes taken from src and not delivered (head included)."""
        head = self.head[self.prefix :]
        n = int(self.x.in_flight)
        if n == 0:
            return head
        if self.method == PIPE and self.pipe is not None:
            data = self.pipe.drain(n)
        else:
            start = int(self.x.buf_pos)
            data = bytes(ffi.buffer(self.buf)[start : start + n])
        self.x.in_flight -= len(data)
        return head + data

    @contextlib.contextmanager
    def outcome(self) -> Iterator[None]:
        """Count how the run ended; on an exception that is not ours (a
        signal handler's KeyboardInterrupt, progress's, a cancellation) set
        ``transferred`` and ``pending`` on it: nothing taken from src may
        vanish, so say where it is."""
        try:
            yield
        except TransferError:
            _stats.count_transfer("failed")
            raise
        except BaseException as exc:
            _stats.count_transfer("interrupted")
            exc.transferred = self.transferred  # type: ignore[attr-defined]
            exc.pending = self.pending()  # type: ignore[attr-defined]
            raise
        _stats.count_transfer("completed")

    def close(self) -> None:
        x = self.x
        try:
            if self.pipe is not None:
                self.pool.release(self.pipe)
                self.pipe = None
            if x.calls or x.transferred:
                _stats.count_path(PATH_NAMES.get(self.method, "?"), int(x.transferred), int(x.calls))
        finally:
            for fd in self.restore:
                os.set_blocking(fd, True)
            if self.seek_src is not None:
                self.seek_src.seek(int(x.src_off))
            if self.dst_obj is not None and _is_buffered(self.dst_obj) and self.dst_obj.seekable():
                self.dst_obj.seek(os.lseek(self.dst_fd, 0, os.SEEK_CUR))


def splice_pipe(
    src: FdLike,
    dst: FdLike,
    count: Optional[int] = None,
    *,
    offset: Optional[int] = None,
    timeout: Optional[float] = None,
    progress: Optional[Progress] = None,
    pool: Optional[PipePool] = None,
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
        progress: called with the running total after each slice, and last with
            the final total. An exception it raises propagates; the bytes taken
            from src by then are in the exception's ``pending`` attribute.
        pool: the PipePool to take an intermediate pipe from (default: the
            process-wide one). When it is exhausted, the transfer copies.

    Returns:
        The number of bytes that reached ``dst``.

    Raises:
        TransferError: on any error once the transfer started, carrying
            ``transferred`` and ``pending``; it is also an instance of the
            builtin OSError subclass for its errno (BrokenPipeError,
            ConnectionResetError, TimeoutError on a timeout, ...).
        ValueError: a negative count or offset, or a negative timeout.
        TypeError: a text-mode file or something that is not an fd.
        KeyboardInterrupt (or any exception of a signal handler or of
            ``progress``): propagates with ``transferred`` and ``pending``
            attributes set on it.
    """
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be None or >= 0, got {timeout}")
    t = _Transfer(src, dst, count, offset, pool, nonblocking=timeout is not None)
    try:
        return _run(t, timeout, progress)
    finally:
        t.close()


def _run(t: _Transfer, timeout: Optional[float], progress: Optional[Progress]) -> int:
    x = t.x
    last_progress = time.monotonic()

    def remaining() -> Optional[float]:
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


class _Tee:
    """The state of one tee_pipe call, shared by the sync and async versions
    (which differ only in how they wait): the resolved fds, the two pipes
    (``main`` for dst, ``copy`` for the mirror) and the running total."""

    def __init__(self, src: FdLike, dst: FdLike, mirror: FdLike, count: Optional[int]) -> None:
        self.count = None if count is None else _nonneg(count, "count")
        self.src = _resolve(src, "src")[0]
        self.dst = _resolve(dst, "dst")[0]
        self.mirror = _resolve(mirror, "mirror")[0]
        self.total = 0
        self.spliceable = True
        size = default_pool().pipe_size
        self.main = Pipe()
        self.copy = Pipe()
        for p in (self.main, self.copy):
            try:
                p.size = size
            except OSError:
                pass  # over pipe-max-size or the user's page limit

    def want(self) -> int:
        """Bytes to take next (0: count reached)."""
        if self.count is None:
            return self.main.size
        return min(self.main.size, self.count - self.total)

    def fill(self, want: int) -> Optional[int]:
        """One splice (or read and write) from src into the empty main pipe:
        bytes taken, 0 at EOF, None when src has nothing now."""
        if self.spliceable:
            try:
                return splice(self.src, self.main.w, want, flags=SPLICE_F_NONBLOCK)
            except BlockingIOError:
                return None
            except OSError as exc:
                if exc.errno not in _FALLBACK_ERRNOS:
                    raise
                self.spliceable = False  # e.g. a /proc file: read it instead
        try:
            data = os.read(self.src, want)
        except BlockingIOError:
            return None
        os.write(self.main.w, data)  # the pipe is empty and holds `want` bytes
        return len(data)

    def duplicate(self, n: int) -> None:
        done = 0
        while done < n:
            done += tee(self.main.r, self.copy.w, n - done)

    def error(self, exc: OSError) -> TransferError:
        return transfer_error(exc.errno or errno.EIO, self.total, self.main.drain())

    def close(self) -> None:
        self.main.close()
        self.copy.close()


def tee_pipe(
    src: FdLike,
    dst: FdLike,
    mirror: FdLike,
    count: Optional[int] = None,
    *,
    timeout: Optional[float] = None,
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
    t = _Tee(src, dst, mirror, count)
    try:
        while True:
            want = t.want()
            n = t.fill(want) if want else 0
            if n is None:
                if not _poll_fd(t.src, select.POLLIN, timeout):
                    raise transfer_timeout(t.total, t.main.drain(), timeout or 0)
                continue
            if n == 0:
                return t.total
            t.duplicate(n)
            splice_pipe(t.copy.r, t.mirror, n, timeout=timeout)
            try:
                t.total += splice_pipe(t.main.r, t.dst, n, timeout=timeout)
            except TransferError as exc:  # part of the chunk reached dst
                t.total += exc.transferred
                raise
    except OSError as exc:
        raise t.error(exc) from exc
    finally:
        t.close()


# ------------------------------------------------------------------ proxy


def proxy(a: socket.socket, b: socket.socket, *, half_close: bool = True) -> Tuple[int, int]:
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
    results: List[Any] = [None, None]

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
