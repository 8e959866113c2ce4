"""Which event loop the servers run on: :func:`zcio.aio.loop_factory`'s."""
from __future__ import annotations

import asyncio
import sys

from ..aio import loop_factory

__all__ = ["new_event_loop"]


def new_event_loop(uvloop: bool, prog: str) -> tuple[asyncio.AbstractEventLoop, str]:
    """A new event loop and its name ("uvloop" or "asyncio").

    Args:
        uvloop: use uvloop's loop if it is installed; when it is not, say so
            on stderr (prefixed with ``prog``) and use asyncio's.
        prog: the command, for that message.
    """
    if uvloop:
        try:
            return loop_factory(uvloop=True), "uvloop"
        except ImportError:
            print(f"{prog}: uvloop is not installed; using asyncio's loop", file=sys.stderr)
    return loop_factory(uvloop=False), "asyncio"
