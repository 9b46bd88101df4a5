"""Prefect flows: one module per job, runnable as ``python -m flows.<name>``."""
