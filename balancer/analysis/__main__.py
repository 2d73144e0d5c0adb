"""``python -m balancer.analysis analyze|plot ...``: the analysis CLI alone."""

import sys

from balancer.analysis.cli import main

sys.exit(main())
