"""One kernel call per function: typed wrappers over zcio's C core.

Every function here makes exactly one system call (retried on EINTR, as PEP 475
asks), with no looping and no policy, and takes its arguments in the order of
the matching :mod:`os` function:

- an fd argument is an ``int`` or any object with ``fileno()``, resolved once
  per call;
- a count must be ``>= 0`` (``ValueError`` otherwise);
- an offset is ``None`` ("use and advance the current file position") or an
  int ``>= 0`` ("use this offset, leave the position alone");
- a kernel error raises :class:`OSError` built from the errno, so the matching
  subclass comes out (``BlockingIOError``, ``BrokenPipeError``, ...).
- an ``ssl.SSLSocket`` (or a file object over one) raises ``TypeError``:
  zcio never moves bytes around the TLS layer.

The GIL is released for the duration of every system call. Calls with plain
``int`` fds and no offsets take a short path whose cost is close to the
stdlib's ``os.splice`` / ``os.sendfile``.
"""
from __future__ import annotations

import errno as _errno
import functools
import io
import math
import operator
import os
import platform
import resource
import select
import socket
import sys
from typing import Any, List, NamedTuple, NoReturn, Optional, Protocol, Sequence, Tuple, TypedDict, Union

from ._binding import ffi, lib

__all__ = [
    "FdLike",
    "Completion",
    "sendfile",
    "splice",
    "tee",
    "vmsplice",
    "copy_file_range",
    "send_zerocopy",
    "read_completions",
    "parse_completions",
    "features",
    "Features",
    "SPLICE_F_MOVE",
    "SPLICE_F_NONBLOCK",
    "SPLICE_F_MORE",
    "SPLICE_F_GIFT",
    "MSG_ZEROCOPY",
    "SO_ZEROCOPY",
    "SO_EE_ORIGIN_ZEROCOPY",
    "SO_EE_CODE_ZEROCOPY_COPIED",
]

SPLICE_F_MOVE: int = lib.SPLICE_F_MOVE
SPLICE_F_NONBLOCK: int = lib.SPLICE_F_NONBLOCK
SPLICE_F_MORE: int = lib.SPLICE_F_MORE
SPLICE_F_GIFT: int = lib.SPLICE_F_GIFT
MSG_ZEROCOPY: int = lib.MSG_ZEROCOPY
SO_ZEROCOPY: int = lib.SO_ZEROCOPY
SO_EE_ORIGIN_ZEROCOPY: int = lib.SO_EE_ORIGIN_ZEROCOPY
SO_EE_CODE_ZEROCOPY_COPIED: int = lib.SO_EE_CODE_ZEROCOPY_COPIED


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


FdLike = Union[int, _HasFileno]
Buffer = Any  # any object exporting the buffer protocol (bytes, bytearray, memoryview, mmap, ...)


class Completion(NamedTuple):
    """A zero-copy completion: sends ``first``..``last`` (inclusive) are done.

    Send ids are the socket's 32-bit counter, so ``last < first`` means the
    range wrapped past ``2**32 - 1``. ``copied`` is True when the kernel fell
    back to copying the data (always so on loopback).
    """

    first: int
    last: int
    copied: bool


_ARG_ERRORS = {
    lib.ZCIO_EARG_COUNT: "count must be >= 0",
    lib.ZCIO_EARG_FLAGS: "flags must be >= 0",
    lib.ZCIO_EARG_OFFSET: "offsets must be None or >= 0",
}
_NEG_EINTR = -_errno.EINTR
_c_sendfile = lib.zcio_sendfile
_c_sendfile_at = lib.zcio_sendfile_at
_c_splice = lib.zcio_splice
_c_splice_at = lib.zcio_splice_at
_c_tee = lib.zcio_tee
_c_vmsplice = lib.zcio_vmsplice
_c_copy_file_range = lib.zcio_copy_file_range
_c_copy_file_range_at = lib.zcio_copy_file_range_at
_c_send = lib.zcio_send


def _refuse_tls(obj: object) -> None:
    """Raise TypeError if ``obj`` is an ``ssl.SSLSocket`` or a file object
    over one (``makefile()``'s wrappers): writing to its fd would put plain
    bytes into the TLS stream, and reading it would take ciphertext.

    The check is made before anything touches the fd, so the connection stays
    as it was. A bare int fd cannot be recognized (nor can the plain socket of
    a TLS *transport*); zcio.aio's transport-level functions check the
    transport instead. Nothing is imported: with no ``ssl`` module loaded, no
    SSLSocket can exist.
    """
    ssl = sys.modules.get("ssl")
    if ssl is None:
        return
    # Unwrap the stdlib's layers: TextIOWrapper -> Buffered* -> SocketIO -> socket.
    for _ in range(4):
        if isinstance(obj, ssl.SSLSocket):
            raise TypeError(
                "zcio does not send or splice through an ssl.SSLSocket: the kernel would "
                "move plain bytes around the TLS layer; use the socket's own send/recv"
            )
        if isinstance(obj, io.TextIOWrapper):
            obj = obj.buffer
        elif isinstance(obj, (io.BufferedReader, io.BufferedWriter, io.BufferedRandom)):
            obj = obj.raw
        elif isinstance(obj, socket.SocketIO):
            obj = getattr(obj, "_sock", None)  # the stdlib keeps no public name for it
        else:
            return


def _fd(obj: FdLike) -> int:
    """Resolve an fd-like object to an int fd (once per call).

    Refuses TLS sockets (see :func:`_refuse_tls`).
    """
    if isinstance(obj, int):
        return int(obj)
    _refuse_tls(obj)
    fileno = getattr(obj, "fileno", None)
    if fileno is None:
        raise TypeError(
            f"expected an int file descriptor or an object with fileno(), "
            f"got {type(obj).__name__}"
        )
    fd = fileno()
    if not isinstance(fd, int):
        raise TypeError(f"fileno() returned {type(fd).__name__}, not int")
    return int(fd)


def _int(value: int, name: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, not {type(value).__name__}") from None


def _nonneg(value: int, name: str) -> int:
    """An int >= 0 (TypeError / ValueError otherwise)."""
    value = _int(value, name)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _offset(offset: Optional[int], name: str) -> int:
    """None -> -1 (the C core's NULL); otherwise an int >= 0."""
    if offset is None:
        return -1
    offset = _int(offset, name)
    if offset < 0:
        raise ValueError(f"{name} must be None or >= 0, got {offset}")
    return offset


def _poll_fd(fd: int, events: int, timeout: Optional[float]) -> int:
    """poll() one fd; returns its revents (0 on timeout). The wait is rounded
    up to whole milliseconds, so it never ends before ``timeout``. Signals
    propagate (PEP 475)."""
    p = select.poll()
    p.register(fd, events)
    ms = -1 if timeout is None else max(0, math.ceil(timeout * 1000))
    ready = p.poll(ms)
    return ready[0][1] if ready else 0


def _raise(err: int) -> NoReturn:
    """Raise the OSError subclass that matches a (positive) errno."""
    raise OSError(err, os.strerror(err))


def _check(n: int, fn: Any, args: Tuple[Any, ...]) -> int:
    """Finish a C call that returned ``n``: retry on EINTR, raise on error.

    Between retries Python runs pending signal handlers (PEP 475); an
    exception raised by a handler propagates from here.
    """
    while n < 0:
        if n != _NEG_EINTR:
            message = _ARG_ERRORS.get(n)
            if message is not None:
                raise ValueError(message)
            _raise(-n)
        n = fn(*args)
    return int(n)


def _call(fn: Any, *args: Any) -> int:
    """Call a C shim with already-converted arguments and finish it."""
    try:
        n = fn(*args)
    except TypeError as exc:
        raise TypeError(f"counts and flags must be ints: {exc}") from None
    return _check(n, fn, args)


# The public wrappers below share one shape. The short path hands the caller's
# arguments straight to the C shim: cffi accepts only real ints and raises
# TypeError before any system call for anything else (an object with fileno(),
# say), which sends the call down the general path. Both paths end in _check.


def sendfile(out_fd: FdLike, in_fd: FdLike, offset: Optional[int], count: int) -> int:
    """Copy up to ``count`` bytes from file ``in_fd`` to ``out_fd`` in the kernel.

    Args:
        out_fd: destination (any fd since Linux 2.6.33; not O_APPEND).
        in_fd: source; must support mmap (a regular file).
        offset: None to read from and advance ``in_fd``'s position, or the
            offset to read from (the position is left alone).
        count: the most bytes to copy (the kernel caps one call at 0x7ffff000).

    Returns:
        The number of bytes copied; 0 at end of file.

    Raises:
        OSError: from the kernel's errno (EINVAL for a non-mmap-able source or an
            O_APPEND destination, EAGAIN as BlockingIOError, ...).
        ValueError: a negative count or offset.
        TypeError: an fd that is neither an int nor has fileno(); a non-int count.
    """
    if offset is None:
        try:
            n = _c_sendfile(out_fd, in_fd, count)
        except TypeError:
            return _call(_c_sendfile, _fd(out_fd), _fd(in_fd), count)
        if n >= 0:
            return n  # type: ignore[no-any-return]
        return _check(n, _c_sendfile, (out_fd, in_fd, count))
    try:
        n = _c_sendfile_at(out_fd, in_fd, offset, count)
    except TypeError:
        return _call(_c_sendfile_at, _fd(out_fd), _fd(in_fd), _offset(offset, "offset"), count)
    if n >= 0:
        return n  # type: ignore[no-any-return]
    return _check(n, _c_sendfile_at, (out_fd, in_fd, offset, count))


def splice(
    src: FdLike,
    dst: FdLike,
    count: int,
    offset_src: Optional[int] = None,
    offset_dst: Optional[int] = None,
    flags: int = 0,
) -> int:
    """Move up to ``count`` bytes between two fds, one of which is a pipe.

    Args:
        src, dst: the fds; at least one must be a pipe. A pipe's offset must
            be None (ESPIPE otherwise).
        count: the most bytes to move.
        offset_src, offset_dst: None to use and advance the file position, or
            an offset to use (the position is left alone).
        flags: ``SPLICE_F_*`` flags.

    Returns:
        The number of bytes moved; 0 at end of input.

    Raises:
        OSError: from the kernel's errno (EINVAL when neither end is a pipe or
            a file does not support splice, ESPIPE, BlockingIOError, ...).
        ValueError: a negative count, offset or flags.
        TypeError: an fd that is neither an int nor has fileno(); a non-int
            count or flags.
    """
    if offset_src is None and offset_dst is None:
        try:
            n = _c_splice(src, dst, count, flags)
        except TypeError:
            return _call(_c_splice, _fd(src), _fd(dst), count, flags)
        if n >= 0:
            return n  # type: ignore[no-any-return]
        return _check(n, _c_splice, (src, dst, count, flags))
    return _call(
        _c_splice_at,
        _fd(src),
        _fd(dst),
        count,
        _offset(offset_src, "offset_src"),
        _offset(offset_dst, "offset_dst"),
        flags,
    )


def tee(src: FdLike, dst: FdLike, count: int, flags: int = 0) -> int:
    """Duplicate up to ``count`` bytes from pipe ``src`` into pipe ``dst``.

    The bytes stay in ``src`` (nothing is consumed).

    Returns:
        The number of bytes duplicated; 0 when ``src`` is empty and has no
        writers.

    Raises:
        OSError: EINVAL when either end is not a pipe or both are the same
            pipe; BlockingIOError with SPLICE_F_NONBLOCK; ...
        ValueError: a negative count or flags.
        TypeError: as :func:`splice`.
    """
    try:
        n = _c_tee(src, dst, count, flags)
    except TypeError:
        return _call(_c_tee, _fd(src), _fd(dst), count, flags)
    if n >= 0:
        return n  # type: ignore[no-any-return]
    return _check(n, _c_tee, (src, dst, count, flags))


def vmsplice(pipe_w: FdLike, buffers: Sequence[Buffer], flags: int = 0) -> int:
    """Map the pages of ``buffers`` into the write end of a pipe.

    Low level: the pipe then refers to the caller's memory, so the caller must
    keep it unchanged until the pipe's reader has consumed those bytes (and, if
    the reader splices them onward to a socket, until the socket is done with
    them). ``Pipe.vmsplice`` tracks that for you.

    Args:
        pipe_w: the write end of a pipe.
        buffers: a sequence of bytes-like objects (not a single one).
        flags: ``SPLICE_F_*`` flags (SPLICE_F_NONBLOCK, SPLICE_F_GIFT).

    Returns:
        The number of bytes mapped (may be fewer than offered).

    Raises:
        TypeError: ``buffers`` is itself a bytes-like object, or holds an
            object without the buffer protocol.
        OSError: from the kernel's errno (EBADF when not a pipe's write end,
            EINVAL for more than IOV_MAX buffers, BlockingIOError, ...).
        ValueError: negative flags.
    """
    if isinstance(buffers, (bytes, bytearray, memoryview, str)):
        raise TypeError("buffers must be a sequence of bytes-like objects, not a single one")
    fd = _fd(pipe_w)
    pins: List[Any] = []
    try:
        for b in buffers:
            pins.append(ffi.from_buffer(b))
        iov = ffi.new("struct iovec[]", len(pins))
        for i, pin in enumerate(pins):
            iov[i].iov_base = pin
            iov[i].iov_len = len(pin)
        return _call(_c_vmsplice, fd, iov, len(pins), flags)
    finally:
        for pin in pins:
            ffi.release(pin)


def copy_file_range(
    src: FdLike,
    dst: FdLike,
    count: int,
    offset_src: Optional[int] = None,
    offset_dst: Optional[int] = None,
) -> int:
    """Copy up to ``count`` bytes between two regular files inside the kernel.

    The filesystem may share extents (reflink) instead of copying.

    Returns:
        The number of bytes copied; 0 at end of file.

    Raises:
        OSError: EXDEV across filesystems (before 5.3 and since 5.19), EINVAL
            for non-regular files, EBADF for an O_APPEND destination, ...
        ValueError: a negative count or offset.
        TypeError: as :func:`splice`.
    """
    if offset_src is None and offset_dst is None:
        try:
            n = _c_copy_file_range(src, dst, count)
        except TypeError:
            return _call(_c_copy_file_range, _fd(src), _fd(dst), count)
        if n >= 0:
            return n  # type: ignore[no-any-return]
        return _check(n, _c_copy_file_range, (src, dst, count))
    return _call(
        _c_copy_file_range_at,
        _fd(src),
        _fd(dst),
        count,
        _offset(offset_src, "offset_src"),
        _offset(offset_dst, "offset_dst"),
    )


def send_zerocopy(sock: FdLike, data: Buffer, flags: int = 0) -> int:
    """One ``send(sock, data, MSG_ZEROCOPY | flags)``.

    Low level: ``SO_ZEROCOPY`` must already be enabled on the socket (without
    it the kernel silently copies), and ``data`` must stay unchanged until a
    completion covers this send's id; this call does not keep ``data`` pinned
    after it returns. :class:`zcio.ZeroCopySender` does both for you.

    Returns:
        The number of bytes accepted (a stream socket may take fewer).

    Raises:
        OSError: from the kernel's errno; ENOBUFS when the socket's optmem or
            the locked-memory limit is exhausted; BlockingIOError.
        ValueError: negative flags.
    """
    fd = _fd(sock)
    pin = ffi.from_buffer(data)
    try:
        return _call(_c_send, fd, pin, len(pin), flags)
    finally:
        ffi.release(pin)


_BATCH = 64


def _completions(out: Any, n: int) -> List[Completion]:
    return [Completion(int(c.first), int(c.last), bool(c.copied)) for c in ffi.unpack(out, n)]


def read_completions(sock: FdLike) -> List[Completion]:
    """Drain the zero-copy completions waiting on ``sock``'s error queue.

    Never blocks. Messages on the error queue that are not zero-copy
    notifications are consumed and skipped.

    Returns:
        The completions in the order the kernel queued them (empty when none
        wait).

    Raises:
        OSError: from recvmsg's errno, when nothing could be drained.
    """
    fd = _fd(sock)
    out = ffi.new("zcio_completion[]", _BATCH)
    result: List[Completion] = []
    while True:
        n = lib.zcio_read_completions(fd, out, _BATCH)
        if n < 0:
            if result:
                return result  # the error comes back on the next call
            _raise(-n)
        result.extend(_completions(out, n))
        if n < _BATCH:
            return result


def parse_completions(control: Buffer) -> List[Completion]:
    """Parse the ancillary data of one ``recvmsg(MSG_ERRQUEUE)``.

    For callers that read the error queue themselves (for example
    ``sock.recvmsg(0, 256, socket.MSG_ERRQUEUE)`` and a join of the returned
    cmsg tuples is *not* the raw buffer; pass the raw control bytes). Any
    content is accepted: truncated or malformed messages end the parse, and
    messages other than zero-copy notifications are skipped.
    """
    pin = ffi.from_buffer(control)
    try:
        cap = max(1, len(pin) // 16)
        out = ffi.new("zcio_completion[]", cap)
        n = lib.zcio_parse_cmsgs(ffi.cast("const unsigned char *", pin), len(pin), out, cap)
        return _completions(out, n)
    finally:
        ffi.release(pin)


# ---------------------------------------------------------------- features


def _read_int(path: str) -> Optional[int]:
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _syscall_available(name: str) -> bool:
    err = -lib.zcio_probe_syscall(name.encode("ascii"))
    return err not in (_errno.ENOSYS, _errno.EPERM)


def _so_zerocopy(kind: int) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            with socket.socket(family, kind) as s:
                s.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
                return True
        except OSError:
            continue
    return False


def _limit(value: int) -> Optional[int]:
    return None if value == resource.RLIM_INFINITY else value


def _default_pipe_size() -> Optional[int]:
    try:
        r, w = os.pipe()
    except OSError:
        return None
    try:
        import fcntl

        return fcntl.fcntl(w, lib.F_GETPIPE_SZ)
    except OSError:
        return None
    finally:
        os.close(r)
        os.close(w)


class Features(TypedDict):
    """What :func:`features` reports (see there for each key)."""

    kernel: str
    sendfile: bool
    splice: bool
    tee: bool
    vmsplice: bool
    copy_file_range: bool
    so_zerocopy_tcp: bool
    so_zerocopy_udp: bool
    pipe_default_size: Optional[int]
    pipe_max_size: Optional[int]
    pipe_user_pages_soft: Optional[int]
    pipe_user_pages_hard: Optional[int]
    optmem_max: Optional[int]
    rlimit_memlock: Tuple[Optional[int], Optional[int]]
    io_uring: bool


@functools.cache
def _features() -> Features:
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    io_uring_disabled = _read_int("/proc/sys/kernel/io_uring_disabled")
    return {
        "kernel": platform.release(),
        "sendfile": _syscall_available("sendfile"),
        "splice": _syscall_available("splice"),
        "tee": _syscall_available("tee"),
        "vmsplice": _syscall_available("vmsplice"),
        "copy_file_range": _syscall_available("copy_file_range"),
        "so_zerocopy_tcp": _so_zerocopy(socket.SOCK_STREAM),
        "so_zerocopy_udp": _so_zerocopy(socket.SOCK_DGRAM),
        "pipe_default_size": _default_pipe_size(),
        "pipe_max_size": _read_int("/proc/sys/fs/pipe-max-size"),
        "pipe_user_pages_soft": _read_int("/proc/sys/fs/pipe-user-pages-soft"),
        "pipe_user_pages_hard": _read_int("/proc/sys/fs/pipe-user-pages-hard"),
        "optmem_max": _read_int("/proc/sys/net/core/optmem_max"),
        "rlimit_memlock": (_limit(soft), _limit(hard)),
        "io_uring": io_uring_disabled != 2 and _syscall_available("io_uring_setup"),
    }


def features() -> Features:
    """What this kernel and process can do, probed once and cached.

    Keys: ``kernel`` (release string); ``sendfile``, ``splice``, ``tee``,
    ``vmsplice``, ``copy_file_range`` (the syscall exists and is not refused
    by a filter); ``so_zerocopy_tcp``, ``so_zerocopy_udp`` (SO_ZEROCOPY is
    accepted); ``pipe_default_size``, ``pipe_max_size``,
    ``pipe_user_pages_soft``, ``pipe_user_pages_hard`` (bytes and pages; None
    where unreadable); ``optmem_max`` (bytes of ancillary memory per socket,
    which unreaped zero-copy notifications consume); ``rlimit_memlock``
    (soft, hard; None means unlimited); ``io_uring`` (io_uring_setup is
    available and not disabled).

    Returns:
        A new dict each call (the cached probe is not exposed to mutation).
    """
    return Features(**_features())
