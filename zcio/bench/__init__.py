"""``zcio bench``'s measurements: zcio's paths beside the stdlib's, in one run.

- :mod:`~zcio.bench.harness`: samples, contenders, cases, interleaved rounds
  and the ratios (it knows nothing of zcio);
- :mod:`~zcio.bench.fixtures`: data files, fresh memory, fixed receivers;
- the cases: :mod:`~zcio.bench.movers` (file → socket, socket → socket,
  file → file, file → pipe), :mod:`~zcio.bench.sends` (MSG_ZEROCOPY) and
  :mod:`~zcio.bench.calls` (small-call overhead).

The command line (options, table, JSON, plot) is in ``zcio.cli``; nothing in
the library imports this package.
"""
from __future__ import annotations

from . import calls, fixtures, movers, sends
from .harness import Case, Contender, GiB, Row, Sample, measure, ratios, run_cases

__all__ = ["CASES", "Case", "Contender", "GiB", "Row", "Sample", "fixtures", "measure", "ratios", "run_cases"]

#: Every case, in the order ``zcio bench`` runs them.
CASES: list[Case] = movers.CASES + sends.CASES + calls.CASES
