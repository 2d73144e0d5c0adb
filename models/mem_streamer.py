"""UM-Bridge model ``mem_streamer``: memory-bandwidth bound with a large, constant RSS.

At start it allocates and touches ``MEM_STREAMER_MB`` (default 512) MiB of float64; each call adds
1 in place to the whole array ``round(MEM_STREAMER_PASSES * x)`` times (default 8 passes for
``x = 1``, at least 1 for ``x > 0``): every pass reads and writes the array once, 2 x 512 MiB of
memory traffic, little arithmetic. Returns the bytes streamed (read + write). Serves on ``$PORT``.
"""

import os

import numpy as np
from _workload import WorkModel

MB = int(os.environ.get("MEM_STREAMER_MB", "512"))
PASSES = float(os.environ.get("MEM_STREAMER_PASSES", "8"))

data = np.ones(MB * 1024 * 1024 // 8)


def stream(x: float) -> float:
    passes = max(1, round(PASSES * x)) if x > 0 else 0
    for _ in range(passes):
        np.add(data, 1.0, out=data)
    return float(passes * 2 * data.nbytes)


if __name__ == "__main__":
    from serving import serve

    serve([WorkModel("mem_streamer", stream)])
