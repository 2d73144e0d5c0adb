"""Configuration: ``schema`` holds the frozen dataclasses every layer types against (it imports nothing
of the balancer); ``parse`` reads and validates the TOML file into them, with ``sections`` for the
optional tables and ``values`` for the typed-value checks both use."""
