"""apt on the Proxmox nodes (issue 13): packages and kernels, reboots, HA maintenance and
guest migration.

``packages``: versions, kernels and what apt and dpkg print; ``commands``: the SSH tools of
a node (``apt-get``, ``dpkg``, ``apt-mark``, ``pveversion``, ``proxmox-boot-tool``,
``systemctl``, ``ha-manager``); ``ha``: the HA manager and migrations; ``api``: the routes;
``system``: ``AptSystem``, which ties them to the lab's clock and controls.
"""
