"""balancer.cli."""
