"""``zcio bench``: zcio's paths measured beside the stdlib's, in one run.

Each case runs its contenders interleaved (A B A B ...) for several rounds and
reports medians, because throughput on a shared machine swings from run to
run while the order-averaged ratio holds. Memory a case uses is touched
before each round. Figures:

- for byte-moving cases: GiB/s (wall) and CPU seconds per GiB of the thread
  doing the moving (``RUSAGE_THREAD``), and the ratio of each to the stdlib's;
- for small-call cases: nanoseconds per call and the ratio to the stdlib's.

The ratio column is zcio / stdlib: above 1 is faster for GiB/s, below 1 is
better for CPU and for time per call.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence

from . import lowlevel

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
    """Run ``fn`` (which returns the units it did) and time it."""
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
    """A job and the contenders that do it. ``unit`` is "bytes" or "calls"."""

    name: str
    unit: str
    setup: Callable[[str, bool], "contextlib.AbstractContextManager[List[Contender]]"]


@dataclass
class Row:
    case: str
    unit: str
    role: str
    label: str
    samples: List[Sample] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Median GiB/s, or median calls per second."""
        scale = GiB if self.unit == "bytes" else 1
        return statistics.median(s.units / s.wall / scale for s in self.samples if s.wall > 0)

    @property
    def cpu_per_unit(self) -> float:
        """Median CPU seconds per GiB, or per call."""
        scale = GiB if self.unit == "bytes" else 1
        return statistics.median(s.cpu / (s.units / scale) for s in self.samples if s.units)


# ------------------------------------------------------------------ cases


def _calls(fn: Callable[[], object], n: int) -> Callable[[], Sample]:
    def run() -> Sample:
        def body() -> int:
            for _ in range(n):
                fn()
            return n

        return measure(body)

    return run


@contextlib.contextmanager
def _splice_pingpong(tmp: str, quick: bool) -> Iterator[List[Contender]]:
    """4 KiB moved back and forth between two pipes: two calls a round."""
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    try:
        os.write(w1, b"x" * 4096)
        n = 100_000 if quick else 300_000
        zs, oss = lowlevel.splice, os.splice

        def z() -> None:
            zs(r1, w2, 4096)
            zs(r2, w1, 4096)

        def o() -> None:
            oss(r1, w2, 4096)
            oss(r2, w1, 4096)

        yield [
            Contender("zcio", "zcio.splice", _pairs(_calls(z, n))),
            Contender("stdlib", "os.splice", _pairs(_calls(o, n))),
        ]
    finally:
        for fd in (r1, w1, r2, w2):
            os.close(fd)


def _pairs(run: Callable[[], Sample]) -> Callable[[], Sample]:
    """Count each round of a ping-pong as its two calls."""

    def wrapped() -> Sample:
        s = run()
        return Sample(s.wall, s.cpu, s.units * 2)

    return wrapped


@contextlib.contextmanager
def _sendfile_devnull(tmp: str, quick: bool) -> Iterator[List[Contender]]:
    """4 KiB from a file at offset 0 to /dev/null: one call each."""
    path = os.path.join(tmp, "small.bin")
    with open(path, "wb") as f:
        f.write(os.urandom(4096))
    src = os.open(path, os.O_RDONLY)
    dst = os.open(os.devnull, os.O_WRONLY)
    try:
        n = 100_000 if quick else 300_000
        zsf, osf = lowlevel.sendfile, os.sendfile
        yield [
            Contender("zcio", "zcio.sendfile", _calls(lambda: zsf(dst, src, 0, 4096), n)),
            Contender("stdlib", "os.sendfile", _calls(lambda: osf(dst, src, 0, 4096), n)),
        ]
    finally:
        os.close(src)
        os.close(dst)


CASES: List[Case] = [
    Case("splice 4 KiB pipe ping-pong", "calls", _splice_pingpong),
    Case("sendfile 4 KiB file→/dev/null", "calls", _sendfile_devnull),
]


# ------------------------------------------------------------------ running


def run_cases(
    cases: Sequence[Case],
    *,
    quick: bool = False,
    rounds: Optional[int] = None,
    log: Callable[[str], None] = lambda s: None,
) -> List[Row]:
    """Run every case's contenders interleaved for ``rounds`` rounds."""
    rounds = rounds or (5 if quick else 9)
    rows: List[Row] = []
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


def _baseline(rows: Sequence[Row], case: str) -> Optional[Row]:
    return next((r for r in rows if r.case == case and r.role == "stdlib"), None)


def ratios(rows: Sequence[Row]) -> List[Dict[str, object]]:
    """Rows as dicts with the ratio to the case's stdlib contender."""
    out: List[Dict[str, object]] = []
    for row in rows:
        base = _baseline(rows, row.case)
        d: Dict[str, object] = {"case": row.case, "unit": row.unit, "role": row.role, "label": row.label}
        if row.unit == "bytes":
            d["gib_per_s"] = row.rate
            d["cpu_s_per_gib"] = row.cpu_per_unit
            if base is not None:
                d["speed_ratio"] = row.rate / base.rate
                d["cpu_ratio"] = row.cpu_per_unit / base.cpu_per_unit if base.cpu_per_unit else None
        else:
            d["ns_per_call"] = 1e9 / row.rate
            d["cpu_ns_per_call"] = row.cpu_per_unit * 1e9
            if base is not None:
                d["time_ratio"] = base.rate / row.rate
        d["samples"] = len(row.samples)
        out.append(d)
    return out


def format_table(results: Sequence[Dict[str, object]]) -> str:
    head = f"{'case':34} {'contender':26} {'speed':>14} {'CPU':>16} {'ratio to stdlib':>22}"
    lines = [head, "-" * len(head)]
    last = None
    for d in results:
        case = str(d["case"]) if d["case"] != last else ""
        last = d["case"]
        if d["unit"] == "bytes":
            speed = f"{d['gib_per_s']:.2f} GiB/s"
            cpu = f"{d['cpu_s_per_gib']:.3f} s/GiB"
            if d["role"] == "stdlib" or "speed_ratio" not in d:
                ratio = "(baseline)" if d["role"] == "stdlib" else ""
            else:
                cr = d.get("cpu_ratio")
                ratio = f"{d['speed_ratio']:.2f}x speed" + (f", {cr:.2f}x CPU" if cr else "")
        else:
            speed = f"{d['ns_per_call']:.0f} ns/call"
            cpu = f"{d['cpu_ns_per_call']:.0f} ns CPU"
            if d["role"] == "stdlib":
                ratio = "(baseline)"
            else:
                ratio = f"{d['time_ratio']:.2f}x time" if "time_ratio" in d else ""
        lines.append(f"{case:34} {d['label']:26} {speed:>14} {cpu:>16} {ratio:>22}")
    return "\n".join(lines)


def plot(results: Sequence[Dict[str, object]], path: str) -> None:
    """Write a PNG bar chart of the ratios (needs matplotlib: zcio[plot])."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise SystemExit("--plot needs matplotlib: pip install 'zcio[plot]'") from exc
    shown = [d for d in results if d["role"] != "stdlib"]
    labels = [f"{d['case']}\n{d['label']}" for d in shown]
    values = [
        float(d["cpu_ratio"]) if d.get("cpu_ratio") else float(d.get("time_ratio") or 0)  # type: ignore[arg-type]
        for d in shown
    ]
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(shown) + 1.5))
    ax.barh(range(len(shown)), values, color=["#2a7" if v <= 1 else "#c52" for v in values])
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks(range(len(shown)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("CPU per GiB (or time per call) relative to the stdlib; < 1 is better")
    ax.set_title(f"zcio bench, Linux {platform.release()}, Python {platform.python_version()}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer rounds (under a minute)")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    p.add_argument("--plot", metavar="FILE", help="also write a PNG chart of the ratios to FILE")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per case (default 9, quick 5)")
    p.add_argument("--case", action="append", metavar="TEXT", help="only cases whose name contains TEXT (repeatable)")


def main(args: argparse.Namespace) -> int:
    cases = [c for c in CASES if not args.case or any(t in c.name for t in args.case)]
    if not cases:
        print(f"no case matches {args.case}; cases: {[c.name for c in CASES]}", file=sys.stderr)
        return 2
    log = (lambda s: None) if args.json else (lambda s: print(s, file=sys.stderr, flush=True))
    rows = run_cases(cases, quick=args.quick, rounds=args.rounds, log=log)
    results = ratios(rows)
    if args.json:
        print(json.dumps({"python": platform.python_version(), "kernel": platform.release(), "results": results}, indent=2))
    else:
        print(format_table(results))
    if args.plot:
        plot(results, args.plot)
    return 0
