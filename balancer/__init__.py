"""umbridge-balancer: one UM-Bridge endpoint in front of a warm, reused pool of model servers."""

__version__ = "0.2.0.dev0"  # the one place; pyproject.toml reads it (CHANGELOG.md)
