"""moxflow's core: models, planners, parsers and clients, importable without Prefect."""

__version__ = "0.1.0"
