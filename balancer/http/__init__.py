"""balancer.http."""
