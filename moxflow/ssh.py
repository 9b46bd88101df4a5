"""Run commands on hosts over SSH: fabric underneath, host keys verified, typed errors on top.

An ``SshRunner`` takes commands as argument lists and quotes them once, here, with
``shlex.join`` (style rule 6). Fabric's defaults are replaced where they are unsafe or not
hermetic: no ``~/.ssh/config``, no agent, no key search, and host keys checked against
``known_hosts`` with an unknown or changed key refused (fabric would accept any key).

Host keys: with ``known_hosts`` given, only that file is trusted (hermetic, what the inventory
does); without it, the user's ``~/.ssh/known_hosts`` is, as ``ssh`` would. With
``strict_host_keys=False`` an unknown key is accepted with a logged warning (a changed key is
still refused: paramiko raises ``BadHostKeyException`` before asking the policy).
"""

from __future__ import annotations

import contextlib
import io
import logging
import shlex
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
from fabric import Config, Connection
from fabric.runners import Remote
from invoke.exceptions import CommandTimedOut, ThreadException

from moxflow.errors import (
    ConfigError,
    SshAuthError,
    SshCommandError,
    SshConnectError,
    SshError,
    SshHostKeyError,
    SshTimeout,
)

__all__ = ["CommandResult", "SshRunner"]

log = logging.getLogger(__name__)


def _quiet_paramiko() -> None:
    """Keep paramiko's transport thread from logging its own traceback of a dropped
    connection: the ``SshConnectError`` raised here already says what happened. A level set
    on purpose (to debug paramiko) is left alone."""
    paramiko_log = logging.getLogger("paramiko")
    if paramiko_log.level == logging.NOTSET:
        paramiko_log.setLevel(logging.CRITICAL)


STDIN_CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class CommandResult:
    """What a command did: exit code, decoded output, and how long it took (s).

    ``exit_code`` is -1 when the command ended without one (killed by a signal).
    """

    host: str
    argv: tuple[str, ...]
    exit_code: int
    stdout: str
    stderr: str
    duration: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def command(self) -> str:
        """The command line as sent to the host."""
        return shlex.join(self.argv)


class _Remote(Remote):  # type: ignore[misc]
    """Fabric's runner, feeding stdin in chunks (invoke reads non-tty streams byte by byte)."""

    input_sleep = 0.002

    def read_our_stdin(self, input_: Any) -> str | None:
        data: str | None = input_.read(STDIN_CHUNK)
        return data

    def generate_result(self, **kwargs: Any) -> Any:
        result = super().generate_result(**kwargs)
        # the server closed the session itself (vs. the connection dying under it)
        result.moxflow_eof = bool(self.channel.eof_received)
        return result


class _RejectUnknownHostKey(paramiko.MissingHostKeyPolicy):
    """Refuse a host whose key is not in known_hosts, saying how to add it."""

    def __init__(self, runner: SshRunner) -> None:
        self._runner = runner

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        r = self._runner
        raise SshHostKeyError(
            f"host key {key.get_name()} {key.fingerprint} of {hostname} is not in "
            f"{r.known_hosts_label}",
            host=r.name,
            hint=r.unknown_key_hint(),
        )


class _WarnUnknownHostKey(paramiko.MissingHostKeyPolicy):
    """Accept an unknown host key with a logged warning (``strict_host_keys = false``)."""

    def __init__(self, runner: SshRunner) -> None:
        self._runner = runner

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        log.warning(
            "%s: accepting unverified host key %s %s of %s (ssh.strict_host_keys = false)",
            self._runner.name,
            key.get_name(),
            key.fingerprint,
            hostname,
        )


class SshRunner:
    """Runs argument lists on one host over one lazily opened, reused SSH connection.

    Commands from several threads are run one at a time. After a connection error the next
    ``run`` reconnects.
    """

    def __init__(
        self,
        name: str,
        address: str,
        port: int = 22,
        *,
        user: str = "root",
        key_file: Path | str | None = None,
        pkey: paramiko.PKey | None = None,
        known_hosts: Path | str | None = None,
        known_hosts_label: str | None = None,
        strict_host_keys: bool = True,
        connect_timeout: float = 10.0,
        command_timeout: float | None = 300.0,
    ) -> None:
        self.name = name
        self.address = address
        self.port = int(port)
        self.user = user
        self.key_file = Path(key_file).expanduser() if key_file is not None else None
        self._pkey = pkey
        self.known_hosts = Path(known_hosts).expanduser() if known_hosts is not None else None
        self.known_hosts_label = known_hosts_label or str(self.known_hosts or "~/.ssh/known_hosts")
        self.strict_host_keys = strict_host_keys
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        if self.key_file is not None and not self.key_file.is_file():
            raise ConfigError(
                f"SSH key {self.key_file} for {name} does not exist", setting="ssh.key_file"
            )
        if self.known_hosts is not None and not self.known_hosts.is_file():
            raise ConfigError(
                f"known_hosts file {self.known_hosts} for {name} does not exist",
                setting="ssh.known_hosts",
                hint="create it from verified keys, e.g. with ssh-keyscan",
            )
        if not strict_host_keys:
            log.warning(
                "%s: host key checking is relaxed (ssh.strict_host_keys = false): unknown "
                "keys are accepted, which allows a man in the middle",
                name,
            )
        self._conn: Connection | None = None
        self._lock = threading.RLock()
        _quiet_paramiko()

    def __repr__(self) -> str:
        return f"SshRunner({self.name!r}, {self.user}@{self.address}:{self.port})"

    def __enter__(self) -> SshRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection, if open; the next ``run`` opens a new one."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                try:
                    conn.close()
                except Exception as exc:  # closing a broken transport may fail; it is gone
                    log.debug("%s: error while closing: %s", self.name, exc)
                conn.client.close()

    def connect(self) -> None:
        """Open the connection now, not at the first command (raises ``SshError``)."""
        with self._lock:
            self._connect(())

    # --- running -------------------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        check: bool = True,
        stdin: str | None = None,
    ) -> CommandResult:
        """Run ``argv`` (quoted once with ``shlex.join``) and return what it did.

        ``timeout`` defaults to ``command_timeout``. With ``check`` a non-zero exit raises
        ``SshCommandError``. ``stdin`` is sent to the command, then end-of-file (always
        sent, so a command reading stdin does not hang).
        """
        args = _validate_argv(argv)
        command = shlex.join(args)
        limit = timeout if timeout is not None else self.command_timeout
        with self._lock:
            conn = self._connect(args)
            started = time.monotonic()
            try:
                result = conn.run(
                    command,
                    hide=True,
                    warn=True,
                    pty=False,
                    timeout=limit,
                    encoding="utf-8",
                    in_stream=io.StringIO(stdin or ""),
                )
            except CommandTimedOut as exc:
                _settle_timer(conn)
                raise _timeout(self.name, args, float(exc.timeout), exc.result.stderr) from exc
            except ThreadException as exc:
                self._drop()
                inner = "; ".join(repr(e.value) for e in exc.exceptions)
                raise SshConnectError(
                    f"connection broke while running: {inner}", host=self.name, command=args
                ) from exc
            except (paramiko.SSHException, EOFError, OSError) as exc:
                self._drop()
                raise SshConnectError(
                    f"connection failed while starting the command: {exc or type(exc).__name__}",
                    host=self.name,
                    command=args,
                ) from exc
            duration = time.monotonic() - started
            exit_code = int(result.exited)
            if exit_code < 0 and limit is not None and duration >= limit:
                # invoke's timer closed the channel, but the run noticed the close before
                # the timer had finished (a race under load): a timeout all the same
                _settle_timer(conn)
                raise _timeout(self.name, args, limit, result.stderr)
            if exit_code < 0 and not self._ended_by_signal(conn, result):
                # paramiko reports -1 when the channel closed without an exit status.
                self._drop()
                raise SshConnectError(
                    "connection dropped before the command reported an exit status",
                    host=self.name,
                    command=args,
                    stderr=_tail(result.stderr),
                    hint="the command may or may not have completed",
                )
        out = CommandResult(
            host=self.name,
            argv=args,
            exit_code=exit_code,
            stdout=result.stdout,
            stderr=result.stderr,
            duration=duration,
        )
        log.debug("%s: `%s` exited %d in %.2fs", self.name, command, exit_code, duration)
        if check and exit_code != 0:
            raise SshCommandError(
                "command failed"
                if exit_code > 0
                else "command ended without an exit status (killed by a signal)",
                host=self.name,
                command=args,
                exit_code=exit_code,
                stderr=_tail(result.stderr),
            )
        return out

    # --- connecting ----------------------------------------------------------------------

    def _connect(self, argv: tuple[str, ...]) -> Connection:
        conn = self._conn
        if conn is not None and conn.is_connected:
            return conn
        if conn is not None:
            self._drop()
        conn = self._new_connection()
        try:
            conn.open()
        except SshError as exc:
            conn.client.close()
            exc.command = exc.command or argv
            raise
        except Exception as exc:
            conn.client.close()
            raise self._connect_error(exc, argv) from exc
        # SSH sends many small packets back to back; without this, Nagle's algorithm meets
        # delayed ACKs and every command costs an extra ~40 ms.
        sock = conn.transport.sock
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._conn = conn
        return conn

    def _new_connection(self) -> Connection:
        connect_kwargs: dict[str, Any] = {
            "look_for_keys": False,
            "allow_agent": False,
            "timeout": self.connect_timeout,
            "banner_timeout": self.connect_timeout,
            "auth_timeout": self.connect_timeout,
            "channel_timeout": self.connect_timeout,
        }
        pkey = self._client_key()
        if pkey is not None:
            connect_kwargs["pkey"] = pkey
        config = Config(
            overrides={"load_ssh_configs": False, "runners": {"remote": _Remote}}, lazy=True
        )
        conn = Connection(
            host=self.address,
            user=self.user,
            port=self.port,
            config=config,
            connect_kwargs=connect_kwargs,
        )
        client: paramiko.SSHClient = conn.client
        # fabric installs AutoAddPolicy (accept anything): replace it.
        if self.known_hosts is not None:
            client.load_system_host_keys(str(self.known_hosts))
        else:
            client.load_system_host_keys()
        policy: paramiko.MissingHostKeyPolicy = (
            _RejectUnknownHostKey(self) if self.strict_host_keys else _WarnUnknownHostKey(self)
        )
        client.set_missing_host_key_policy(policy)
        return conn

    def _ended_by_signal(self, conn: Connection, result: Any) -> bool:
        """No exit status: killed by a signal (paramiko ignores ``exit-signal``), or the
        connection died under the command? Ask the server for a session to find out."""
        transport = conn.transport
        if transport is None or not transport.is_active():
            return False
        if getattr(result, "moxflow_eof", False):
            return True  # OpenSSH sends EOF before exit-signal; a dead link sends nothing
        try:
            probe = transport.open_session(timeout=self.connect_timeout)
        except paramiko.ChannelException:
            return True  # refused, but the server answered
        except (paramiko.SSHException, EOFError, OSError):
            return False
        probe.close()
        return bool(transport.is_active())

    def _client_key(self) -> paramiko.PKey | None:
        # Loaded here rather than through key_filename: paramiko then tries every key class
        # and reports a refused key as "encountered EC key, expected OPENSSH key".
        if self._pkey is None and self.key_file is not None:
            try:
                self._pkey = paramiko.PKey.from_path(self.key_file)
            except (
                paramiko.SSHException,
                paramiko.pkey.UnknownKeyType,
                ValueError,
                TypeError,
                OSError,
            ) as exc:
                raise ConfigError(
                    f"cannot use SSH key {self.key_file} for {self.name}: "
                    f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                    setting="ssh.key_file",
                    hint="moxflow needs an unencrypted ed25519, ECDSA or RSA private key",
                ) from None
        return self._pkey

    def unknown_key_hint(self) -> str:
        return (
            f"verify the host's key out of band, then add the line printed by "
            f"`ssh-keyscan -p {self.port} {self.address}` to {self.known_hosts_label}"
        )

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.client.close()
            except Exception as exc:  # already broken
                log.debug("%s: error while dropping the connection: %s", self.name, exc)

    def _connect_error(self, exc: BaseException, argv: tuple[str, ...]) -> SshError:
        where = f"{self.user}@{self.address}:{self.port}"
        known_hosts = self.known_hosts_label
        if isinstance(exc, paramiko.BadHostKeyException):
            return SshHostKeyError(
                f"host key of {where} does not match {known_hosts}: got "
                f"{exc.key.get_name()} {exc.key.fingerprint}",
                host=self.name,
                command=argv,
                hint=(
                    f"the host key of {self.name} changed; if the host was reinstalled, verify "
                    f"the new key and update {known_hosts}"
                ),
            )
        if isinstance(exc, paramiko.AuthenticationException):
            return SshAuthError(
                f"{where} did not accept our key: {exc}",
                host=self.name,
                command=argv,
                hint=f"check ssh.key_file ({self.key_file}) and the host's authorized_keys",
            )
        text = str(exc)
        if isinstance(exc, paramiko.SSHException) and "not found in known_hosts" in text:
            return SshHostKeyError(
                f"host key of {where} is not in {known_hosts}",
                host=self.name,
                command=argv,
                hint=self.unknown_key_hint(),
            )
        if isinstance(exc, paramiko.SSHException) and "No authentication methods" in text:
            return SshAuthError(
                f"no key to log in to {where} with",
                host=self.name,
                command=argv,
                hint="set ssh.key_file",
            )
        if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
            reason = "connection refused"
        elif isinstance(exc, socket.timeout | TimeoutError):
            reason = f"timed out after {self.connect_timeout:g}s"
        elif isinstance(exc, EOFError):
            reason = "the host closed the connection"
        else:
            reason = text or type(exc).__name__
        return SshConnectError(f"cannot connect to {where}: {reason}", host=self.name, command=argv)


def _validate_argv(argv: Sequence[str]) -> tuple[str, ...]:
    if isinstance(argv, str | bytes):
        try:
            example = repr(shlex.split(str(argv)))
        except ValueError:
            example = '["zfs", "list", "-H"]'
        raise TypeError(
            f"argv must be a list of arguments, not a string: pass {example} instead of one "
            "command line (quoting happens once, in SshRunner.run)"
        )
    args = tuple(argv)
    if not args:
        raise ValueError("argv is empty")
    bad = [a for a in args if not isinstance(a, str)]
    if bad:
        raise TypeError(f"every argument must be a str, got {bad[0]!r} ({type(bad[0]).__name__})")
    return args


def _settle_timer(conn: Connection) -> None:
    """Wait for invoke's timeout timer of ``conn`` to finish closing the channel.

    On a timeout the timer's thread closes the channel while the command's thread returns;
    closing the connection before the timer is done makes it fail in its thread (EOFError,
    a traceback on stderr). Bounded: a timer stuck on a dead socket is left behind.
    """
    for thread in threading.enumerate():
        runner = getattr(getattr(thread, "function", None), "__self__", None)
        if isinstance(thread, threading.Timer) and getattr(runner, "context", None) is conn:
            thread.join(timeout=5.0)


def _timeout(host: str, argv: tuple[str, ...], limit: float, stderr: str | None) -> SshTimeout:
    return SshTimeout(
        f"no exit after {limit:g}s",
        host=host,
        command=argv,
        stderr=_tail(stderr),
        hint="the command may still be running on the host",
    )


def _tail(text: str | None, lines: int = 20) -> str:
    if not text:
        return ""
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])
