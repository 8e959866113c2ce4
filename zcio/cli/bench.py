"""``zcio bench``: run the cases of :mod:`zcio.bench`; print a table or JSON; plot."""
from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Sequence

from .. import bench
from .errors import fail
from .options import output_file, positive_int
from .plots import check_plotting, plot

__all__ = ["add_arguments", "format_table", "run"]

PROG = "zcio bench"

Result = dict[str, object]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``zcio bench``."""
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer rounds (under a minute)")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    p.add_argument("--plot", metavar="FILE", type=output_file, help="also draw the results as a PNG chart in FILE")
    p.add_argument("--rounds", type=positive_int, default=None, metavar="N",
                   help="interleaved rounds per case (default 7, quick 3)")
    p.add_argument("--case", action="append", metavar="TEXT", help="only cases whose name contains TEXT (repeatable)")


def format_table(results: Sequence[Result]) -> str:
    """The results as the table ``zcio bench`` prints."""
    head = f"{'case':34} {'contender':30} {'speed':>14} {'CPU':>16} {'ratio to stdlib':>22}"
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
        lines.append(f"{case:34} {d['label']:30} {speed:>14} {cpu:>16} {ratio:>22}")
    return "\n".join(lines)


def _select(names: list[str]) -> list[bench.Case]:
    return [c for c in bench.CASES if not names or any(t in c.name for t in names)]


def run(args: argparse.Namespace) -> int:
    """``zcio bench``: 0 when done; 2 when no case matches or ``--plot``
    cannot be drawn (found before the run); 1 with one line on stderr when a
    case fails; 130 on Ctrl-C."""
    cases = _select(args.case or [])
    if not cases:
        print(f"{PROG}: no case matches {args.case}; cases: {[c.name for c in bench.CASES]}", file=sys.stderr)
        return 2
    if args.plot:
        missing = check_plotting()
        if missing:
            print(f"{PROG}: --plot: {missing}", file=sys.stderr)
            return 2

    running = [""]

    def log(line: str) -> None:
        running[0] = line.rstrip(". ")
        if not args.json:
            print(line, file=sys.stderr, flush=True)

    try:
        rows = bench.run_cases(cases, quick=args.quick, rounds=args.rounds, log=log)
    except (OSError, RuntimeError) as exc:
        return fail(f"{PROG}: {running[0]}", exc)
    results = bench.ratios(rows)
    if args.json:
        doc = {"python": platform.python_version(), "kernel": platform.release(), "results": results}
        print(json.dumps(doc, indent=2))
    else:
        print(format_table(results))
    if args.plot:
        try:
            plot(results, args.plot)
        except OSError as exc:
            return fail(f"{PROG}: --plot", exc)
    return 0
