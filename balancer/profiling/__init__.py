"""balancer.profiling."""
