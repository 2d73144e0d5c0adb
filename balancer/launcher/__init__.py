"""The compute-node side: ``python -m balancer.launcher -- <model command>`` runs one model server
on a lease. It imports nothing of the balancer but this folder (``contract`` is what both sides
agree on), so a compute node loads neither the configuration nor the policy.
"""
