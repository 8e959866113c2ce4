"""Process-wide counters behind zcio.stats() (like HAProxy's ``show info``).

Updated once per transfer (not per chunk), under a lock.
"""
from __future__ import annotations

import threading
from collections import Counter
from typing import Any, Dict

_lock = threading.Lock()
_bytes: "Counter[str]" = Counter()
_calls: "Counter[str]" = Counter()
_fallbacks: "Counter[str]" = Counter()
_pipes: "Counter[str]" = Counter()
_transfers: "Counter[str]" = Counter()


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


def snapshot() -> Dict[str, Any]:
    from .pipes import pool_gauges

    with _lock:
        pipes: Dict[str, int] = {
            "created": _pipes["created"],
            "destroyed": _pipes["destroyed"],
            "exhausted": _pipes["exhausted"],
        }
        out: Dict[str, Any] = {
            "bytes": dict(_bytes),
            "calls": dict(_calls),
            "fallbacks": dict(_fallbacks),
            "transfers": dict(_transfers),
        }
    pipes.update(pool_gauges())
    out["pipes"] = pipes
    return out
