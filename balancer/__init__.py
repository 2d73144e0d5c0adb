"""umbridge-balancer: one UM-Bridge endpoint in front of a warm, reused pool of model servers."""

from typing import TYPE_CHECKING

__version__ = "0.2.0.dev0"  # the one place; pyproject.toml reads it (CHANGELOG.md)

if TYPE_CHECKING:  # what type checkers and editors see; at run time __getattr__ imports it on use
    from balancer.session import BalancerPool, open_pool

__all__ = ["BalancerPool", "__version__", "open_pool"]


def __getattr__(name: str) -> object:
    """``balancer.open_pool`` (the Python API, ``balancer.session``), imported on first use so that
    ``import balancer`` (every CLI command, every launcher) stays cheap."""
    if name in ("open_pool", "BalancerPool"):
        from balancer import session

        return getattr(session, name)
    raise AttributeError(f"module 'balancer' has no attribute {name!r}")
