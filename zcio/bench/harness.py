"""The benchmark harness: timed samples, contenders, cases and interleaved rounds.

Each case runs its contenders interleaved (A B A B ..., the order reversed
every other round) for several rounds and reports medians, because
throughput on a shared machine swings from run to run while the
order-averaged ratio holds. Figures:

- for byte-moving cases: GiB/s (wall) and CPU seconds per GiB of the thread
  doing the moving (``RUSAGE_THREAD``), and the ratio of each to the stdlib's;
- for small-call cases: nanoseconds per call and the ratio to the stdlib's.

Round *i* of every contender of a case ran back to back, so the ratio of two
contenders' round-*i* samples is a paired figure; :func:`ratios` reports the
median and each round's ratio (their spread is the run's noise).

This module knows nothing of zcio; the cases live beside it.
"""
from __future__ import annotations

import contextlib
import resource
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable

__all__ = ["Case", "Contender", "GiB", "Row", "Sample", "measure", "ratios", "run_cases"]

GiB = 1 << 30
_RUSAGE = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)


@dataclass
class Sample:
    """One timed run: wall and CPU seconds, and the bytes or calls it did."""

    wall: float
    cpu: float
    units: int


def _cpu() -> float:
    ru = resource.getrusage(_RUSAGE)
    return ru.ru_utime + ru.ru_stime


def measure(fn: Callable[[], int]) -> Sample:
    """Run ``fn`` and time it.

    Args:
        fn: does the work and returns the units (bytes or calls) it did.

    Returns:
        The wall and CPU seconds of this thread, and the units.
    """
    c0, t0 = _cpu(), time.perf_counter()
    units = fn()
    t1, c1 = time.perf_counter(), _cpu()
    return Sample(t1 - t0, c1 - c0, units)


@dataclass
class Contender:
    """One way of doing a case's job. ``role`` is "zcio", "stdlib" or "peer"."""

    role: str
    label: str
    run: Callable[[], Sample]


@dataclass
class Case:
    """A job and the contenders that do it. ``unit`` is "bytes" or "calls".

    ``setup(tmp, quick)`` is a context manager that prepares the job in the
    temp dir ``tmp`` and yields the contenders; leaving it releases everything.
    """

    name: str
    unit: str
    setup: Callable[[str, bool], contextlib.AbstractContextManager[list[Contender]]]


@dataclass
class Row:
    """Every sample of one contender of one case, in round order."""

    case: str
    unit: str
    role: str
    label: str
    samples: list[Sample] = field(default_factory=list)

    @property
    def _scale(self) -> int:
        return GiB if self.unit == "bytes" else 1

    def rates(self) -> list[float]:
        """Each round's GiB/s, or calls per second."""
        return [s.units / s.wall / self._scale if s.wall > 0 else 0.0 for s in self.samples]

    def cpu_per_units(self) -> list[float]:
        """Each round's CPU seconds per GiB, or per call."""
        return [s.cpu / (s.units / self._scale) if s.units else 0.0 for s in self.samples]

    @property
    def rate(self) -> float:
        """Median GiB/s, or median calls per second."""
        scale = self._scale
        return statistics.median(s.units / s.wall / scale for s in self.samples if s.wall > 0)

    @property
    def cpu_per_unit(self) -> float:
        """Median CPU seconds per GiB, or per call."""
        scale = self._scale
        return statistics.median(s.cpu / (s.units / scale) for s in self.samples if s.units)


def run_cases(
    cases: Sequence[Case],
    *,
    quick: bool = False,
    rounds: int | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> list[Row]:
    """Run every case's contenders interleaved.

    Args:
        cases: what to run, in order.
        quick: passed to each case's setup (smaller sizes); also fewer rounds.
        rounds: interleaved rounds per case (default 7, quick 3); each
            contender also has one untimed warm-up run first.
        log: called with a line as each case starts.

    Returns:
        One Row per contender, case by case.
    """
    if rounds is not None and rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    rounds = rounds or (3 if quick else 7)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="zcio-bench-") as tmp:
        for case in cases:
            log(f"{case.name} ...")
            with case.setup(tmp, quick) as contenders:
                case_rows = [Row(case.name, case.unit, c.role, c.label) for c in contenders]
                for c in contenders:  # one untimed warm-up each
                    c.run()
                for r in range(rounds):
                    order = list(zip(contenders, case_rows))
                    if r % 2:
                        order.reverse()
                    for c, row in order:
                        row.samples.append(c.run())
            rows.extend(case_rows)
    return rows


def _baseline(rows: Sequence[Row], case: str) -> Row | None:
    return next((r for r in rows if r.case == case and r.role == "stdlib"), None)


def _paired(mine: list[float], base: list[float]) -> list[float]:
    """Round-by-round ratios (rounds with a zero baseline left out)."""
    return [m / b for m, b in zip(mine, base) if b]


def ratios(rows: Sequence[Row]) -> list[dict[str, object]]:
    """Rows as dicts (what ``zcio bench --json`` prints), with the ratios to
    the case's stdlib contender.

    Keys: ``case``, ``unit``, ``role``, ``label``, ``samples``; for bytes
    ``gib_per_s`` and ``cpu_s_per_gib``, for calls ``ns_per_call`` and
    ``cpu_ns_per_call`` (medians). Beside a baseline: ``speed_ratio``
    (rate / the stdlib's: above 1 is faster) and ``cpu_ratio`` (CPU per unit
    / the stdlib's: below 1 is cheaper), each also per round in
    ``speed_ratio_rounds`` / ``cpu_ratio_rounds``; for calls also
    ``time_ratio`` (time per call / the stdlib's).
    """
    out: list[dict[str, object]] = []
    for row in rows:
        base = _baseline(rows, row.case)
        d: dict[str, object] = {"case": row.case, "unit": row.unit, "role": row.role, "label": row.label}
        if row.unit == "bytes":
            d["gib_per_s"] = row.rate
            d["cpu_s_per_gib"] = row.cpu_per_unit
        else:
            d["ns_per_call"] = 1e9 / row.rate
            d["cpu_ns_per_call"] = row.cpu_per_unit * 1e9
        if base is not None:
            d["speed_ratio"] = row.rate / base.rate
            d["cpu_ratio"] = row.cpu_per_unit / base.cpu_per_unit if base.cpu_per_unit else None
            if row.unit == "calls":
                d["time_ratio"] = base.rate / row.rate
            d["speed_ratio_rounds"] = _paired(row.rates(), base.rates())
            d["cpu_ratio_rounds"] = _paired(row.cpu_per_units(), base.cpu_per_units())
        d["samples"] = len(row.samples)
        out.append(d)
    return out
