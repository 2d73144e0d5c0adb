"""A UQ campaign as the simulator sees it: when each call arrives and how long it computes.

Compute times are lognormal around a mean (UQ forward models vary by parameter) or resampled from a
balancer journal's evaluations; arrivals are all at once (an MCMC/QMC batch) or at a steady rate.
Everything is drawn from one seeded generator, so a campaign is the same on every run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Campaign:
    """Calls in arrival order: ``arrive[i]`` (s from the campaign's start), ``compute[i]`` (s)."""

    arrive: np.ndarray
    compute: np.ndarray

    def __len__(self) -> int:
        return len(self.arrive)

    @property
    def work_s(self) -> float:
        return float(self.compute.sum())


def lognormal(
    n: int, mean_s: float, sigma: float = 0.5, rate_per_s: float | None = None, seed: int = 0
) -> Campaign:
    """``n`` calls of lognormal compute time with mean ``mean_s``; all at t=0, or Poisson at a rate."""
    if n <= 0 or mean_s <= 0:
        raise ValueError("a campaign needs calls > 0 and a mean compute time > 0")
    rng = np.random.default_rng(seed)
    mu = np.log(mean_s) - sigma**2 / 2  # so the mean, not the median, is mean_s
    compute = rng.lognormal(mu, sigma, n)
    return Campaign(_arrivals(rng, n, rate_per_s), compute)


def from_times(times: np.ndarray, n: int, rate_per_s: float | None = None, seed: int = 0) -> Campaign:
    """``n`` calls whose compute times are drawn (with replacement) from measured ones."""
    t = np.asarray(times, dtype=np.float64)
    t = t[np.isfinite(t) & (t > 0)]
    if n <= 0 or not len(t):
        raise ValueError("a campaign needs calls > 0 and at least one positive compute time")
    rng = np.random.default_rng(seed)
    return Campaign(_arrivals(rng, n, rate_per_s), rng.choice(t, n))


def journal_times(path: str) -> np.ndarray:
    """Evaluation compute times of a balancer journal (needs the analysis extra)."""
    from balancer.analysis.load import load_run

    calls = load_run(path, progress=False).calls
    ev = calls[(calls["op"] == "Evaluate") & (calls["outcome"] == "ok")]
    return ev["compute"].to_numpy(dtype=np.float64)


def _arrivals(rng: np.random.Generator, n: int, rate_per_s: float | None) -> np.ndarray:
    if rate_per_s is None:
        return np.zeros(n)
    if rate_per_s <= 0:
        raise ValueError("the arrival rate must be > 0")
    return np.cumsum(rng.exponential(1.0 / rate_per_s, n)) - 0.0
