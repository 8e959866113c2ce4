"""zcio's exceptions.

Each refines a builtin and also inherits :class:`ZcioError`, so callers can
catch either the builtin they already handle or everything zcio raises.
"""
from __future__ import annotations

import errno as _errno
import os
from typing import Dict, Optional, Type

#: The kernel's internal ENOTSUPP, which some filesystems and old kernels leak
#: to callers (Python has no name for it).
ENOTSUPP = 524
#: Errors that mean "this path is not for these fds": a caller may fall back
#: to another path, as long as nothing has moved yet.
REFUSED_ERRNOS = frozenset({_errno.EINVAL, _errno.ENOSYS, _errno.EOPNOTSUPP, _errno.EXDEV, _errno.EPERM, ENOTSUPP})


class ZcioError(Exception):
    """Base class of the exceptions defined by zcio."""


class TransferError(ZcioError, OSError):
    """A transfer failed after some bytes had moved; nothing is lost.

    ``errno`` is the kernel's error. ``transferred`` counts the bytes the
    destination accepted; ``pending`` holds the bytes that were taken from the
    source but not delivered (recovered from zcio's intermediate pipe or
    buffer). So ``source == source[:transferred] + pending + unread source``.

    The instance raised is also an instance of the builtin OSError subclass
    for its errno -- ``except BrokenPipeError`` and ``except TimeoutError``
    catch it -- through a subclass made once per builtin.
    """

    transferred: int
    pending: bytes

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (_rebuild, (self.errno, self.strerror, self.transferred, self.pending))


_subclasses: Dict[Type[OSError], Type[TransferError]] = {}


def _subclass_for(err: int) -> Type[TransferError]:
    base = type(OSError(err, ""))
    if base is OSError:
        return TransferError
    cls = _subclasses.get(base)
    if cls is None:
        name = base.__name__[: -len("Error")] if base.__name__.endswith("Error") else base.__name__
        cls = type(f"{name}TransferError", (TransferError, base), {"__module__": __name__})
        _subclasses[base] = cls
    return cls


def transfer_error(
    err: int, transferred: int, pending: bytes = b"", message: Optional[str] = None
) -> TransferError:
    """Build the TransferError for ``err`` (an errno) with its accounting."""
    exc = _subclass_for(err)(err, message or os.strerror(err))
    exc.transferred = transferred
    exc.pending = pending
    return exc


def transfer_timeout(transferred: int, pending: bytes, timeout: float) -> TransferError:
    """The TimeoutError (a TransferError) raised when no progress came in time."""
    return transfer_error(
        _errno.ETIMEDOUT, transferred, pending, f"no progress within {timeout:g} seconds"
    )


def _rebuild(err: int, strerror: str, transferred: int, pending: bytes) -> TransferError:
    return transfer_error(err, transferred, pending, strerror)
