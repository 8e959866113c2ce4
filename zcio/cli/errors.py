"""Expected failures as one line for a person (no traceback)."""
from __future__ import annotations

import sys

from .. import TransferError

__all__ = ["accounting", "describe", "fail"]


def _count(n: int) -> str:
    return f"{n} byte" + ("" if n == 1 else "s")


def accounting(transferred: int, pending: bytes) -> str:
    """``after N bytes`` and, if some were read but not written, how many."""
    text = f"after {_count(transferred)}"
    if pending:
        text += f" ({_count(len(pending))} more read but not written)"
    return text


def describe(exc: BaseException) -> str:
    """``exc`` as a short phrase: the file it concerns, the system's words for
    the error, and a TransferError's accounting."""
    if isinstance(exc, TransferError):
        return f"{exc.strerror or exc} {accounting(exc.transferred, exc.pending)}"
    if isinstance(exc, OSError) and exc.strerror:
        names = [repr(n) for n in (exc.filename, exc.filename2) if n is not None]
        return ": ".join([" -> ".join(names), exc.strerror] if names else [exc.strerror])
    return str(exc) or type(exc).__name__


def fail(prog: str, exc: BaseException) -> int:
    """Print ``prog: <exc described>`` on stderr and return exit status 1."""
    print(f"{prog}: {describe(exc)}", file=sys.stderr)
    return 1
