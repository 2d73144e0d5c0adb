"""Batch schedulers: the shared base (submit, poll, cancel, adopt) and the job script, with SLURM as
its one small subclass of hooks.
"""
