"""Which event loop the servers run on."""
from __future__ import annotations

import asyncio
import sys

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
            import uvloop as _uvloop
        except ImportError:
            print(f"{prog}: uvloop is not installed; using asyncio's loop", file=sys.stderr)
        else:
            return _uvloop.new_event_loop(), "uvloop"
    return asyncio.new_event_loop(), "asyncio"
