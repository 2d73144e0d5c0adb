"""balancer.pool: the servers and what happens to them.

``states`` (the state table), ``servers`` (records and their policy marks), ``specs`` (spec state
and servability), ``adopt`` (ids across restarts), ``jobs`` (submit and cancel, the one owner),
``demand`` (waiting calls, counted once), ``members`` (what the pool needs of the dispatcher),
``pool`` (the facade that changes all of these) and ``scaler`` (applies the policy's decisions).
"""
