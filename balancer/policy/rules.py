"""The scaling rules' order: ``SPEC_RULES``, run on one spec's ``Tick`` by ``decide``.

Each rule reads what the earlier ones left in the tick (which servers start, serve, drain; how many
live servers the spec will have) and appends its actions, so the order is the policy: a hold first,
then what ends (``policy.ends``: start-up and pending timeouts, drains, surplus), then what starts
(``policy.starts``), then the withdrawal of queued starts beyond admission, which must see this
tick's starts too, then idle stops. The tally is ``policy.tick``.

The names below the order are re-exported for the modules that import them from here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from balancer.policy.admission import admissible_cpus as admissible_cpus
from balancer.policy.admission import admission_cpus as admission_cpus
from balancer.policy.ends import (
    drain_before_time_limit,
    give_up_slow_starts,
    hold_after_failures,
    replace_ahead,
    retire_outdated,
    sort_servers,
    stop_drained,
    stop_long_pending,
    trim_to_max_servers,
    withdraw_beyond_admission,
)
from balancer.policy.starts import remember as remember
from balancer.policy.starts import start_servers, start_successors, stop_idle
from balancer.policy.tick import HOLD_RETRY_CAP_S as HOLD_RETRY_CAP_S
from balancer.policy.tick import Tick as Tick
from balancer.policy.tick import hold_retry_s as hold_retry_s
from balancer.policy.tick import start_backoff_s as start_backoff_s

SPEC_RULES: Sequence[Callable[[Tick], None]] = (
    hold_after_failures,
    sort_servers,
    give_up_slow_starts,
    stop_long_pending,
    drain_before_time_limit,
    replace_ahead,
    retire_outdated,
    trim_to_max_servers,
    stop_drained,
    start_servers,
    start_successors,
    withdraw_beyond_admission,
    stop_idle,
)
