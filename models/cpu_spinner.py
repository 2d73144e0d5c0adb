"""UM-Bridge model ``cpu_spinner``: pure CPU, no memory traffic to speak of, no IO, one thread.

Each call spins a Python loop until its own thread has used ``CPU_SPINNER_S`` (default 0.3) CPU
seconds times the input ``x`` (0..20): the CPU time per call is known whatever else runs on the
node (measured with ``time.thread_time``, not the wall clock). Returns the CPU seconds spent.
Serves on ``$PORT``.
"""

import os
import time

from _workload import WorkModel

CPU_S = float(os.environ.get("CPU_SPINNER_S", "0.3"))


def spin(x: float) -> float:
    start = time.thread_time()
    end = start + CPU_S * x
    n = 0
    while time.thread_time() < end:
        for i in range(2000):  # some arithmetic between clock reads
            n += i * i % 7
    return time.thread_time() - start


if __name__ == "__main__":
    from serving import serve

    serve([WorkModel("cpu_spinner", spin)])
