"""Prefect tasks: one module per external system; each does one action and returns a typed result."""
