"""The simulator: a UQ campaign on a replayed cluster trace, run by the same ``policy.decide`` as
the live scaler on a virtual clock.
"""
