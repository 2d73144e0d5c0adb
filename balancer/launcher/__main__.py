"""``python -m balancer.launcher -- <server command>``: what every job script runs on a compute node.

The model server starts first (``child.py``: the standard library only), the launcher's own imports
(asyncio and the rest) while it loads.
"""

import sys

from balancer.launcher.child import start_from_argv

started = start_from_argv(sys.argv[1:])

from balancer.launcher.main import main  # noqa: E402 - after the model's start, on purpose

sys.exit(main(started=started))
