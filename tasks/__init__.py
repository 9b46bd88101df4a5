"""Prefect tasks: one module per external system; each does its I/O and returns a typed result."""
