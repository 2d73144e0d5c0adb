"""UM-Bridge test model: model ``forward`` returns 2*x, with gradient, Jacobian and Hessian action.

``TEST_DELAY`` (milliseconds, from the environment) adds a sleep per evaluation. ``TEST_FACTOR``
(default 2) replaces the 2 and ``TEST_INPUT_SIZES`` (default 1) the input size, so that tests can tell
two builds apart. Extra models for tests: ``fail`` raises, ``nan`` returns NaN and inf. Serves on
``$PORT``.
"""

import os
import time

import umbridge

FACTOR = float(os.environ.get("TEST_FACTOR", "2"))
INPUT_SIZE = int(os.environ.get("TEST_INPUT_SIZES", "1"))


def _delay() -> None:
    ms = float(os.environ.get("TEST_DELAY", "0"))
    if ms > 0:
        time.sleep(ms / 1000)


class Forward(umbridge.Model):
    def __init__(self) -> None:
        super().__init__("forward")

    def get_input_sizes(self, config):
        return [INPUT_SIZE]

    def get_output_sizes(self, config):
        return [1]

    def __call__(self, parameters, config):
        _delay()
        return [[FACTOR * parameters[0][0]]]

    def gradient(self, out_wrt, in_wrt, parameters, sens, config):
        return [2.0 * sens[0]]

    def apply_jacobian(self, out_wrt, in_wrt, parameters, vec, config):
        return [2.0 * vec[0]]

    def apply_hessian(self, out_wrt, in_wrt1, in_wrt2, parameters, sens, vec, config):
        return [0.0]

    def supports_evaluate(self):
        return True

    def supports_gradient(self):
        return True

    def supports_apply_jacobian(self):
        return True

    def supports_apply_hessian(self):
        return True


class Fail(umbridge.Model):
    """Raises on every evaluation: its error must reach the client unchanged."""

    def __init__(self) -> None:
        super().__init__("fail")

    def get_input_sizes(self, config):
        return [1]

    def get_output_sizes(self, config):
        return [1]

    def __call__(self, parameters, config):
        raise RuntimeError("model failure on purpose")

    def supports_evaluate(self):
        return True


class NaN(umbridge.Model):
    """Returns NaN and inf, which umbridge servers send as bare ``nan``/``inf`` (not valid JSON)."""

    def __init__(self) -> None:
        super().__init__("nan")

    def get_input_sizes(self, config):
        return [1]

    def get_output_sizes(self, config):
        return [2]

    def __call__(self, parameters, config):
        return [[float("nan"), float("inf")]]

    def supports_evaluate(self):
        return True


if __name__ == "__main__":
    models = [Forward()]
    if os.environ.get("TEST_EXTRA_MODELS"):
        models += [Fail(), NaN()]
    from serving import serve  # next to this file: $PORT, workers, $UMBRIDGE_HOST

    serve(models)
