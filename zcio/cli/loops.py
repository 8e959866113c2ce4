"""Which event loop the servers run on (:func:`zcio.aio.loop_factory`'s),
and how a server command runs on it until a signal."""
from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable

from ..aio import loop_factory

__all__ = ["new_event_loop", "serve_until_signal"]


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


async def serve_until_signal(
    serve_forever: Awaitable[None], close: Callable[[], Awaitable[None]], banner: str
) -> BaseException | None:
    """Run a server until SIGINT or SIGTERM, or until it fails; then close it.

    Args:
        serve_forever: the server's ``serve_forever()``, which ends once
            ``close`` has run (or raises when the server fails).
        close: the server's ``close``.
        banner: printed on stderr once the signal handlers are in place (so
            whoever waits for it may signal at once).

    Returns:
        What ``serve_forever`` raised, or None after a signal.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    print(banner, file=sys.stderr, flush=True)
    runner = asyncio.ensure_future(serve_forever)
    stopper = loop.create_task(stop.wait())
    try:
        await asyncio.wait([runner, stopper], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        stopper.cancel()
        await close()
        await asyncio.gather(runner, stopper, return_exceptions=True)
    return runner.exception() if runner.done() and not runner.cancelled() else None
