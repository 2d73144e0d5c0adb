"""The shared shape of the workload-class example models: one input, one output, evaluate only.

Each model (``cpu_spinner``, ``mem_streamer``, ``io_writer``, ``waiter``) does a known amount of
one kind of work per call, scaled by its input ``x`` (clamped to 0..MAX_SCALE), so resource
profiles and workload classes can be tested against a stated figure.
"""

from __future__ import annotations

from collections.abc import Callable

import umbridge

MAX_SCALE = 20.0


def scale(parameters: list[list[float]]) -> float:
    """The call's input as a work multiplier: negative or NaN is 0, more than MAX_SCALE is capped."""
    x = float(parameters[0][0])
    return min(max(x, 0.0), MAX_SCALE) if x == x else 0.0


class WorkModel(umbridge.Model):
    """``name(x) = [work(scale(x))]``."""

    def __init__(self, name: str, work: Callable[[float], float]) -> None:
        super().__init__(name)
        self._work = work

    def get_input_sizes(self, config):
        return [1]

    def get_output_sizes(self, config):
        return [1]

    def __call__(self, parameters, config):
        return [[float(self._work(scale(parameters)))]]

    def supports_evaluate(self):
        return True
