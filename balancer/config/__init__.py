"""Configuration: ``schema`` holds the frozen dataclasses every layer types against (it imports nothing
of the balancer); ``parse`` reads and validates the TOML file into them."""
