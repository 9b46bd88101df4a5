"""The QEMU guest agent of the lab's VMs and the Windows guests behind it (issue 14).

- ``model``: a Windows guest's state (updates, programs, scheduled tasks, reboot pending);
- ``scripts``: the lab's interpretation of moxflow's ``.ps1`` files, which it accepts only
  byte for byte (decoded from ``-EncodedCommand``), acting on the JSON of ``input-data``;
- ``api``: ``agent/ping``, ``get-osinfo``, ``exec``, ``exec-status`` and ``status/reboot``;
- ``system``: ``AgentSystem``: processes, reboots, faults, the ``windows`` control.
"""
