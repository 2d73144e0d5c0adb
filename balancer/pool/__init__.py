"""balancer.pool."""
