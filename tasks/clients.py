"""Build the clients tasks use from the inventory, unwrapping secrets at the last moment."""

from __future__ import annotations

from moxflow.errors import ConfigError
from moxflow.inventory import Inventory
from moxflow.proxmox import ProxmoxClient
from moxflow.ssh import SshRunner


def proxmox_client(inv: Inventory, *, max_connections: int = 10) -> ProxmoxClient:
    """A Proxmox API client for the inventory's cluster (safe to share between threads)."""
    pve = inv.proxmox
    if pve is None:
        raise ConfigError(
            "the inventory has no [proxmox] section; add host, token_id and token_secret",
            setting="proxmox",
        )
    return ProxmoxClient(
        pve.host,
        pve.port,
        token_id=pve.token_id,
        token_secret=pve.token_secret.resolve(inv.base_dir, setting="proxmox.token_secret"),
        ca_file=pve.ca_file,
        verify_tls=pve.verify_tls,
        timeout=pve.timeout,
        max_connections=max_connections,
    )


def ssh_runner(inv: Inventory, host: str) -> SshRunner:
    """An SSH runner for one inventory host, with its key and known_hosts."""
    t = inv.ssh_target(host)
    return SshRunner(
        host,
        t.address,
        t.port,
        user=t.user,
        key_file=t.key_file,
        known_hosts=t.known_hosts,
        strict_host_keys=t.strict_host_keys,
        connect_timeout=t.connect_timeout,
        command_timeout=t.command_timeout,
    )
