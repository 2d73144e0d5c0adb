"""balancer.policy."""
