"""The SSH server of one simulated host (asyncssh).

Commands run in a real ``/bin/sh -c`` whose PATH starts with the lab's tool shims, so pipes,
quoting and exit codes behave as on a real host. Only public-key authentication against the lab's
authorized_keys is offered (re-read at every login, like sshd); no shells, PTYs, forwarding,
agent or SFTP. A fault hook can drop or stall connections and fail, stall, slow down or drop
commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh

FaultHook = Callable[[str, str | None], dict[str, Any] | None]
"""``fault_hook(host, command)``: a fault spec such as ``{"action": "drop"}``, or None.

``command`` is None when a client connects and the command line for each exec request."""

logger = logging.getLogger(__name__)

_CHUNK = 65536


def generate_host_key(path: Path) -> str:
    """Write a new OpenSSH ed25519 private key to ``path`` (mode 0600); return its public line."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(key.export_private_key("openssh"))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return key.export_public_key("openssh").decode("ascii").strip()


async def start_ssh_host(
    *,
    name: str,
    port: int,
    host_key: Path,
    authorized_keys: Path,
    bin_dir: Path,
    socket_path: Path,
    fault_hook: FaultHook,
    droppers: dict[str, Callable[[], None]] | None = None,
) -> asyncssh.SSHAcceptor:
    """Serve host ``name`` on 127.0.0.1:``port`` (0 picks a free port: see ``get_port()``).

    Closing the returned acceptor also drops this host's connections and kills the commands
    still running; ``wait_closed()`` then waits until they are reaped. With ``droppers``,
    ``droppers[name]`` is set to a function that drops every connection of the host (and
    kills their commands) without closing the listener; call it in the event loop's thread.
    """
    host = _SimHost(name, bin_dir, socket_path, authorized_keys, fault_hook)
    if droppers is not None:
        droppers[name] = host.drop_connections
    return await asyncssh.listen(
        "127.0.0.1",
        port,
        tunnel=_GateListener(host),
        server_factory=host.server,
        server_host_keys=[str(host_key)],
        authorized_client_keys=str(authorized_keys),
        process_factory=host.handle,
        encoding=None,
        allow_pty=False,
        agent_forwarding=False,
        x11_forwarding=False,
        allow_scp=False,
        sftp_factory=None,
        line_editor=False,
    )


class _SimHost:
    """What one simulated host's listener, connections and commands share."""

    def __init__(
        self,
        name: str,
        bin_dir: Path,
        socket_path: Path,
        authorized_keys: Path,
        fault_hook: FaultHook,
    ) -> None:
        self.name = name
        self.authorized_keys = authorized_keys
        self.fault_hook = fault_hook
        self.env = {
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "LABSIM_SOCKET": str(socket_path),
            "LABSIM_HOST": name,
            "HOME": "/tmp",
            "LANG": "C.UTF-8",
        }
        self.gates: set[_Gate] = set()
        self.tasks: set[asyncio.Task[Any]] = set()

    def fault(self, command: str | None) -> dict[str, Any]:
        try:
            return self.fault_hook(self.name, command) or {}
        except Exception:
            logger.exception("fault hook failed for %s (%r); running normally", self.name, command)
            return {}

    def server(self) -> asyncssh.SSHServer:
        return _Server(self)

    def drop_connections(self) -> None:
        """Abort every connection of this host, as if its network went away."""
        for gate in list(self.gates):
            gate.abort()

    async def handle(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        """Run one session: an exec request, or a refused shell/subsystem."""
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        try:
            await self._handle(process)
        except Exception:
            logger.exception("session on %s failed", self.name)
            with contextlib.suppress(Exception):
                process.exit(255)
        finally:
            if task is not None:
                self.tasks.discard(task)

    async def _handle(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        command = process.command
        if command is None:
            what = f"the {process.subsystem} subsystem" if process.subsystem else "a shell"
            process.stderr.write(
                f"labsim: {self.name} does not offer {what}; run a command instead\n".encode()
            )
            process.exit(1)
            return
        fault = self.fault(command)
        action = fault.get("action")
        if action == "error":
            out = str(fault.get("stdout") or "")
            err = str(fault.get("stderr") or fault.get("message") or "")
            if err and not err.endswith("\n"):
                err += "\n"
            process.stdout.write(out.encode())
            process.stderr.write(err.encode())
            process.exit(int(fault.get("exit", 1)))
            return
        if action == "hang":
            await process.wait_closed()  # never answers; over when the client gives up
            return
        if action == "drop":
            process.channel.get_connection().abort()
            return
        if action == "slow" and await _closed_within(process, float(fault.get("delay", 0))):
            return
        await self._run(process, command, drop_after=action == "drop-after")

    async def _run(
        self, process: asyncssh.SSHServerProcess[bytes], command: str, *, drop_after: bool = False
    ) -> None:
        """Run ``command`` for the client; ``drop_after``: let it finish, then cut the
        connection before its exit status is sent (the client cannot know it ran)."""
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
            cwd=self.env["HOME"],
            start_new_session=True,  # its own process group, killed as a whole
        )
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        feed = asyncio.ensure_future(_pump_in(process.stdin, proc.stdin))
        finished = asyncio.ensure_future(_finish(proc, process))
        closed = asyncio.ensure_future(process.wait_closed())
        try:
            await asyncio.wait({finished, closed}, return_when=asyncio.FIRST_COMPLETED)
            status = finished.result() if finished.done() else None
            if drop_after:
                process.channel.get_connection().abort()
            elif status is not None and not process.is_closing():
                if status >= 0:
                    process.exit(status)
                else:
                    process.exit_with_signal(signal.Signals(-status).name.removeprefix("SIG"))
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            for task in (feed, finished, closed):
                task.cancel()
            await asyncio.gather(feed, finished, closed, return_exceptions=True)
            await proc.wait()


class _Server(asyncssh.SSHServer):
    """Re-reads authorized_keys at every login, as sshd does."""

    def __init__(self, host: _SimHost) -> None:
        self._host = host
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn

    def begin_auth(self, username: str) -> bool:
        if self._conn is not None:
            try:
                self._conn.set_authorized_keys(str(self._host.authorized_keys))
            except (OSError, ValueError) as exc:
                logger.warning(
                    "%s: cannot read %s: %s", self._host.name, self._host.authorized_keys, exc
                )
                self._conn.set_authorized_keys([])
        return True


async def _closed_within(process: asyncssh.SSHServerProcess[bytes], seconds: float) -> bool:
    """Wait up to ``seconds``; True if the client closed the session meanwhile."""
    try:
        await asyncio.wait_for(process.wait_closed(), timeout=max(0.0, seconds))
    except TimeoutError:
        return False
    return True


async def _pump_in(reader: asyncssh.SSHReader[bytes], writer: asyncio.StreamWriter) -> None:
    """Client data to the command's stdin; EOF from the client closes it."""
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    except (OSError, asyncssh.Error):
        pass  # the command closed its stdin, or the client went away
    finally:
        writer.close()


async def _pump_out(reader: asyncio.StreamReader, writer: asyncssh.SSHWriter[bytes]) -> bool:
    """The command's output to the channel until EOF; False if the client went away."""
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    except (OSError, asyncssh.Error):
        return False
    return True


async def _finish(
    proc: asyncio.subprocess.Process, process: asyncssh.SSHServerProcess[bytes]
) -> int | None:
    """The exit status once all output is forwarded; None if the client went away first."""
    assert proc.stdout is not None and proc.stderr is not None
    sent = await asyncio.gather(
        _pump_out(proc.stdout, process.stdout), _pump_out(proc.stderr, process.stderr)
    )
    if not all(sent):
        return None
    return await proc.wait()


class _Gate(asyncio.Protocol):
    """The TCP side of one connection: applies connect faults, then hands over to asyncssh."""

    def __init__(self, host: _SimHost, session_factory: Callable[[str, int], Any]) -> None:
        self._host = host
        self._session_factory = session_factory
        self._transport: asyncio.Transport | None = None
        self._inner: asyncio.Protocol | None = None
        self._pending: list[bytes] = []
        self._eof = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._host.gates.add(self)
        fault = self._host.fault(None)
        action = fault.get("action")
        if action == "drop":
            transport.abort()
        elif action == "hang":
            pass  # accept, never send a banner; whatever the client sends is ignored
        elif action == "slow":
            delay = max(0.0, float(fault.get("delay", 0)))
            self._timer = asyncio.get_running_loop().call_later(delay, self._start)
        else:
            self._start()

    def _start(self) -> None:
        self._timer = None
        if self._transport is None or self._transport.is_closing():
            return
        inner = self._session_factory("", 0)
        self._inner = inner
        inner.connection_made(self._transport)
        for data in self._pending:
            inner.data_received(data)
        self._pending.clear()
        if self._eof:
            inner.eof_received()

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)
        elif self._timer is not None:
            self._pending.append(data)

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            return self._inner.eof_received()
        self._eof = True
        return self._timer is not None  # keep a delayed connection half-open

    def connection_lost(self, exc: Exception | None) -> None:
        self._host.gates.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


class _GateServer:
    """The listening socket; closing it also drops the host's connections and commands."""

    def __init__(self, server: asyncio.Server, host: _SimHost) -> None:
        self._server = server
        self._host = host

    @property
    def sockets(self) -> tuple[Any, ...]:
        return tuple(self._server.sockets)

    def get_addresses(self) -> list[Any]:
        return [sock.getsockname() for sock in self._server.sockets]

    def is_serving(self) -> bool:
        return self._server.is_serving()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._server.get_loop()

    async def start_serving(self) -> None:
        await self._server.start_serving()

    async def serve_forever(self) -> None:
        await self._server.serve_forever()

    def close(self) -> None:
        self._server.close()
        for gate in list(self._host.gates):
            gate.abort()
        for task in list(self._host.tasks):
            task.cancel()

    async def wait_closed(self) -> None:
        await self._server.wait_closed()
        tasks = list(self._host.tasks)
        if tasks:
            await asyncio.wait(tasks)


class _GateListener:
    """Passed to asyncssh as a tunnel so that this module owns the TCP listener: asyncssh has no
    hook before the SSH version exchange, where connect faults must act."""

    def __init__(self, host: _SimHost) -> None:
        self._host = host

    async def create_server(
        self, session_factory: Callable[[str, int], Any], listen_host: str, listen_port: int
    ) -> _GateServer:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _Gate(self._host, session_factory), listen_host, listen_port
        )
        return _GateServer(server, self._host)
