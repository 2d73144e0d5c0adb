"""The cluster around the pool: its capacity sampled over time, kept in a history, imported from traces."""
