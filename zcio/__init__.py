"""zcio: Linux zero-copy I/O for Python.

The top level re-exports :mod:`zcio.lowlevel` (one kernel call per function)
and, as they land, the higher layers built on it.
"""
from __future__ import annotations

from ._binding import ffi as _ffi  # noqa: F401  (fails early with a clear message)
from ._errors import TransferError, ZcioError
from ._version import __version__
from .hub import RelayHub
from .lowlevel import (
    MSG_ZEROCOPY,
    SO_EE_CODE_ZEROCOPY_COPIED,
    SO_EE_ORIGIN_ZEROCOPY,
    SO_ZEROCOPY,
    SPLICE_F_GIFT,
    SPLICE_F_MORE,
    SPLICE_F_MOVE,
    SPLICE_F_NONBLOCK,
    Completion,
    copy_file_range,
    features,
    read_completions,
    send_zerocopy,
    sendfile,
    splice,
    tee,
    vmsplice,
)
from .pipes import Pipe, PipePool, default_pool
from .streams import proxy, splice_pipe, stats, tee_pipe
from .zerocopy import BufferPool, CompletionTracker, Ticket, ZeroCopySender

__all__ = [
    "__version__",
    "ZcioError",
    "TransferError",
    "splice_pipe",
    "tee_pipe",
    "proxy",
    "RelayHub",
    "stats",
    "Pipe",
    "PipePool",
    "default_pool",
    "ZeroCopySender",
    "Ticket",
    "BufferPool",
    "CompletionTracker",
    "Completion",
    "sendfile",
    "splice",
    "tee",
    "vmsplice",
    "copy_file_range",
    "send_zerocopy",
    "read_completions",
    "features",
    "SPLICE_F_MOVE",
    "SPLICE_F_NONBLOCK",
    "SPLICE_F_MORE",
    "SPLICE_F_GIFT",
    "MSG_ZEROCOPY",
    "SO_ZEROCOPY",
    "SO_EE_ORIGIN_ZEROCOPY",
    "SO_EE_CODE_ZEROCOPY_COPIED",
]
