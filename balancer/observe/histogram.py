"""Log-binned histograms of durations: bins 5 % wide, merged by adding counts.

Bin ``b`` holds the values in ``[LOG_BASE**b, LOG_BASE**(b + 1))`` seconds, so a quantile read from
a bin's middle is within 5 % whatever the scale, any number of histograms (per second, per run,
per model) merge by adding their counts, and a quantile costs a sort of some hundred keys. The
profile store (``profiling.store``, its keys persisted) and the dashboard's latency window
(``ops.feed``) share this binning. A leaf module: it imports nothing of the balancer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

LOG_BASE = 1.05
INV_LOG_BASE = 1 / math.log(LOG_BASE)
FLOOR_S = 1e-6  # shorter (and zero) durations count in the bin of a microsecond


def log_bin(x: float) -> int:
    """The bin of a duration (hot paths may inline this: ``floor(log(x) * INV_LOG_BASE)``)."""
    return math.floor(math.log(x if x > FLOOR_S else FLOOR_S) * INV_LOG_BASE)


def bin_middle(b: int) -> float:
    """The value a quantile that falls in bin ``b`` reads (its geometric middle)."""
    return float(LOG_BASE ** (b + 0.5))


def quantile_bins(hist: Mapping[int, int], qs: Sequence[float]) -> list[int | None]:
    """For each ``q`` the bin where the ``q`` quantile's rank is reached; None for an empty histogram.

    Works for any binning (the caller turns a bin into a value)."""
    items = sorted((b, n) for b, n in hist.items() if n > 0)
    total = sum(n for _, n in items)
    if not total:
        return [None] * len(qs)
    out: list[int | None] = []
    for q in qs:
        rank, seen, found = q * total, 0, items[-1][0]
        for b, n in items:
            seen += n
            if seen >= rank:
                found = b
                break
        out.append(found)
    return out
