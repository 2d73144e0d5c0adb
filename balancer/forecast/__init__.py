"""Forecasts of the cluster's idle capacity: series on a grid, forecasters, backtests, the live service."""
