"""Paired bootstrap intervals: every policy ran the same campaign on the same snapshot, so the
question is the distribution of (policy - demand) per start, not of each policy alone.

Units are campaign starts; the seeds of one start are kept together when resampling (a cluster
bootstrap), since they share the cluster's state and are not independent draws.
"""

from __future__ import annotations

import math

import numpy as np

RESAMPLES = 4000


def bootstrap_mean(
    values: np.ndarray, resamples: int = RESAMPLES, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """Mean and a percentile bootstrap interval of the mean of ``values``: one row per unit
    (a start), columns the repetitions within it (seeds); NaN entries are left out."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[:, None]
    ok = np.isfinite(v)
    if not ok.any():
        return math.nan, math.nan, math.nan
    sums = np.where(ok, v, 0.0).sum(axis=1)
    counts = ok.sum(axis=1)
    keep = counts > 0
    sums, counts = sums[keep], counts[keep]
    mean = float(sums.sum() / counts.sum())
    if len(sums) < 2:
        return mean, math.nan, math.nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(sums), size=(resamples, len(sums)))
    means = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [a, 1.0 - a])
    return mean, float(lo), float(hi)


def paired(
    policy: np.ndarray, base: np.ndarray, resamples: int = RESAMPLES, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of ``policy - base`` over the same (start, seed) cells, with its bootstrap interval."""
    return bootstrap_mean(
        np.asarray(policy, dtype=np.float64) - np.asarray(base, dtype=np.float64), resamples, seed
    )
