"""UM-Bridge model ``mem_streamer``: memory-bandwidth bound with a large, constant RSS.

At start it allocates and touches ``MEM_STREAMER_MB`` (default 512) MiB of float64; each call adds
1 in place to the whole array ``round(MEM_STREAMER_PASSES * x)`` times (default 8 passes for
``x = 1``, at least 1 for ``x > 0``): every pass reads and writes the array once, 2 x 512 MiB of
memory traffic, little arithmetic. Each call also fills a fresh ``MEM_STREAMER_SCRATCH_MB``
(default 128) MiB anonymous mapping, as a model that allocates its working set per call does:
about 32k minor page faults per call (4 KiB pages; an mmap gets no transparent huge pages unless
they are on for everything). Returns the bytes streamed (read + write). Serves on ``$PORT``.
"""

import mmap
import os

import numpy as np
from _workload import WorkModel

MB = int(os.environ.get("MEM_STREAMER_MB", "512"))
PASSES = float(os.environ.get("MEM_STREAMER_PASSES", "8"))
SCRATCH_MB = min(int(os.environ.get("MEM_STREAMER_SCRATCH_MB", "128")), MB)

data = np.ones(MB * 1024 * 1024 // 8)


def stream(x: float) -> float:
    passes = max(1, round(PASSES * x)) if x > 0 else 0
    for _ in range(passes):
        np.add(data, 1.0, out=data)
    streamed = passes * 2 * data.nbytes
    if passes and SCRATCH_MB > 0:
        buf = mmap.mmap(-1, SCRATCH_MB * 1024 * 1024)  # fresh pages: faulted in as they are written
        scratch = np.frombuffer(buf, dtype=np.float64)
        np.add(data[: scratch.size], 1.0, out=scratch)
        streamed += 2 * scratch.nbytes
        del scratch
        buf.close()  # back to the kernel: the next call faults them in again
    return float(streamed)


if __name__ == "__main__":
    from serving import serve

    serve([WorkModel("mem_streamer", stream)])
