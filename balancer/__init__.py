"""umbridge-balancer: one UM-Bridge endpoint in front of a warm, reused pool of model servers."""

__version__ = "0.1.0"
