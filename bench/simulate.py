"""Alias of ``bench/harvest.py`` (issue 20 replaced the forecast-vs-demand benchmark and its
"oracle" by the four policies, paired over starts and seeds, against bounds D and H).

    python bench/simulate.py [same options as bench/harvest.py]
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.argv[0] = str(Path(__file__).with_name("harvest.py"))
    runpy.run_path(sys.argv[0], run_name="__main__")
