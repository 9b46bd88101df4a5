"""The software of the simulated hosts: ``labsim.hosts.zfs`` and ``labsim.hosts.nixos``."""
