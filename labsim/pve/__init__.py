"""The simulated Proxmox VE cluster: its model, topologies, the API and backups.

``model`` (nodes, guests, snapshots, storages), ``topology`` (the default and generated
clusters), ``system`` (``PveSystem``: guests' snapshots, power, destroying), ``api`` (the HTTPS
server and its routes by area) and ``backups`` (archives, vzdump, pruning, restores).
"""

from __future__ import annotations


def served_endpoints() -> list[tuple[str, str]]:
    """Every (method, template) of PVE's schema the lab's own systems answer."""
    from labsim.lab import default_systems

    return sorted(
        {(r.method, r.template) for s in default_systems() for r in s.routes() if r.in_schema}
    )
