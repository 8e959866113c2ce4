"""One transfer's plan, and its set-up and tear-down, exception-safe.

Shared by the blocking drivers in :mod:`zcio.streams` and the asyncio ones in
:mod:`zcio.aio`, which differ only in how they wait.

- :class:`Plan` is what a transfer needs to know about its two fds -- their
  kinds, the paths to try, whether the destination is O_APPEND, whether holes
  can be kept -- found once (an fstat each, an F_GETFL) and reusable for later
  transfers between the same two fds.
- :class:`Xfer` is one transfer: the C core's ``zcio_xfer``, the pooled pipe or
  copy buffer, and every change made to the caller's objects for the call.
  Its set-up records each change as it makes it (trio's ``_FdHolder`` idea:
  the record exists before the step can fail), and :meth:`Xfer.close` undoes
  exactly what is recorded. A set-up that fails half-way calls it too, so an
  exception at any point leaves the fds' blocking modes and positions as
  found and no pipe checked out; bytes already taken from a buffered reader
  are reported on the exception (``transferred``, ``pending``).

Ownership: an Xfer owns its pipe (checked out of the pool) and its copy
buffer; it borrows ``src`` and ``dst``. Dropped unclosed, it gives the pipe
back with a ResourceWarning and leaves the borrowed fds alone (their numbers
may belong to someone else by then).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import socket
import stat
import warnings
from collections.abc import Iterator
from typing import Any, Callable

from . import _stats
from ._binding import ffi, lib
from ._errors import REFUSED_ERRNOS, TransferError, transfer_error
from .lowlevel import FdLike, _fd, _nonneg
from .pipes import Pipe, PipePool, default_pool

Progress = Callable[[int], Any]

# Method ids of the C core, and the names stats() reports them under.
SENDFILE: int = lib.ZCIO_M_SENDFILE
COPY_FILE_RANGE: int = lib.ZCIO_M_COPY_FILE_RANGE
SPLICE: int = lib.ZCIO_M_SPLICE
PIPE: int = lib.ZCIO_M_PIPE
RW: int = lib.ZCIO_M_RW
PATH_NAMES = {
    SENDFILE: "sendfile",
    COPY_FILE_RANGE: "copy_file_range",
    SPLICE: "splice",
    PIPE: "splice_via_pipe",
    RW: "read_write",
}
# Most bytes per system call, by method (the pipe's is its size).
_CHUNK = {
    SENDFILE: 8 << 20,
    COPY_FILE_RANGE: 64 << 20,
    SPLICE: 16 << 20,
    RW: 256 << 10,
}

# Errors that mean "this path is not for these fds" when nothing has moved.
FALLBACK_ERRNOS = REFUSED_ERRNOS
# Out of fds while taking a pipe: as good as an exhausted pool.
_NO_FDS = frozenset({errno.EMFILE, errno.ENFILE})

KINDS = ("file", "pipe", "socket", "other")
# Kinds whose waits can last forever and can be polled: the blocking driver
# makes them non-blocking for a call, so every wait is a bounded poll().
_WAITABLE = frozenset({"pipe", "socket"})


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode) or stat.S_ISBLK(mode):
        return "file"
    if stat.S_ISFIFO(mode):
        return "pipe"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "other"


def fd_kind(fd: int) -> str:
    """What ``fd`` is: "file", "pipe", "socket" or "other" (one fstat)."""
    return _kind(os.fstat(fd).st_mode)


def _paths(src: str, dst: str) -> tuple[int, ...]:
    """The paths to try, cheapest first (SPEC section 2's table)."""
    if src == "pipe" or dst == "pipe":
        return (SPLICE, RW)
    if src == "file" and dst == "file":
        return (COPY_FILE_RANGE, SENDFILE, PIPE, RW)
    if src in ("file", "other"):
        return (SENDFILE, PIPE, RW)
    return (PIPE, RW)  # a socket source


class Plan:
    """How bytes go from one fd to another: found once, reusable.

    :meth:`probe` looks at the two fds (an fstat each; an F_GETFL of the
    destination where a kernel path would write to it). A plan can then be
    passed to any number of transfers between the same two fds, which skip
    those calls: a file served in slices over one connection, say. It is a
    snapshot: make a new one if either fd is reopened or changes its flags
    (a stale plan costs a fallback, not a byte).

    Attributes:
        src_fd, dst_fd: the fds it was made for.
        src_kind, dst_kind: "file" (regular file or block device), "pipe",
            "socket" or "other".
        paths: the C core's methods to try, cheapest first.
        append: dst is O_APPEND, so only the copy path can write to it.
        sparse: both are regular files: the source's holes can be kept.
    """

    __slots__ = ("append", "dst_fd", "dst_kind", "paths", "sparse", "src_fd", "src_kind")

    def __init__(
        self,
        src_fd: int,
        dst_fd: int,
        src_kind: str,
        dst_kind: str,
        *,
        append: bool = False,
        sparse: bool = False,
        paths: tuple[int, ...] | None = None,
    ) -> None:
        if src_kind not in KINDS or dst_kind not in KINDS:
            raise ValueError(f"fd kinds are one of {KINDS}, got {src_kind!r} and {dst_kind!r}")
        self.src_fd = src_fd
        self.dst_fd = dst_fd
        self.src_kind = src_kind
        self.dst_kind = dst_kind
        self.append = append
        self.sparse = sparse and not append
        if paths is None:
            paths = (RW,) if append else _paths(src_kind, dst_kind)
        if not paths or paths[-1] != RW:
            raise ValueError("a plan's paths end with the copy path")
        self.paths = paths

    @classmethod
    def probe(cls, src: FdLike, dst: FdLike) -> Plan:
        """The plan for moving bytes from ``src`` to ``dst`` (fds or objects
        with ``fileno()``).

        Raises:
            OSError: from fstat/fcntl (EBADF for a closed fd).
        """
        src_fd, dst_fd = _fd(src), _fd(dst)
        src_mode = os.fstat(src_fd).st_mode
        dst_mode = os.fstat(dst_fd).st_mode
        src_kind, dst_kind = _kind(src_mode), _kind(dst_mode)
        # No kernel path writes to an O_APPEND file (EINVAL, or EBADF from
        # copy_file_range); a splice into a pipe does not care. A socket with
        # the flag is left to the fallbacks.
        append = dst_kind in ("file", "other") and src_kind != "pipe" and bool(
            fcntl.fcntl(dst_fd, fcntl.F_GETFL) & os.O_APPEND
        )
        sparse = stat.S_ISREG(src_mode) and stat.S_ISREG(dst_mode)
        return cls(src_fd, dst_fd, src_kind, dst_kind, append=append, sparse=sparse)

    def __repr__(self) -> str:
        names = "/".join(PATH_NAMES[p] for p in self.paths)
        return (
            f"<zcio Plan {self.src_kind} {self.src_fd} -> {self.dst_kind} {self.dst_fd}: {names}"
            f"{' append' if self.append else ''}{' sparse' if self.sparse else ''}>"
        )


# ------------------------------------------------------------ the two ends


def resolve(obj: FdLike, name: str) -> tuple[int, Any]:
    """``(fd, the object or None for an int)``; text-mode files refused."""
    if type(obj) is int:
        return obj, None
    if isinstance(obj, io.TextIOBase):
        raise TypeError(f"{name} is a text-mode file; open it in binary mode")
    return _fd(obj), (None if isinstance(obj, int) else obj)


def _is_buffered(obj: Any) -> bool:
    return isinstance(obj, (io.BufferedReader, io.BufferedWriter, io.BufferedRandom, io.BufferedRWPair))


def _take_buffered(reader: Any, fd: int, limit: int | None) -> bytes:
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


def require_nonblocking(obj: Any, fd: int, kind: str, name: str) -> None:
    """For an event loop: a socket or pipe must be non-blocking, or it would
    stall the loop; files and devices are used as they are (as
    ``loop.sock_sendfile`` does). A socket object whose timeout is 0 is taken
    at its word, as asyncio does, without asking the kernel.

    Raises:
        ValueError: a blocking socket or pipe.
    """
    if kind not in ("socket", "pipe"):
        return
    if isinstance(obj, socket.socket) and obj.gettimeout() == 0.0:
        return
    if os.get_blocking(fd):
        raise ValueError(f"{name} must be non-blocking (call setblocking(False) or os.set_blocking)")


class Borrowed:
    """What a transfer changed on the caller's objects, and how to put it
    back. Each record is made before the change it undoes (trio's
    ``_FdHolder`` idea), so :meth:`give_back` undoes exactly what was done.

    Attributes:
        blocking: fds switched to non-blocking, to switch back.
        reader: a seekable buffered reader, ``seek()``-ed to where src stopped.
        src_home: src's position to put back (-1: where the transfer stopped),
            when the transfer walked src by explicit offsets.
        writer: a seekable buffered writer, resynced to its fd's position.
    """

    __slots__ = ("blocking", "reader", "src_home", "writer")

    def __init__(self) -> None:
        self.blocking: list[int] = []
        self.reader: Any = None
        self.src_home: int | None = None
        self.writer: Any = None

    def make_nonblocking(self, fd: int) -> None:
        """Switch a blocking ``fd`` to non-blocking, recorded first
        (restoring "blocking" to an fd that was blocking is harmless)."""
        if fd not in self.blocking and os.get_blocking(fd):
            self.blocking.append(fd)
            os.set_blocking(fd, False)

    def give_back(self, src: int, dst: int, src_off: int) -> None:
        """Undo every record, each whatever the others do (the first error
        is raised after all of them ran). Nested rather than an ExitStack:
        this runs once per call, and a served file's small slices are many
        calls."""
        try:
            if self.reader is not None:
                self.reader.seek(src_off)
            elif self.src_home is not None:
                os.lseek(src, src_off if self.src_home < 0 else self.src_home, os.SEEK_SET)
        finally:
            try:
                if self.blocking:
                    self._restore_blocking()
            finally:
                if self.writer is not None:
                    self.writer.seek(os.lseek(dst, 0, os.SEEK_CUR))

    def _restore_blocking(self) -> None:
        failed: BaseException | None = None
        for fd in self.blocking:
            try:
                os.set_blocking(fd, True)
            except OSError as exc:  # the others are still put back
                failed = failed or exc
        if failed is not None:
            raise failed


class Xfer:
    """One transfer, from set-up to tear-down (see the module's docstring).

    Args:
        src, dst, count, offset, pool: as for :func:`zcio.splice_pipe`.
        nonblocking: which blocking fds to switch to non-blocking for the
            call (and back in :meth:`close`): ``"streams"`` sockets and pipes,
            whose waits the C loop then bounds by polling, so a signal is
            never left waiting behind a system call; ``"all"`` every fd, for a
            timeout; ``"none"`` none.
        loop: for an event loop: sockets and pipes must be non-blocking
            already (ValueError otherwise, before anything is touched).
        plan: a :class:`Plan` made for these two fds; probed when None.

    Raises:
        ValueError, TypeError: bad arguments, found before anything changed.
        OSError: from the kernel while setting up; everything set up so far
            is undone, and bytes already taken from a buffered reader are in
            the exception's ``pending`` (``transferred`` is 0).
    """

    def __init__(
        self,
        src: FdLike,
        dst: FdLike,
        count: int | None,
        offset: int | None,
        pool: PipePool | None,
        *,
        nonblocking: str = "none",
        loop: bool = False,
        plan: Plan | None = None,
    ) -> None:
        # Everything close() looks at exists before any step can fail.
        self._closed = False
        self.x: Any = ffi.new("zcio_xfer *")
        self.x.pipe_r = self.x.pipe_w = -1
        self.pool: PipePool | None = pool
        self.pipe: Pipe | None = None  # checked out of the pool: ours
        self.buf: Any = None  # the copy buffer: ours
        self.method = 0
        self.head = b""  # an unseekable buffered reader's bytes, delivered first
        self.prefix = 0  # bytes of head delivered
        self.borrowed = Borrowed()  # the caller's state changed for the call
        self.plan: Plan | None = None
        try:
            self._set_up(src, dst, count, offset, nonblocking, loop, plan)
        except BaseException as exc:
            if self.head:  # the only bytes set-up takes: say where they are
                exc.transferred = 0  # type: ignore[attr-defined]
                exc.pending = self.head  # type: ignore[attr-defined]
            self.close()
            raise

    def _set_up(
        self,
        src: FdLike,
        dst: FdLike,
        count: int | None,
        offset: int | None,
        nonblocking: str,
        loop: bool,
        plan: Plan | None,
    ) -> None:
        # 1. Arguments and the plan: nothing touched yet.
        if count is not None:
            count = _nonneg(count, "count")
        if offset is not None:
            offset = _nonneg(offset, "offset")
        src_fd, src_obj = resolve(src, "src")
        dst_fd, dst_obj = resolve(dst, "dst")
        if plan is None:
            plan = Plan.probe(src_fd, dst_fd)
        elif (plan.src_fd, plan.dst_fd) != (src_fd, dst_fd):
            raise ValueError(f"{plan!r} was made for other fds than {src_fd} -> {dst_fd}")
        if offset is not None and plan.src_kind in ("pipe", "socket"):
            raise OSError(errno.ESPIPE, f"offset given for a {plan.src_kind} source: {os.strerror(errno.ESPIPE)}")
        if loop:
            require_nonblocking(src_obj, src_fd, plan.src_kind, "src")
            require_nonblocking(dst_obj, dst_fd, plan.dst_kind, "dst")
        self.plan = plan
        if self.pool is None:
            self.pool = default_pool()
        x = self.x
        x.src, x.dst = src_fd, dst_fd

        # 2. A buffered writer's bytes go first; its position is resynced at the end.
        if dst_obj is not None and hasattr(dst_obj, "flush") and not isinstance(dst_obj, socket.socket):
            dst_obj.flush()
            if _is_buffered(dst_obj) and dst_obj.seekable():
                self.borrowed.writer = dst_obj

        # 3. Blocking fds made non-blocking for the call.
        if nonblocking != "none":
            for fd, kind in ((src_fd, plan.src_kind), (dst_fd, plan.dst_kind)):
                if nonblocking == "all" or kind in _WAITABLE:
                    self.borrowed.make_nonblocking(fd)

        # 4. The first path: it may take a pipe from the pool.
        if plan.append:
            _stats.count_fallback("dst:O_APPEND")
        self._methods = iter(plan.paths)
        if not self._next_method():  # pragma: no cover - RW always works
            raise AssertionError("no usable path")

        # 5. Where the source starts (each record made once src_off says
        #    where to put the source back).
        x.src_off = -1 if offset is None else offset
        x.remaining = -1 if count is None else count
        if offset is None and src_obj is not None and _is_buffered(src_obj) and src_obj.seekable():
            x.src_off = offset = src_obj.tell()  # not the raw fd's position
            self.borrowed.reader = src_obj
        if plan.sparse:
            self._set_up_sparse()

        # 6. Last, as the one step that consumes: an unseekable buffered
        #    reader's bytes (delivered first; reported if anything fails).
        if offset is None and src_obj is not None and _is_buffered(src_obj) and not src_obj.seekable():
            self.head = _take_buffered(src_obj, src_fd, count)
            if count is not None:
                x.remaining = count - len(self.head)

    def _set_up_sparse(self) -> None:
        """Keep the source's holes: the C core walks its data extents at
        explicit offsets (SEEK_DATA moves the file position, so it is put
        back at the end) and skips a hole where dst has no older bytes."""
        x = self.x
        st = os.fstat(x.dst)
        if not stat.S_ISREG(st.st_mode):  # a stale plan
            return
        if self.borrowed.reader is None:
            here = os.lseek(x.src, 0, os.SEEK_CUR)
            if x.src_off < 0:
                x.src_off = here
                self.borrowed.src_home = -1  # put back where the transfer stops
            else:
                self.borrowed.src_home = here  # an offset leaves the position alone
        x.dst_pos = os.lseek(x.dst, 0, os.SEEK_CUR)
        x.dst_keep = st.st_size
        x.data_end = -1  # look the first extent up
        x.sparse = 1

    # ------------------------------------------------------------ running

    @property
    def transferred(self) -> int:
        """Bytes that reached dst: the buffered head's, then the C core's."""
        return self.prefix + int(self.x.transferred)

    def _next_method(self) -> bool:
        return any(self._use(method) for method in self._methods)

    def _use(self, method: int) -> bool:
        """Switch to ``method``; False when it cannot be used (no pipe free)."""
        x = self.x
        assert self.pool is not None
        if method == PIPE:
            if self.pipe is None:
                try:
                    self.pipe = self.pool.acquire()
                except OSError as exc:
                    if exc.errno not in _NO_FDS:
                        raise
                    _stats.count_fallback(f"splice_via_pipe:{errno.errorcode[exc.errno]}")
                    return False
                if self.pipe is None:
                    _stats.count_fallback("splice_via_pipe:pool_exhausted")
                    return False
            x.pipe_r, x.pipe_w = self.pipe.r, self.pipe.w
            x.chunk = self.pool.pipe_size
        elif method == RW:
            # The buffer holds a chunk, or all that the pipe took and the
            # destination refused, whichever is more: the carry-over is
            # sized by what is in flight, never by the buffer.
            x.chunk = _CHUNK[RW]
            size = max(_CHUNK[RW], int(x.in_flight))
            if self.buf is None or len(self.buf) < size:
                self.buf = ffi.new("unsigned char[]", size)
            x.buf, x.buf_size, x.buf_pos = self.buf, size, 0
            if self.method == PIPE:
                carried = self._take_in_flight()
                ffi.memmove(self.buf, carried, len(carried))
                x.in_flight = len(carried)
                self._release_pipe()  # empty now; let others have it
        else:
            x.chunk = _CHUNK[method]
        x.method = self.method = method
        return True

    def fall_back(self, err: int) -> bool:
        """After the kernel refused the current path with ``err``: move to the
        next one if that loses nothing, and say whether it did."""
        x = self.x
        method = self.method
        refused = err in FALLBACK_ERRNOS or (method == COPY_FILE_RANGE and err == errno.EBADF)
        # Only while no data reached dst (holes skipped do not count: no path
        # moved them); a chunk in our pipe can be carried.
        if not refused or x.transferred - x.holes or (x.in_flight and method != PIPE):
            return False
        if not self._next_method():
            return False
        _stats.count_fallback(f"{PATH_NAMES[method]}:{errno.errorcode.get(err, err)}")
        return True

    def _take_in_flight(self) -> bytes:
        """Take back the bytes in our pipe or buffer that dst did not get."""
        x = self.x
        n = int(x.in_flight)
        if n == 0:
            return b""
        if self.method == PIPE and self.pipe is not None:
            data = self.pipe.drain(n)
        else:
            start = int(x.buf_pos)
            data = bytes(ffi.buffer(self.buf)[start : start + n])
        x.in_flight -= len(data)
        return data

    def pending(self) -> bytes:
        """Take the bytes taken from src and not delivered (head included)."""
        return self.head[self.prefix :] + self._take_in_flight()

    def error(self, err: int) -> TransferError:
        """The TransferError for ``err``, with this transfer's accounting."""
        return transfer_error(err, self.transferred, self.pending())

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

    # ------------------------------------------------------------ tear-down

    def _release_pipe(self) -> None:
        pipe, self.pipe = self.pipe, None
        if pipe is not None:
            x = self.x
            x.pipe_r = x.pipe_w = -1
            assert self.pool is not None
            self.pool.release(pipe)  # destroyed if it still holds bytes

    def close(self) -> None:
        """Undo what set-up recorded, every step whatever the others do: the
        pipe back to its pool, src's position, the fds' blocking modes, a
        buffered writer's position (the first error is raised after all of
        them ran). Counts the bytes per path. Idempotent."""
        if self._closed:
            return
        self._closed = True
        x = self.x
        if x.calls or x.transferred:
            holes = int(x.holes)
            _stats.count_path(PATH_NAMES.get(self.method, "?"), int(x.transferred) - holes, int(x.calls))
            if holes:
                _stats.count_path("holes", holes, 0)
        try:
            if self.pipe is not None:
                self._release_pipe()
        finally:
            self.borrowed.give_back(x.src, x.dst, int(x.src_off))

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if getattr(self, "_closed", True):
            return
        self._closed = True
        _warn(f"unclosed zcio transfer {self!r}", ResourceWarning, source=self)
        self._release_pipe()

    def __repr__(self) -> str:
        x = self.x
        return (
            f"<zcio Xfer {x.src} -> {x.dst} {PATH_NAMES.get(self.method, '-')} "
            f"transferred={self.transferred}{' closed' if self._closed else ''}>"
        )
