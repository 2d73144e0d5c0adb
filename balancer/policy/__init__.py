"""balancer.policy: scaling and routing as pure functions of plain data.

``types`` (limits, observations, actions, the decision), ``rules`` (one named function per rule),
``decide`` (composes the rules), ``routing`` (which server takes a call). Imports only itself,
``balancer.config.schema`` and ``balancer.units``.
"""
