"""balancer.policy: scaling and routing as pure functions of plain data.

``types`` (limits, observations, actions, the decision), ``tick`` (one spec's tally while its rules
run), ``ends`` and ``starts`` (one named function per rule), ``rules`` (their order),
``admission`` and ``harvest`` (the policies' arithmetic), ``decide`` (runs the rules on each spec),
``routing`` (which server takes a call). Imports only itself, ``balancer.config.schema`` and
``balancer.units``.
"""
