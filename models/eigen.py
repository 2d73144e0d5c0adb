"""The ISC 2025 benchmark model: eigenvalues of a random NxN matrix (seed 1), N = input[0][0].

Model ``posterior``, input size 1, output size 1, returns [[1]] as in the published study; the
compute is the eigen decomposition (about 5 ms for N = 100 here). Serves on ``$PORT``.
"""

import numpy as np
import umbridge


class Posterior(umbridge.Model):
    def __init__(self) -> None:
        super().__init__("posterior")

    def get_input_sizes(self, config):
        return [1]

    def get_output_sizes(self, config):
        return [1]

    def __call__(self, parameters, config):
        n = int(parameters[0][0])
        rng = np.random.default_rng(1)
        np.linalg.eigvals(rng.random((n, n)))
        return [[1.0]]

    def supports_evaluate(self):
        return True


if __name__ == "__main__":
    from serving import serve  # next to this file: $PORT, workers, $UMBRIDGE_HOST

    serve([Posterior()])
