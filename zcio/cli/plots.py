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
from collections.abc import Callable, Sequence
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
class _Figure:
    """One metric of one contender: the median ratio to the stdlib (None for
    the stdlib itself), each round's ratio, and the absolute median."""

    ratio: float | None
    rounds: list[float]
    text: str


@dataclass
class _Line:
    """One row of the chart."""

    label: str
    role: str
    speed: _Figure
    cpu: _Figure


@dataclass
class _Panel:
    """One metric's side of the chart; ``invert``: lower is better (so the
    axis runs from high to low and better is still to the right)."""

    pick: Callable[[_Line], _Figure]
    title: str
    invert: bool


_PANELS = [
    _Panel(lambda ln: ln.speed, "Speed relative to the stdlib   (faster →)", False),
    _Panel(lambda ln: ln.cpu, "CPU per GiB (or per call) relative to the stdlib   (less CPU →)", True),
]


def _line(d: Result) -> _Line:
    if d["unit"] == "bytes":
        speed, cpu = f"{d['gib_per_s']:.2f} GiB/s", f"{d['cpu_s_per_gib']:.3f} s/GiB"
    else:
        speed, cpu = f"{d['ns_per_call']:.0f} ns/call", f"{d['cpu_ns_per_call']:.0f} ns CPU/call"
    if d["role"] == "stdlib":
        return _Line(str(d["label"]), "stdlib", _Figure(None, [], speed), _Figure(None, [], cpu))
    return _Line(
        str(d["label"]),
        str(d["role"]),
        _Figure(d.get("speed_ratio"), list(d.get("speed_ratio_rounds") or []), speed),
        _Figure(d.get("cpu_ratio"), list(d.get("cpu_ratio_rounds") or []), cpu),
    )


def _layout(results: Sequence[Result]) -> tuple[list[tuple[float, _Line]], list[tuple[float, str]], float]:
    """Rows and case headings with their y positions (down the page), and the
    height: each case's name, then its stdlib contender (the reference), then
    the others, then a gap."""
    cases: dict[str, list[_Line]] = {}
    for d in results:
        line = _line(d)
        rows = cases.setdefault(str(d["case"]), [])
        if line.role == "stdlib":
            rows.insert(0, line)
        else:
            rows.append(line)
    placed: list[tuple[float, _Line]] = []
    headings: list[tuple[float, str]] = []
    y = 0.0
    for case, lines in cases.items():
        headings.append((y, case))
        for line in lines:
            y += 1.0
            placed.append((y, line))
        y += 1.4
    return placed, headings, y - 0.4


_MAX_SPAN = math.log10(20)  # decades each side of 1; beyond, a point sits on the edge


def _span(values: Sequence[float]) -> float:
    """Half-width in decades of a log axis centred on 1 that shows ``values``
    (at least 1/2.5 .. 2.5, at most 1/20 .. 20)."""
    logs = [abs(math.log10(v)) for v in values if v > 0]
    return min(_MAX_SPAN, max([math.log10(2.5)] + [x * 1.12 for x in logs]))


def _ratio_label(x: float) -> str:
    return f"{x:.2f}×" if x < 10 else f"{x:.0f}×"


def _draw_panel(ax: Any, column: Any, rows: list[tuple[float, _Line]], panel: _Panel) -> None:
    """One metric: bars and dots on a log axis in ``ax``, the figures in ``column``."""
    from matplotlib.ticker import FixedLocator, NullLocator

    figures = [(y, ln.role, panel.pick(ln)) for y, ln in rows]
    span = _span([v for _, _, f in figures for v in [f.ratio or 1.0, *f.rounds]])
    lo, hi = 10**-span, 10**span
    ax.set_xscale("log")
    ax.set_xlim((hi, lo) if panel.invert else (lo, hi))
    better, worse = ((lo, 1.0), (1.0, hi)) if panel.invert else ((1.0, hi), (lo, 1.0))
    ax.axvspan(*better, color=_BETTER, zorder=0)
    ax.axvspan(*worse, color=_WORSE, zorder=0)
    ax.axvline(1.0, color="black", linewidth=1, zorder=2)
    steps = (0.2, 0.3, 0.5, 0.7, 1, 1.5, 2, 3, 5) if span < 0.75 else (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20)
    ticks = [t for t in steps if lo <= t <= hi]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{t:g}×" for t in ticks], fontsize=8)
    ax.set_title(panel.title, fontsize=10, loc="left")
    ax.grid(axis="x", color="white", linewidth=1.0, zorder=1)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.tick_params(axis="y", length=0)
    column.axis("off")
    column.set_xlim(0, 1)
    column.text(0.04, -0.75, "ratio", va="center", fontsize=8, color="#555")
    column.text(0.42, -0.75, "median", va="center", fontsize=8, color="#555")

    def clip(v: float) -> float:
        return min(max(v, lo), hi)

    for y, role, f in figures:
        if f.ratio is None:  # the stdlib's row: a mark at 1 and its figure
            if role == "stdlib":
                ax.plot([1.0], [y], marker="D", color="black", markersize=4, zorder=3)
                column.text(0.04, y, f"= {f.text}", va="center", fontsize=8, color="#555")
            else:  # a case without a stdlib contender (os.splice is 3.10+)
                column.text(0.04, y, "n/a", va="center", fontsize=8, color="#555")
                column.text(0.42, y, f.text, va="center", fontsize=8, color="#222")
            continue
        ax.barh(y, clip(f.ratio) - 1.0, left=1.0, height=0.62, color=_ZCIO if role == "zcio" else _PEER, zorder=3)
        if f.rounds:
            shown = [clip(v) for v in f.rounds]
            ax.plot([min(shown), max(shown)], [y, y], color="black", linewidth=0.8, zorder=4)
            ax.plot(shown, [y] * len(shown), linestyle="none", marker="o", markersize=3.2,
                    markerfacecolor="white", markeredgecolor="black", markeredgewidth=0.7, zorder=5)
        good = (f.ratio >= 1.0) != panel.invert
        unclear = bool(f.rounds) and min(f.rounds) < 1.0 < max(f.rounds)  # within the noise
        column.text(0.04, y, _ratio_label(f.ratio), va="center", fontsize=8, fontweight="bold",
                    color="#666" if unclear else "#1a7f37" if good else "#b42318")
        column.text(0.42, y, f.text, va="center", fontsize=8, color="#222")


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
    from matplotlib.transforms import blended_transform_factory

    rows, headings, height = _layout(results)
    fig, axes = plt.subplots(
        1, 4, sharey=True, figsize=(14, 0.3 * height + 1.7),
        gridspec_kw={"wspace": 0.03, "width_ratios": [5, 1.55, 5, 1.75]},
    )
    try:
        for (ax, column), panel in zip([(axes[0], axes[1]), (axes[2], axes[3])], _PANELS):
            _draw_panel(ax, column, rows, panel)
        axes[0].set_ylim(height, -1.2)
        axes[0].set_yticks([y for y, _ in rows])
        axes[0].set_yticklabels(
            [f"{ln.label}  (stdlib)" if ln.role == "stdlib" else ln.label for _, ln in rows], fontsize=8
        )
        at_left = blended_transform_factory(fig.transFigure, axes[0].transData)
        for y, case in headings:  # each case's name heads its rows, from the left edge
            axes[0].text(0.01, y, case, transform=at_left, va="center", fontsize=9, fontweight="bold")
        legend = [
            Patch(color=_ZCIO, label="zcio: median ratio"),
            Patch(color=_PEER, label="another common way"),
            Line2D([], [], linestyle="none", marker="o", markerfacecolor="white", markeredgecolor="black",
                   label="each round (back to back with the stdlib's)"),
            Line2D([], [], linestyle="none", marker="D", color="black", markersize=4, label="the stdlib's way = 1×"),
        ]
        fig.legend(handles=legend, loc="lower left", ncol=4, fontsize=8, frameon=False, bbox_to_anchor=(0.01, 0))
        fig.text(0.99, 0.012, "ratio in green: better, red: worse, grey: the rounds fall on both sides of 1×",
                 ha="right", va="bottom", fontsize=8, color="#555")
        rounds = max((int(d.get("samples", 0)) for d in results), default=0)
        fig.suptitle(
            f"zcio bench — Linux {platform.release()}, Python {platform.python_version()}, "
            f"{rounds} interleaved rounds per case; log scales, better to the right",
            fontsize=11, x=0.01, ha="left",
        )
        inch = fig.get_figheight()
        fig.subplots_adjust(left=0.17, right=0.99, top=1 - 0.85 / inch, bottom=0.55 / inch)
        fig.savefig(path, dpi=110, format="png")
    finally:
        plt.close(fig)
