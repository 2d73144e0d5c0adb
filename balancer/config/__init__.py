"""balancer.config."""
