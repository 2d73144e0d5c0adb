"""The multi-node tier's fixtures (tests/multinode/fixture.py)."""

from tests.multinode.fixture import mn, multinode_cluster  # noqa: F401 - shared fixtures
