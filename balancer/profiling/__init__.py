"""What each model uses: the profile store and its recorder, auto sizing, workload classes (measured
and the prior from a script's syntax tree) and GPU discovery and assignment.
"""
