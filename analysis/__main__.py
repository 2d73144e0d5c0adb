"""``python -m analysis analyze|plot ...``: the analysis CLI without the balancer package."""

import sys

from .cli import main

sys.exit(main())
