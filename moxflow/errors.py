"""Every error moxflow raises, under one base class.

The tree (``transient`` errors are the ones worth retrying with backoff)::

    MoxflowError
    ├── ConfigError                  bad inventory or settings; names the setting to fix
    │   ├── SecretError              a secret reference cannot be resolved
    │   ├── UnsafeNameError          a hostile or invalid dataset, snapshot or label name
    │   ├── SelectionError           a guest selection expression that does not parse
    │   └── RetentionPolicyError     a keep policy that does not parse
    ├── ParseError                   command or API output that is not what we expect
    ├── ProxmoxError                 the Proxmox VE API answered with an error
    │   ├── ProxmoxAuthError         401: wrong token or user
    │   ├── ProxmoxPermissionError   403: the token lacks a privilege
    │   ├── ProxmoxUnavailableError  5xx, 595/596, connection refused or reset   (transient)
    │   ├── GuestLockedError         the guest is locked by another operation    (transient)
    │   ├── ProxmoxTaskError         a task ended with an exit status other than OK/WARNINGS
    │   └── ProxmoxTaskTimeout       a task did not finish in time
    ├── SshError                     a command over SSH failed
    │   ├── SshConnectError          refused, unreachable, dropped                (transient)
    │   ├── SshHostKeyError          unknown or changed host key: never retried
    │   ├── SshAuthError             the key was not accepted
    │   ├── SshCommandError          the command exited non-zero
    │   ├── SshTimeout               the command did not finish in time
    │   └── SshChecksumError         a file copied over SSH arrived different (SHA-256)
    ├── WindowsScriptError           a script in a Windows VM (through the guest agent) exited
    │                                non-zero, crashed, or was lost; names the VM and script
    ├── WebhookError                 a notification webhook failed (5xx, 408, 429: transient)
    ├── UpdateStepFailed             a step of a Proxmox node's update failed; the roll stops
    ├── TargetBusyError              another moxflow run holds the target's slot (after a wait)
    ├── SlotServerError              the Prefect server could not give out a slot  (transient)
    └── RunFailed                    a flow finished with failed targets; carries the report

Every error carries what a person needs to act: the host, command or endpoint, the exit code
or HTTP status, the remote message, and the UPID when there is one. ``str(err)`` is one
readable line and never contains a secret.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar


class MoxflowError(Exception):
    """Base class of every moxflow error."""

    transient: ClassVar[bool] = False

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


# --- configuration -------------------------------------------------------------------------


class ConfigError(MoxflowError):
    """The inventory or settings are wrong; ``setting`` is the dotted name to fix."""

    def __init__(self, message: str, *, setting: str | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.setting = setting

    def __str__(self) -> str:
        text = super().__str__()
        if self.setting and self.setting not in text:
            return f"{self.setting}: {text}"
        return text


class SecretError(ConfigError):
    """A secret reference (``env:``, ``file:``, ``block:``) cannot be resolved."""


class UnsafeNameError(ConfigError, ValueError):
    """A dataset, snapshot, label or host name that is invalid or could inject commands."""


class SelectionError(ConfigError, ValueError):
    """A guest selection expression that does not parse."""


class RetentionPolicyError(ConfigError, ValueError):
    """A keep policy that does not parse (unknown key, negative count, bad syntax)."""


# --- parsing -------------------------------------------------------------------------------


class ParseError(MoxflowError):
    """Output of a command or an API call is not in the shape we expect."""

    def __init__(self, message: str, *, source: str | None = None, text: str | None = None):
        super().__init__(message)
        self.source = source
        self.text = text


# --- Proxmox -------------------------------------------------------------------------------


class ProxmoxError(MoxflowError):
    """The Proxmox VE API refused or failed a request."""

    def __init__(
        self,
        message: str,
        *,
        endpoint: str | None = None,
        method: str | None = None,
        status: int | None = None,
        errors: dict[str, Any] | None = None,
        upid: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.endpoint = endpoint
        self.method = method
        self.status = status
        self.errors = errors or {}
        self.upid = upid

    def __str__(self) -> str:
        where = " ".join(p for p in (self.method, self.endpoint) if p)
        parts = []
        if where:
            parts.append(where)
        if self.status is not None:
            parts.append(f"HTTP {self.status}")
        if self.upid:
            parts.append(self.upid)
        prefix = f"{', '.join(parts)}: " if parts else ""
        detail = ""
        if self.errors:
            detail = " [" + "; ".join(f"{k}: {v}" for k, v in sorted(self.errors.items())) + "]"
        hint = f" ({self.hint})" if self.hint else ""
        return f"{prefix}{self.message}{detail}{hint}"


class ProxmoxAuthError(ProxmoxError):
    """HTTP 401: the API token or user is wrong."""


class ProxmoxPermissionError(ProxmoxError):
    """HTTP 403: the token is valid but lacks a privilege."""


class ProxmoxUnavailableError(ProxmoxError):
    """The API could not be reached or answered 5xx (595/596: a node is unreachable)."""

    transient = True


class GuestLockedError(ProxmoxError):
    """The guest is locked (backup, snapshot, migrate, ...) and refuses the operation."""

    transient = True


class ProxmoxTaskError(ProxmoxError):
    """A Proxmox task finished with an exit status other than ``OK`` or ``WARNINGS: n``."""

    def __init__(self, message: str, *, exitstatus: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.exitstatus = exitstatus


class ProxmoxTaskTimeout(ProxmoxError):
    """A Proxmox task was still running when the wait ran out; it may still finish."""


# --- steps --------------------------------------------------------------------------------


class UpdateStepFailed(MoxflowError):
    """A step of a Proxmox node's update failed (``node``, ``step``: ``upgrade``,
    ``reboot``, ...); the roll stops there. Never retried: the step already waited or
    checked what happened."""

    def __init__(self, node: str, step: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(f"{node}: {step}: {message}", hint=hint)
        self.node = node
        self.step = step


# --- between runs --------------------------------------------------------------------------


class TargetBusyError(MoxflowError):
    """Another moxflow run holds the target (its Prefect concurrency slot) and did not let
    go within the wait. Not retried: the step already waited; the target is reported busy."""

    def __init__(self, targets: Sequence[str], waited: float, lease: float) -> None:
        waiting = f"waited {waited:g}s" if waited > 0 else "tried once"
        super().__init__(
            f"another moxflow run holds {', '.join(targets)} (a Prefect concurrency limit); "
            f"{waiting}",
            hint="the Prefect UI's Concurrency page shows the slots in use; a run that died "
            f"frees its slot within {lease:g}s; the next run does this target",
        )
        self.targets = tuple(targets)


class SlotServerError(MoxflowError):
    """The Prefect server could not be asked for a target's slot (unreachable, 5xx): the
    step did nothing; worth another try."""

    transient = True


# --- SSH -----------------------------------------------------------------------------------


class SshError(MoxflowError):
    """Running a command on a host over SSH failed."""

    def __init__(
        self,
        message: str,
        *,
        host: str,
        command: Sequence[str] | str | None = None,
        exit_code: int | None = None,
        stderr: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.host = host
        self.command = command
        self.exit_code = exit_code
        self.stderr = stderr

    def __str__(self) -> str:
        parts = [self.host]
        if self.command:
            cmd = self.command if isinstance(self.command, str) else " ".join(self.command)
            parts.append(f"`{cmd}`")
        if self.exit_code is not None:
            parts.append(f"exit {self.exit_code}")
        text = f"{' '.join(parts)}: {self.message}"
        if self.stderr and self.stderr.strip() and self.stderr.strip() not in self.message:
            text += f": {self.stderr.strip()}"
        if self.hint:
            text += f" ({self.hint})"
        return text


class SshConnectError(SshError):
    """The host refused, dropped or did not answer the connection."""

    transient = True


class SshHostKeyError(SshError):
    """The host's key is unknown or changed: possible man-in-the-middle, never retried."""


class SshAuthError(SshError):
    """The host did not accept our key."""


class SshCommandError(SshError):
    """The command ran and exited non-zero."""


class SshTimeout(SshError):
    """The command did not finish in time (it may still be running on the host)."""


class SshChecksumError(SshError):
    """A file copied over SSH does not have its source's SHA-256 (damaged on the way)."""


# --- Windows guests -------------------------------------------------------------------------


class WindowsScriptError(MoxflowError):
    """A script moxflow ran in a Windows VM through the QEMU guest agent failed: it exited
    with a code it must not end with, crashed (an NTSTATUS in ``signal``), did not end in
    time, or the agent forgot it (the guest restarted). Carries the VM, the script, how it
    ended and the end of its stderr. Never retried blindly: the script may have acted."""

    def __init__(
        self,
        message: str,
        *,
        vm: str,
        script: str,
        exit_code: int | None = None,
        signal: int | None = None,
        stderr: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.vm = vm
        self.script = script
        self.exit_code = exit_code
        self.signal = signal
        self.stderr = stderr

    def __str__(self) -> str:
        parts = [f"{self.vm}: {self.script}"]
        if self.signal is not None:
            parts.append(f"signal 0x{self.signal & 0xFFFFFFFF:08X}")
        elif self.exit_code is not None:
            parts.append(f"exit code {self.exit_code}")
        text = f"{' '.join(parts)}: {self.message}"
        err = (self.stderr or "").strip()
        if err and err not in self.message:
            text += f": {err}"
        if self.hint:
            text += f" ({self.hint})"
        return text


# --- notifications -------------------------------------------------------------------------


class WebhookError(MoxflowError):
    """The notification webhook answered with an error or could not be reached.

    Carries the endpoint's host (never the URL: it may hold a token) and the HTTP status.
    """

    def __init__(self, message: str, *, host: str, status: int | None = None) -> None:
        super().__init__(f"webhook at {host}: {message}")
        self.host = host
        self.status = status

    @property
    def retryable(self) -> bool:
        """A connection problem, 408, 429 or 5xx: worth another attempt."""
        return self.status is None or self.status in (408, 429) or self.status >= 500


# --- runs ----------------------------------------------------------------------------------


class RunFailed(MoxflowError):
    """A flow finished, but some targets failed; ``report`` says which and why."""

    def __init__(self, message: str, *, report: Any = None) -> None:
        super().__init__(message)
        self.report = report


def is_transient(exc: BaseException) -> bool:
    """Whether retrying ``exc`` with backoff may succeed."""
    return isinstance(exc, MoxflowError) and exc.transient
