"""balancer.ops."""
