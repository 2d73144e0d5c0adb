"""UM-Bridge model ``waiter``: mostly idle, like a model waiting on a remote service or a licence.

Each call sleeps ``WAITER_S`` (default 0.3) seconds times the input ``x`` (0..20) and uses almost
no CPU. Returns the seconds waited. Serves on ``$PORT``.
"""

import os
import time

from _workload import WorkModel

WAIT_S = float(os.environ.get("WAITER_S", "0.3"))


def wait(x: float) -> float:
    start = time.monotonic()
    time.sleep(WAIT_S * x)
    return time.monotonic() - start


if __name__ == "__main__":
    from serving import serve

    serve([WorkModel("waiter", wait)])
