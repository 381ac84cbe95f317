"""Launcher, run records, checkpoints, teacher and data fetching."""
