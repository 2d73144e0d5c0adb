"""balancer.backends.batch."""
