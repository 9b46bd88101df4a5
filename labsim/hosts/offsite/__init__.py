"""The offsite host: an SSH host with a real folder that backups are copied to."""

from labsim.hosts.offsite.system import OFFSITE_HOST, OffsiteSystem

__all__ = ["OFFSITE_HOST", "OffsiteSystem"]
