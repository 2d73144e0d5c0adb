"""The cluster around the pool: its idle capacity collected (SLURM, HyperQueue, this machine),
kept in a history, rebuilt from traces, forecast, backtested and served at ``/api/forecast``.
"""
