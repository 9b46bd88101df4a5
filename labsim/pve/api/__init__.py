"""The simulated Proxmox VE API: ``server`` (HTTPS, auth, validation) and routes by area."""
