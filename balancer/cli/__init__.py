"""The ``balancer`` and ``load-balancer`` commands: each subcommand a module, one line and exit 2
on bad input.
"""
