"""A one-line progress bar for a terminal (used by ``zcio copy``)."""
from __future__ import annotations

import time
from typing import Optional, TextIO


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


class ProgressBar:
    """Redraws one line on ``stream`` at most ``hz`` times a second."""

    def __init__(self, stream: TextIO, total: Optional[int], hz: float = 10.0) -> None:
        self.stream = stream
        self.total = total
        self.start = time.monotonic()
        self.last = 0.0
        self.period = 1.0 / hz

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if now - self.last < self.period and done != self.total:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        if self.total:
            frac = min(1.0, done / self.total)
            bar = "#" * int(frac * 30)
            text = f"[{bar:<30}] {frac * 100:5.1f}% {_size(done)} / {_size(self.total)}"
        else:
            text = f"{_size(done)}"
        self.stream.write(f"\r{text}  {_size(rate)}/s ")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()
