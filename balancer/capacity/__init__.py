"""balancer.capacity."""
