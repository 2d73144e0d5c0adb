"""balancer.calls."""
