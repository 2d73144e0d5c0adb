"""Backends start model servers (each wrapped in the launcher) somewhere and report their fate.

``registry`` maps a scheduler name to the module implementing it; ``base`` is the interface the pool
drives; ``options`` the typed ``[backend]`` and per-server tables. Backends import only contracts
(``config.schema``, ``units``, ``launcher.contract``), never the pool, the policy or the parser.
"""
