"""A one-line progress bar for a terminal (``zcio copy``)."""
from __future__ import annotations

import os
import time
from typing import Callable, TextIO

__all__ = ["ProgressBar", "human_size"]


def human_size(n: float) -> str:
    """``n`` bytes in binary units: ``512 B``, ``1.5 KiB`` ... ``2.0 TiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _duration(s: float) -> str:
    s = int(s + 0.5)
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02}:{rest % 60:02}" if h else f"{rest // 60}:{rest % 60:02}"


class ProgressBar:
    """Redraws one line on ``stream`` at most ``hz`` times a second.

    Call it with the running total (it fits ``splice_pipe``'s ``progress``);
    :meth:`close` ends the line. Each redraw returns to the start of the line
    and overwrites everything the previous one wrote, so a shorter line
    leaves nothing behind; the line is cut to the terminal's width so that it
    never wraps (a wrapped line could not be redrawn in place).

    Args:
        stream: where to draw (a terminal, normally stderr).
        total: the bytes expected, or None when unknown (no bar, no ETA).
        hz: most redraws a second (the final total is always drawn).
        clock: seconds, monotonic (for tests).
    """

    def __init__(
        self,
        stream: TextIO,
        total: int | None,
        hz: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.total = total
        self.period = 1.0 / hz
        self.clock = clock
        self.start = clock()
        self.last: float | None = None
        self.shown = 0  # characters of the line now on screen

    def render(self, done: int, elapsed: float, width: int = 80) -> str:
        """The text of the line for ``done`` bytes after ``elapsed`` seconds,
        shorter than ``width`` columns (the bar gives way first, then the ETA)."""
        rate = done / elapsed if elapsed > 0 else 0.0
        speed = f"{human_size(rate)}/s"
        if not self.total:
            return f"{human_size(done)}  {speed}"[: width - 1]
        frac = min(1.0, done / self.total)
        text = f" {frac * 100:5.1f}%  {human_size(done)} / {human_size(self.total)}  {speed}"
        if rate > 0 and done < self.total:
            eta = f"  {_duration((self.total - done) / rate)} left"
            if len(text) + len(eta) + 12 < width:
                text += eta
        cells = min(30, width - 3 - len(text))
        if cells < 10:  # no room for a bar worth the name
            return text.strip()[: width - 1]
        return f"[{'#' * int(frac * cells):<{cells}}]" + text

    def __call__(self, done: int) -> None:
        now = self.clock()
        if self.last is not None and now - self.last < self.period and done != self.total:
            return
        self.last = now
        self.draw(self.render(done, now - self.start, self._width()))

    def draw(self, text: str) -> None:
        """Replace the line on screen with ``text``."""
        self.stream.write("\r" + text + " " * max(0, self.shown - len(text)))
        self.stream.flush()
        self.shown = len(text)

    def _width(self) -> int:
        try:
            return os.get_terminal_size(self.stream.fileno()).columns or 80
        except (AttributeError, OSError, ValueError):  # not a terminal (or no fd)
            return 80

    def close(self) -> None:
        """End the line (if anything was drawn), so what follows starts on its own."""
        if self.last is not None:
            self.stream.write("\n")
            self.stream.flush()
            self.last = None
            self.shown = 0
