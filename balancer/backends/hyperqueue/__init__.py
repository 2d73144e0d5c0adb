"""balancer.backends.hyperqueue."""
