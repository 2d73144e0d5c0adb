"""balancer.control."""
