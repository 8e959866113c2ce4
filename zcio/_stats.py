"""Process-wide counters behind zcio.stats() (like HAProxy's ``show info``).

Updated once per transfer (not per chunk), under a lock. A leaf: it imports
nothing of zcio. The pipe pools' live gauges (pipes in use and free) are read
through a function that :mod:`zcio.pipes` registers with
:func:`set_pipe_gauges`.
"""
from __future__ import annotations

import threading
from collections import Counter
from typing import Callable, Dict, Tuple, TypedDict


class PipeCounts(TypedDict):
    """``stats()["pipes"]``: pipes created and destroyed by pools, times a
    pool was exhausted, and pipes in use and free now (every live pool)."""

    created: int
    destroyed: int
    exhausted: int
    in_use: int
    free: int


class Stats(TypedDict):
    """What ``zcio.stats()`` returns: bytes and calls per path (``holes``:
    bytes of holes kept, not moved), fallbacks by reason, transfers by
    outcome (completed, failed, interrupted), and the pipes."""

    bytes: Dict[str, int]
    calls: Dict[str, int]
    fallbacks: Dict[str, int]
    transfers: Dict[str, int]
    pipes: PipeCounts


_lock = threading.Lock()
_bytes: Counter[str] = Counter()
_calls: Counter[str] = Counter()
_fallbacks: Counter[str] = Counter()
_pipes: Counter[str] = Counter()
_transfers: Counter[str] = Counter()


def _no_pipes() -> Tuple[int, int]:
    return 0, 0


_pipe_gauges: Callable[[], Tuple[int, int]] = _no_pipes


def count_path(path: str, nbytes: int, calls: int) -> None:
    with _lock:
        _bytes[path] += nbytes
        _calls[path] += calls


def count_fallback(reason: str) -> None:
    with _lock:
        _fallbacks[reason] += 1


def count_pipe(event: str) -> None:
    with _lock:
        _pipes[event] += 1


def count_transfer(outcome: str) -> None:
    with _lock:
        _transfers[outcome] += 1


def set_pipe_gauges(read: Callable[[], Tuple[int, int]]) -> None:
    """Have :func:`snapshot` read pipes ``(in_use, free)`` with ``read()``,
    outside the counters' lock, once per snapshot."""
    global _pipe_gauges
    _pipe_gauges = read


def snapshot() -> Stats:
    """The counters now, and the pipe gauges."""
    with _lock:
        counters = (dict(_bytes), dict(_calls), dict(_fallbacks), dict(_transfers))
        created, destroyed, exhausted = _pipes["created"], _pipes["destroyed"], _pipes["exhausted"]
    in_use, free = _pipe_gauges()
    return Stats(
        bytes=counters[0],
        calls=counters[1],
        fallbacks=counters[2],
        transfers=counters[3],
        pipes=PipeCounts(created=created, destroyed=destroyed, exhausted=exhausted, in_use=in_use, free=free),
    )
