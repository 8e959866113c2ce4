"""``zcio bench --plot``: the results as a PNG chart (needs matplotlib).

Two panels side by side, one row per contender, grouped by case: on the
left the speed relative to the case's stdlib contender, on the right the CPU
per unit of work relative to it, both on log scales centred on 1 with the
better side to the right (so the CPU axis runs from more to less). A bar is
the median ratio, the dots are the rounds (each a paired ratio: the two
contenders ran back to back), and the text gives the absolute figures.
"""
from __future__ import annotations

import math
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["check_plotting", "plot"]

Result = dict[str, Any]

_ZCIO = "#1f77b4"
_PEER = "#a0a0a0"
_BETTER = "#e6f4ea"
_WORSE = "#fbeaea"


def check_plotting() -> str | None:
    """None when charts can be drawn, else what is missing (checked before a run)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "needs matplotlib: pip install 'zcio[plot]'"
    return None


@dataclass
class _Line:
    """One row of the chart."""

    label: str
    role: str
    speed: float | None  # median ratio (None: the baseline itself)
    cpu: float | None
    speed_rounds: list[float]
    cpu_rounds: list[float]
    speed_text: str  # absolute figures
    cpu_text: str


def _absolute(d: Result) -> tuple[str, str]:
    if d["unit"] == "bytes":
        return f"{d['gib_per_s']:.2f} GiB/s", f"{d['cpu_s_per_gib']:.3f} s/GiB"
    return f"{d['ns_per_call']:.0f} ns/call", f"{d['cpu_ns_per_call']:.0f} ns CPU/call"


def _groups(results: Sequence[Result]) -> list[tuple[str, list[_Line]]]:
    """Rows by case, in order: the stdlib contender first (the reference)."""
    cases: dict[str, list[_Line]] = {}
    for d in results:
        speed_text, cpu_text = _absolute(d)
        base = d["role"] == "stdlib"
        line = _Line(
            label=str(d["label"]),
            role=str(d["role"]),
            speed=None if base else d.get("speed_ratio"),
            cpu=None if base else d.get("cpu_ratio"),
            speed_rounds=[] if base else list(d.get("speed_ratio_rounds") or []),
            cpu_rounds=[] if base else list(d.get("cpu_ratio_rounds") or []),
            speed_text=speed_text,
            cpu_text=cpu_text,
        )
        rows = cases.setdefault(str(d["case"]), [])
        rows.insert(0, line) if base else rows.append(line)
    return list(cases.items())


_MAX_SPAN = math.log10(20)  # decades each side of 1; beyond, a point sits on the edge


def _span(values: Sequence[float]) -> float:
    """Half-width in decades of a log axis centred on 1 that shows ``values``
    (at least 1/2.5 .. 2.5, at most 1/20 .. 20)."""
    logs = [abs(math.log10(v)) for v in values if v and v > 0]
    return min(_MAX_SPAN, max([math.log10(2.5)] + [x * 1.12 for x in logs]))


def _ratio_label(x: float) -> str:
    return f"{x:.2f}×" if x < 10 else f"{x:.0f}×"


def plot(results: Sequence[Result], path: str) -> None:
    """Write the chart of ``results`` (from ``zcio.bench.ratios``) to ``path`` as PNG.

    Raises:
        ImportError: matplotlib is not installed (``check_plotting`` says so first).
        OSError: ``path`` cannot be written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import FixedLocator, NullLocator
    from matplotlib.transforms import blended_transform_factory

    groups = _groups(results)
    # y positions: a heading per case, then its rows, then a gap
    ys: list[tuple[float, _Line]] = []
    headings: list[tuple[float, str]] = []
    y = 0.0
    for case, lines in groups:
        headings.append((y, case))
        y += 1.0
        for line in lines:
            ys.append((y, line))
            y += 1.0
        y += 0.4
    height = y

    fig, axes = plt.subplots(
        1, 4, sharey=True, figsize=(14, 0.3 * height + 1.7),
        gridspec_kw={"wspace": 0.03, "width_ratios": [5, 1.55, 5, 1.75]},
    )
    panels = [
        (axes[0], axes[1], "speed", "speed_rounds", "speed_text",
         "Speed relative to the stdlib   (faster →)", False),
        (axes[2], axes[3], "cpu", "cpu_rounds", "cpu_text",
         "CPU per GiB (or per call) relative to the stdlib   (less CPU →)", True),
    ]
    for ax, column, key, rounds_key, text_key, title, invert in panels:
        values = [v for _, ln in ys for v in [getattr(ln, key)] + getattr(ln, rounds_key) if v]
        span = _span(values)
        lo, hi = 10 ** -span, 10 ** span
        ax.set_xscale("log")
        ax.set_xlim((hi, lo) if invert else (lo, hi))
        # the better half tinted green, the worse one red
        better, worse = ((lo, 1.0), (1.0, hi)) if invert else ((1.0, hi), (lo, 1.0))
        ax.axvspan(*better, color=_BETTER, zorder=0)
        ax.axvspan(*worse, color=_WORSE, zorder=0)
        ax.axvline(1.0, color="black", linewidth=1, zorder=2)
        steps = (0.2, 0.3, 0.5, 0.7, 1, 1.5, 2, 3, 5) if span < 0.75 else (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20)
        ticks = [t for t in steps if lo <= t <= hi]
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([f"{t:g}×" for t in ticks], fontsize=8)
        ax.set_title(title, fontsize=10, loc="left")
        ax.grid(axis="x", color="white", linewidth=1.0, zorder=1)
        for pos in ("top", "right", "left"):
            ax.spines[pos].set_visible(False)
        ax.tick_params(axis="y", length=0)
        column.axis("off")

        def clip(v: float, lo: float = lo, hi: float = hi) -> float:
            return min(max(v, lo), hi)

        for y, ln in ys:
            ratio = getattr(ln, key)
            if ratio is None:  # the baseline row: a mark at 1 and its figure
                ax.plot([1.0], [y], marker="D", color="black", markersize=4, zorder=3)
                column.text(0.04, y, f"= {getattr(ln, text_key)}", va="center", fontsize=8, color="#555")
                continue
            color = _ZCIO if ln.role == "zcio" else _PEER
            ax.barh(y, clip(ratio) - 1.0, left=1.0, height=0.62, color=color, zorder=3)
            rounds = getattr(ln, rounds_key)
            if rounds:
                shown = [clip(v) for v in rounds]
                ax.plot([min(shown), max(shown)], [y, y], color="black", linewidth=0.8, zorder=4)
                ax.plot(shown, [y] * len(shown), linestyle="none", marker="o", markersize=3.2,
                        markerfacecolor="white", markeredgecolor="black", markeredgewidth=0.7, zorder=5)
            good = (ratio >= 1.0) != invert
            column.text(0.04, y, _ratio_label(ratio), va="center", fontsize=8, fontweight="bold",
                        color="#1a7f37" if good else "#b42318")
            column.text(0.42, y, getattr(ln, text_key), va="center", fontsize=8, color="#222")
        column.set_xlim(0, 1)
        column.text(0.04, -0.75, "ratio", va="center", fontsize=8, color="#555")
        column.text(0.42, -0.75, "median", va="center", fontsize=8, color="#555")
    axes[0].set_ylim(height - 0.4, -1.2)

    axes[0].set_yticks([y for y, _ in ys])
    axes[0].set_yticklabels([(f"{ln.label}  (stdlib)" if ln.speed is None else ln.label) for _, ln in ys], fontsize=8)
    at_left = blended_transform_factory(fig.transFigure, axes[0].transData)
    for y, case in headings:  # each case's name heads its rows, from the left edge
        axes[0].text(0.01, y, case, transform=at_left, va="center", fontsize=9, fontweight="bold")

    legend = [
        Patch(color=_ZCIO, label="zcio: median ratio"),
        Patch(color=_PEER, label="another common way: median ratio"),
        Line2D([], [], linestyle="none", marker="o", markerfacecolor="white", markeredgecolor="black",
               label="each round (ran back to back with the stdlib's)"),
        Line2D([], [], linestyle="none", marker="D", color="black", markersize=4, label="the stdlib's way = 1×"),
    ]
    fig.legend(handles=legend, loc="lower center", ncol=4, fontsize=8, frameon=False)
    rounds_n = max((len(ln.speed_rounds) for _, ln in ys), default=0)
    fig.suptitle(
        f"zcio bench — Linux {platform.release()}, Python {platform.python_version()}, "
        f"{rounds_n} interleaved rounds per case; log scales, better to the right",
        fontsize=11, x=0.01, ha="left",
    )
    inch = fig.get_figheight()
    fig.subplots_adjust(left=0.17, right=0.99, top=1 - 0.85 / inch, bottom=0.55 / inch)
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
