"""``python -m balancer.cli``: the ``balancer`` command without its console script."""

import sys

from balancer.cli.main import main

sys.exit(main())
