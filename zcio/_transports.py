"""zcio under asyncio transports: the byte mover beneath other servers.

Most Python servers own their sockets through asyncio transports (the stdlib
loop's or uvloop's) and hand requests to aiohttp or ASGI apps. This module
plugs zcio in there through public APIs only:

- :func:`transport_sendfile` is ``loop.sendfile``'s contract for any stream
  transport of either loop, with the body sent by ``sendfile(2)``;
- :func:`loop_factory` makes a loop whose ``sendfile()`` is that function, so
  stock aiohttp sends files by sendfile on uvloop too;
- :func:`detach` hands an asyncio-streams connection over to
  :func:`zcio.aio.proxy` without losing what the StreamReader holds.

The loops refuse ``add_reader``/``add_writer`` on an fd a transport owns, so
readiness comes from a private epoll fd that watches a ``dup()`` of the
socket (level-triggered, EPOLLOUT) and is itself registered as a reader of
the loop. The dup keeps the connection's fd number valid for the call even if
the transport closes its own. TLS transports are never written around: they
are served by ``transport.write`` (copying), as ``loop.sendfile`` does.
"""
from __future__ import annotations

import asyncio
import errno
import io
import os
import select
import socket
import stat
from typing import IO, Any, Callable, Union

from . import _stats
from ._errors import REFUSED_ERRNOS, transfer_error
from .lowlevel import _nonneg, _refuse_tls
from .lowlevel import sendfile as _sendfile

__all__ = ["detach", "loop_factory", "transport_sendfile"]

_MAX_CALL = 0x7FFFF000  # the most one sendfile(2) moves
_COPY_BLOCK = 256 << 10  # bytes per transport.write() when copying

FileArg = Union[IO[bytes], int]


# ------------------------------------------------------------- readiness


class _Writable:
    """Calls ``callback`` from the loop each time a socket is writable.

    The socket is ``dup()``-ed and watched, level-triggered, by a private epoll
    fd that the loop watches as a reader: the loop sees the epoll fd readable
    exactly while the socket is writable, and nothing is registered with the
    loop under the transport's own fd. The dup is this object's (``fd``) until
    ``close()``; the caller's fd is never closed.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, callback: Callable[[], None]) -> None:
        self.loop = loop
        self.fd = os.dup(fd)
        try:
            self.epoll = select.epoll(1)
        except BaseException:
            os.close(self.fd)
            raise
        try:
            self.epoll.register(self.fd, select.EPOLLOUT)
            loop.add_reader(self.epoll.fileno(), callback)
        except BaseException:
            self.epoll.close()
            os.close(self.fd)
            raise

    def close(self) -> None:
        if self.fd < 0:
            return
        try:
            self.loop.remove_reader(self.epoll.fileno())
        finally:
            self.epoll.close()
            os.close(self.fd)
            self.fd = -1


# ------------------------------------------------------------- arguments


def _file_fd(file: FileArg) -> int:
    """The fd of a binary file object (or an int fd)."""
    if isinstance(file, int):
        return _nonneg(file, "file")
    if isinstance(file, io.TextIOBase) or "b" not in getattr(file, "mode", "b"):
        raise TypeError("file must be opened in binary mode")
    fileno = getattr(file, "fileno", None)
    if fileno is None:
        raise TypeError(f"file must be a binary file object or an fd, not {type(file).__name__}")
    if isinstance(file, (io.BufferedRandom, io.BufferedWriter)):
        file.flush()  # bytes written through the object go out too
    return int(fileno())


def _set_position(file: FileArg, fd: int, position: int) -> None:
    """Leave the file's position at ``position`` (a file object's buffer too)."""
    if isinstance(file, int):
        os.lseek(fd, position, os.SEEK_SET)
    else:
        file.seek(position)


def _stream_socket(transport: asyncio.BaseTransport) -> Any | None:
    """The transport's socket when sendfile(2) may write to it directly: a
    stream socket of a transport without TLS; else None."""
    if transport.get_extra_info("ssl_object") is not None:
        return None
    sock = transport.get_extra_info("socket")
    if sock is None or getattr(sock, "type", None) != socket.SOCK_STREAM:
        return None
    try:
        _refuse_tls(sock)
    except TypeError:
        return None
    return sock


def _restore_reading(transport: asyncio.BaseTransport, was_reading: bool) -> None:
    if was_reading and not transport.is_closing():
        transport.resume_reading()  # type: ignore[attr-defined]


# --------------------------------------------------------- the native path


class _NativeSend:
    """One transport_sendfile by sendfile(2): a writable event, one call.

    Runs from the loop's reader callback (``_ready``), so a wake costs the
    loop's epoll_wait and the sendfile, no task step; the awaiting coroutine
    wakes once, at the end. Until the transport's write buffer is empty (what
    it queued goes first) a wake only checks it.
    """

    def __init__(self, transport: asyncio.WriteTransport, in_fd: int, offset: int, count: int) -> None:
        self.transport = transport
        self.in_fd = in_fd
        self.position = offset
        self.left = count
        self.sent = 0
        self.calls = 0
        self.over = count == 0
        self.error: OSError | None = None  # what ended the call, if not success
        self.fut: asyncio.Future[None] | None = None  # made only if the call must wait

    def step(self, out_fd: int) -> None:
        """One sendfile; sets ``over`` when it was the last one."""
        try:
            n = _sendfile(out_fd, self.in_fd, self.position, min(self.left, _MAX_CALL))
        except BlockingIOError:
            return
        except OSError as exc:
            self.error = exc
            self.over = True
            return
        self.calls += 1
        self.sent += n
        self.position += n
        self.left -= n
        if n == 0 or self.left == 0:  # done, or the file ended early (truncated)
            self.over = True

    def ready(self, out_fd: int) -> None:
        """The loop's reader callback: the socket is writable."""
        if self.over:
            return
        if self.transport.is_closing():
            self.error = transfer_error(errno.ECONNABORTED, self.sent, b"", "the transport was closed during sendfile")
            self.over = True
        elif self.transport.get_write_buffer_size():
            return  # its own writer callback drains it; wait for the next wake
        else:
            self.step(out_fd)
        if self.over and self.fut is not None and not self.fut.done():
            self.fut.set_result(None)


async def _send_native(job: _NativeSend, fd: int) -> None:
    """Run ``job`` on socket ``fd``. Raises SendfileNotAvailableError when the
    kernel refuses the pair before a byte moved; on any other error aborts
    the transport and raises a TransferError (``transferred``)."""
    transport = job.transport
    try:
        # Fast path: the transport holds nothing, so try once right away; a
        # body that fits in the socket buffer is then sent without setting
        # up a watch or pausing reading (the loop does not run meanwhile).
        if not job.over and transport.get_write_buffer_size() == 0:
            job.step(fd)
        if not job.over:
            loop = asyncio.get_running_loop()
            job.fut = loop.create_future()
            was_reading = transport.is_reading()  # type: ignore[attr-defined]
            transport.pause_reading()  # type: ignore[attr-defined]
            try:
                watch = _Writable(loop, fd, lambda: job.ready(watch.fd))
                try:
                    await job.fut
                finally:
                    watch.close()
            finally:
                _restore_reading(transport, was_reading)
    finally:
        if job.calls:
            _stats.count_path("sendfile", job.sent, job.calls)
    exc = job.error
    if exc is None:
        return
    err = getattr(exc, "errno", None) or errno.EIO
    if job.sent == 0 and err in REFUSED_ERRNOS:
        raise asyncio.SendfileNotAvailableError(f"sendfile refused: {os.strerror(err)}")
    if not hasattr(exc, "transferred"):  # a kernel error: the body is cut short
        transport.abort()
        raise transfer_error(err, job.sent, b"", getattr(exc, "strerror", None)) from None
    raise exc


# ----------------------------------------------------------- the copy path


class _FlowGate(asyncio.Protocol):
    """Stands in for a transport's protocol while the copy path writes, to
    hear ``pause_writing``/``resume_writing`` and ``connection_lost`` (the
    public flow-control signals); every event is forwarded to the protocol it
    stands in for, which gets its own protocol back at ``restore()``."""

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.inner = transport.get_protocol()
        self.lost: BaseException | None = None
        self.closed = False
        self.waiter: asyncio.Future[None] | None = None
        transport.set_protocol(self)

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    # Forwarded protocol events.
    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self._wake()
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.lost = exc
        self._wake()
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        inner = self.inner
        if isinstance(inner, asyncio.BufferedProtocol):
            view = memoryview(data)
            while view:
                buf = memoryview(inner.get_buffer(len(view))).cast("B")
                n = min(len(buf), len(view))
                buf[:n] = view[:n]
                inner.buffer_updated(n)
                view = view[n:]
        else:
            inner.data_received(data)  # type: ignore[attr-defined]

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()  # type: ignore[attr-defined,no-any-return]

    async def writable(self) -> None:
        """Return once the transport's buffer is at or below its high-water
        mark; ConnectionError if the connection is gone."""
        transport = self.transport
        high = transport.get_write_buffer_limits()[1]  # type: ignore[attr-defined]
        while not self.closed and transport.get_write_buffer_size() > high:  # type: ignore[attr-defined]
            # Above the mark, the transport calls resume_writing once it
            # drains to the low mark (whether or not it paused us for it).
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        if self.closed or transport.is_closing():
            raise ConnectionResetError(errno.ECONNRESET, "the connection was lost during sendfile")

    def restore(self) -> None:
        if self.transport.get_protocol() is self:
            self.transport.set_protocol(self.inner)


class _Copy:
    """Progress of one copy-path send (read by the caller, also on error)."""

    sent = 0


async def _send_copy(
    job: _Copy, transport: asyncio.WriteTransport, in_fd: int, offset: int, count: int | None
) -> None:
    """Send by ``transport.write`` under flow control (TLS, or no socket)."""
    was_reading = transport.is_reading()  # type: ignore[attr-defined]
    transport.pause_reading()  # type: ignore[attr-defined]
    gate = _FlowGate(transport)
    try:
        while count is None or job.sent < count:
            await gate.writable()
            want = _COPY_BLOCK if count is None else min(_COPY_BLOCK, count - job.sent)
            data = os.pread(in_fd, want, offset + job.sent)
            if not data:
                break
            transport.write(data)
            job.sent += len(data)
    except ConnectionError as exc:
        raise transfer_error(exc.errno or errno.ECONNRESET, job.sent, b"", exc.strerror) from None
    finally:
        gate.restore()
        _restore_reading(transport, was_reading)
        if job.sent:
            _stats.count_path("transport_write", job.sent, -(-job.sent // _COPY_BLOCK))


# ------------------------------------------------------------ public API


async def transport_sendfile(
    transport: asyncio.WriteTransport,
    file: FileArg,
    offset: int = 0,
    count: int | None = None,
    *,
    fallback: bool = True,
) -> int:
    """Send a file over a stream transport: ``loop.sendfile``'s contract.

    Works for TCP and Unix stream transports of the stdlib loop and of
    uvloop. What the transport already buffered is sent first (the call waits
    until its write buffer is empty); reading is paused for the call and
    restored afterwards; the body goes by ``sendfile(2)``, one call per
    writable event. The transport stays usable: a later ``transport.write()``
    follows the body in order. Do not write to the transport while the call
    runs (``loop.sendfile`` refuses such writes; this function cannot).

    A TLS transport (``get_extra_info("ssl_object")`` set), or one without a
    stream socket, is served by ``transport.write`` under flow control when
    ``fallback`` is true -- zcio never writes around TLS.

    Args:
        transport: a connected stream transport.
        file: a regular file opened in binary mode, or its fd.
        offset: where in the file to start.
        count: bytes to send; None sends to the end of the file (its size at
            the call).

    Returns:
        The number of bytes sent (fewer than ``count`` only if the file ends
        first). ``file``'s position is ``offset`` plus that number afterwards,
        also on error and on cancellation.

    Raises:
        asyncio.SendfileNotAvailableError: ``fallback`` is false and the
            transport is TLS or socket-less, or the kernel refuses sendfile
            for the pair.
        TransferError: an error once the body started (a reset peer gives a
            ConnectionResetError/BrokenPipeError that is also a
            TransferError), with ``transferred``; the transport is aborted.
        RuntimeError: the transport is closing.
        ValueError: a negative offset or count; a file that is not a
            regular file.
        TypeError: a text-mode file or something that is not a file.
        asyncio.CancelledError: the file position is ``offset`` plus what was
            sent.
    """
    offset = _nonneg(offset, "offset")
    if count is not None:
        count = _nonneg(count, "count")
    in_fd = _file_fd(file)
    st = os.fstat(in_fd)
    if not stat.S_ISREG(st.st_mode):
        raise ValueError("file must be a regular file")
    if transport.is_closing():
        raise RuntimeError("Transport is closing")
    sock = _stream_socket(transport)
    reason = "tls" if transport.get_extra_info("ssl_object") is not None else "no_socket"
    job: _NativeSend | _Copy
    if sock is not None:
        job = _NativeSend(transport, in_fd, offset, max(0, st.st_size - offset) if count is None else count)
        try:
            await _send_native(job, sock.fileno())
            return job.sent
        except asyncio.SendfileNotAvailableError as exc:
            if not fallback:
                raise
            reason = f"sendfile_refused:{exc}"
        finally:
            _set_position(file, in_fd, offset + job.sent)
    elif not fallback:
        raise asyncio.SendfileNotAvailableError(f"sendfile is not available for this transport ({reason})")
    _stats.count_fallback(f"transport_sendfile:{reason}")
    job = _Copy()
    try:
        await _send_copy(job, transport, in_fd, offset, count)
        return job.sent
    finally:
        _set_position(file, in_fd, offset + job.sent)


class _SendfileByZcio:
    """Mixed into a loop class: its ``sendfile()`` is :func:`transport_sendfile`."""

    async def sendfile(
        self,
        transport: asyncio.WriteTransport,
        file: FileArg,
        offset: int = 0,
        count: int | None = None,
        *,
        fallback: bool = True,
    ) -> int:
        return await transport_sendfile(transport, file, offset, count, fallback=fallback)


def _selector_loop_class() -> type[asyncio.AbstractEventLoop]:
    class ZcioSelectorEventLoop(_SendfileByZcio, asyncio.SelectorEventLoop):
        """asyncio's selector loop whose ``sendfile()`` is zcio's."""

    return ZcioSelectorEventLoop


def _uvloop_class(uvloop_module: Any) -> type[asyncio.AbstractEventLoop]:
    class ZcioUVLoop(_SendfileByZcio, uvloop_module.Loop):  # type: ignore[misc]
        """uvloop's loop with a ``sendfile()`` (uvloop has none of its own)."""

    return ZcioUVLoop


_loop_classes: dict = {}  # type: ignore[type-arg]


def loop_factory(uvloop: bool | None = None) -> asyncio.AbstractEventLoop:
    """A new event loop whose ``sendfile()`` is :func:`transport_sendfile`.

    For ``asyncio.run(main(), loop_factory=zcio.aio.loop_factory)`` (3.12+),
    ``asyncio.Runner(loop_factory=...)`` and
    ``aiohttp.web.run_app(app, loop=zcio.aio.loop_factory())``. On it,
    aiohttp's stock ``web.FileResponse`` sends by sendfile on uvloop too.

    Args:
        uvloop: True for uvloop's loop, False for asyncio's; None (the
            default) for uvloop's when it is installed.

    Returns:
        A new loop, not set as the current one.

    Raises:
        ImportError: ``uvloop`` is true and uvloop is not installed.
    """
    if uvloop is None or uvloop:
        try:
            import uvloop as uvloop_module
        except ImportError:
            if uvloop:
                raise ImportError("loop_factory(uvloop=True): uvloop is not installed") from None
        else:
            cls = _loop_classes.get("uvloop")
            if cls is None:
                cls = _loop_classes["uvloop"] = _uvloop_class(uvloop_module)
            return cls()
    cls = _loop_classes.get("asyncio")
    if cls is None:
        cls = _loop_classes["asyncio"] = _selector_loop_class()
    return cls()


async def _until_flushed(transport: asyncio.WriteTransport, fd: int) -> None:
    """Wait, without polling, until the transport's write buffer is empty."""
    if transport.get_write_buffer_size() == 0:
        return
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def check() -> None:
        if fut.done():
            return
        if transport.is_closing():
            fut.set_exception(ConnectionResetError(errno.ECONNRESET, "the transport closed before it flushed"))
        elif transport.get_write_buffer_size() == 0:
            fut.set_result(None)

    watch = _Writable(loop, fd, check)
    try:
        await fut
    finally:
        watch.close()


async def detach(
    writer: asyncio.StreamWriter, reader: asyncio.StreamReader | None = None
) -> tuple[socket.socket, bytes]:
    """End an asyncio-streams connection's transport, not the connection.

    Flushes what ``writer`` holds, takes the bytes ``reader`` had received
    that the application had not read, and closes the transport while the
    connection lives on in a new socket object. A ``start_server`` handler
    that read a header line can then send the early bytes on and
    :func:`zcio.aio.proxy` the rest: nothing is lost or reordered.

    Args:
        writer: the connection's StreamWriter (a TCP or Unix stream, not TLS).
        reader: its StreamReader, if the application read from it; without
            it, bytes the reader buffered are dropped with the transport.

    Returns:
        ``(sock, early)``: the connected non-blocking socket (the caller owns
        and closes it) and the bytes received but not yet read.

    Raises:
        TypeError: a TLS connection (its socket would bypass the encryption).
        ValueError: a transport without a socket.
        ConnectionError: the transport closed before its buffer was flushed.
    """
    transport = writer.transport
    if transport.get_extra_info("ssl_object") is not None:
        raise TypeError("detach() refuses a TLS connection: its socket carries ciphertext")
    raw = transport.get_extra_info("socket")
    if raw is None:
        raise ValueError("detach() needs a transport with a socket")
    fd = raw.fileno()
    transport.pause_reading()  # type: ignore[attr-defined]
    await _until_flushed(writer.transport, fd)
    sock = socket.socket(fileno=os.dup(fd))
    try:
        sock.setblocking(False)
        early = b""
        if reader is not None:
            # With EOF fed, read() returns what is buffered without waiting.
            # It may resume the transport's reading (the reader's own flow
            # control): pause again before the loop can deliver anything.
            reader.feed_eof()
            early = await reader.read()
            transport.pause_reading()  # type: ignore[attr-defined]
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
    except BaseException:
        sock.close()
        raise
    return sock, early
