"""Prefect Block types for credentials and connections."""
