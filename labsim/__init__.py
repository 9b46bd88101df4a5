"""The simulated homelab: a Proxmox VE API over HTTPS and SSH hosts with simulated tools."""
