"""Prefect Block types for credentials and connections, and the clients tasks use.

- ``blocks.proxmox``: the ``moxflow Proxmox credentials`` block, and ``proxmox_client(inv)``
  for the inventory's ``[proxmox]``;
- ``blocks.ssh``: the ``moxflow SSH credentials`` block, and ``ssh_runner(inv, host)`` for an
  inventory host;
- ``blocks.secrets``: reads ``block:NAME`` secret references (Prefect Secret blocks) for the
  inventory; importing this package registers it with :mod:`moxflow.inventory.secrets`.
"""

from blocks import secrets  # importing it registers the reader of block: references

__all__ = ["secrets"]
