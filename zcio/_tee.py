"""The state of one ``tee_pipe`` call, shared by the blocking driver in
:mod:`zcio.streams` and the asyncio one in :mod:`zcio.aio`."""
from __future__ import annotations

import contextlib
import errno
import os
import socket
from typing import Any

from ._errors import TransferError, transfer_error
from ._transfer import FALLBACK_ERRNOS, Plan, _is_buffered, _take_buffered, resolve
from .lowlevel import SPLICE_F_NONBLOCK, FdLike, _nonneg, splice, tee
from .pipes import Pipe, default_pool

__all__ = ["Tee"]


class Tee:
    """The state of one tee_pipe call, shared by the sync and async versions
    (which differ only in how they wait): the resolved fds, the two pipes it
    owns (``main`` for dst, ``copy`` for the mirror) and the running total.

    Python file objects are honoured as :class:`Xfer` honours them: buffered
    writers are flushed first; a seekable buffered reader is read from its
    ``tell()`` by offset (its fd's position is left alone) and ``seek()``-ed
    to where the tee stopped taking, in :meth:`close`; an unseekable one's
    already-buffered bytes go first (``head``).
    """

    def __init__(self, src: FdLike, dst: FdLike, mirror: FdLike, count: int | None) -> None:
        self.count = None if count is None else _nonneg(count, "count")
        self.src, src_obj = resolve(src, "src")
        self.dst, dst_obj = resolve(dst, "dst")
        self.mirror, mirror_obj = resolve(mirror, "mirror")
        self.total = 0
        self.spliceable = True
        self.head = b""  # an unseekable buffered reader's bytes, taken first
        self.offset: int | None = None  # a seekable buffered reader: where to take next
        self.reader: Any = None  # ... and the reader, seek()-ed there in close()
        size = default_pool().pipe_size
        with contextlib.ExitStack() as made:  # both pipes, or neither
            self.main = made.enter_context(Pipe())
            self.copy = made.enter_context(Pipe())
            for obj in (dst_obj, mirror_obj):
                if obj is not None and hasattr(obj, "flush") and not isinstance(obj, socket.socket):
                    obj.flush()
            # Each chunk is delivered by a transfer out of a pipe: the two
            # plans are made once, not per chunk.
            self.to_mirror = Plan.probe(self.copy.r, self.mirror)
            self.to_dst = Plan.probe(self.main.r, self.dst)
            made.pop_all()
        for p in (self.main, self.copy):
            try:
                p.size = size
            except OSError:
                pass  # over pipe-max-size or the user's page limit
        # Last, as the only step that consumes anything.
        if src_obj is not None and _is_buffered(src_obj):
            if src_obj.seekable():
                self.offset, self.reader = src_obj.tell(), src_obj
            else:
                self.head = _take_buffered(src_obj, self.src, self.count)

    def want(self) -> int:
        """Bytes to take next (0: count reached)."""
        if self.count is None:
            return self.main.size
        return min(self.main.size, self.count - self.total)

    def fill(self, want: int) -> int | None:
        """One splice (or read and write) from src into the empty main pipe:
        bytes taken, 0 at EOF, None when src has nothing now."""
        if self.head:
            data, self.head = self.head[:want], self.head[want:]
            os.write(self.main.w, data)  # the pipe is empty and holds `want` bytes
            return len(data)
        n: int | None
        if self.spliceable:
            try:
                n = splice(self.src, self.main.w, want, offset_src=self.offset, flags=SPLICE_F_NONBLOCK)
            except BlockingIOError:
                return None
            except OSError as exc:
                if exc.errno not in FALLBACK_ERRNOS:
                    raise
                self.spliceable = False  # e.g. a /proc file: read it instead
            else:
                return self._took(n)
        try:
            data = os.read(self.src, want) if self.offset is None else os.pread(self.src, want, self.offset)
        except BlockingIOError:
            return None
        os.write(self.main.w, data)  # the pipe is empty and holds `want` bytes
        return self._took(len(data))

    def _took(self, n: int) -> int:
        if self.offset is not None:
            self.offset += n
        return n

    def pending(self) -> bytes:
        """The bytes taken from src that did not reach dst: what the main
        pipe holds, then what is left of the head."""
        data, self.head = self.main.drain() + self.head, b""
        return data

    def duplicate(self, n: int) -> None:
        """tee() the ``n`` bytes now in the main pipe into the copy pipe."""
        done = 0
        while done < n:
            done += tee(self.main.r, self.copy.w, n - done)

    def error(self, exc: OSError) -> TransferError:
        """The TransferError for ``exc``, with the tee's accounting."""
        return transfer_error(exc.errno or errno.EIO, self.total, self.pending())

    def close(self) -> None:
        """Close both pipes; a seekable buffered reader is put where the tee
        stopped taking."""
        try:
            self.main.close()
            self.copy.close()
        finally:
            if self.reader is not None:
                self.reader.seek(self.offset)
