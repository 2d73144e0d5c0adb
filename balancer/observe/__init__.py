"""balancer.observe."""
