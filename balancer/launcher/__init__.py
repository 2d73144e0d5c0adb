"""balancer.launcher."""
