"""Process-wide counters behind zcio.stats() (like HAProxy's ``show info``).

Updated once per transfer (not per chunk), under a lock. A leaf: it imports
nothing of zcio. Modules above it that keep live gauges (the pipe pools'
pipes in use and free) register a function that reads them with
:func:`add_gauges`, and :func:`snapshot` adds what it returns.
"""
from __future__ import annotations

import threading
from collections import Counter
from typing import Any, Callable

_lock = threading.Lock()
_bytes: Counter[str] = Counter()
_calls: Counter[str] = Counter()
_fallbacks: Counter[str] = Counter()
_pipes: Counter[str] = Counter()
_transfers: Counter[str] = Counter()
_gauges: dict[str, Callable[[], dict[str, int]]] = {}


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


def add_gauges(section: str, read: Callable[[], dict[str, int]]) -> None:
    """Have :func:`snapshot` add ``read()`` to its ``section`` (e.g. "pipes").

    ``read`` is called outside the counters' lock, once per snapshot.
    """
    with _lock:
        _gauges[section] = read


def snapshot() -> dict[str, Any]:
    """The counters now, plus the registered gauges."""
    with _lock:
        gauges = list(_gauges.items())
        pipes: dict[str, int] = {
            "created": _pipes["created"],
            "destroyed": _pipes["destroyed"],
            "exhausted": _pipes["exhausted"],
        }
        out: dict[str, Any] = {
            "bytes": dict(_bytes),
            "calls": dict(_calls),
            "fallbacks": dict(_fallbacks),
            "transfers": dict(_transfers),
        }
    out["pipes"] = pipes
    for section, read in gauges:
        out.setdefault(section, {}).update(read())
    return out
