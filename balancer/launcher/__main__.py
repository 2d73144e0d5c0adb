"""``python -m balancer.launcher -- <server command>``: what every job script runs on a compute node."""

import sys

from balancer.launcher.main import main

sys.exit(main())
