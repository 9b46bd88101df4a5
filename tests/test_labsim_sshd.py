"""A simulated SSH host: real shell, tool shims, host keys, key auth and injected faults.

The host runs on an asyncio loop in a background thread; a small Unix-socket server stands in
for the lab daemon and answers the shims' ``exec`` requests with ``run_zfs``, as the daemon does.
Clients are paramiko and fabric, configured the way moxflow connects.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
import paramiko
import pytest
from fabric import Config, Connection
from invoke.exceptions import CommandTimedOut, UnexpectedExit

from labsim.hosts.zfs import ZfsState, default_zfs_state, run_zfs
from labsim.shim import write_shims
from labsim.sshd import generate_host_key, start_ssh_host
from moxflow.ssh import _settle_timer

DEADLINE = 10.0


def wait_until(predicate: Callable[[], bool], timeout: float = DEADLINE) -> None:
    """Poll ``predicate`` until it holds; fail the test at the deadline."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.01)


def pid_gone(pid: int) -> bool:
    """The process has ended: it no longer exists or is a zombie waiting for its reaper."""
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def child_pids() -> set[int]:
    """Processes whose parent is this test process (the hosts' shells run as its children)."""
    me = str(os.getpid())
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[1] == me:
                pids.add(int(entry.name))
    return pids


@dataclass
class Lab:
    """One simulated host and what a test needs to reach and steer it."""

    loop: asyncio.AbstractEventLoop
    root: Path
    zfs: ZfsState
    port: int = 0
    acceptor: Any = None  # asyncssh.SSHAcceptor once started
    stub: Any = None  # the daemon stand-in's asyncio server
    faults: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    hook_calls: list[tuple[str, str | None]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)

    @property
    def client_key(self) -> Path:
        return self.root / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    def fault_hook(self, host: str, command: str | None) -> dict[str, Any] | None:
        self.hook_calls.append((host, command))
        return self.faults.get("connect" if command is None else "exec")

    def call(self, coro: Any, timeout: float = DEADLINE) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def tasks(self) -> int:
        async def count() -> int:
            return len(asyncio.all_tasks()) - 1

        return int(self.call(count()))

    def client(self, *, key: Path | None = None, known_hosts: Path | None = None,
               banner_timeout: float = 5.0) -> paramiko.SSHClient:  # fmt: skip
        client = paramiko.SSHClient()
        client.load_host_keys(str(known_hosts or self.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(
            "127.0.0.1",
            self.port,
            username="root",
            key_filename=str(key or self.client_key),
            look_for_keys=False,
            allow_agent=False,
            timeout=5,
            banner_timeout=banner_timeout,
            auth_timeout=5,
        )
        return client

    def fabric(self) -> Connection:
        conn = Connection(
            "127.0.0.1",
            user="root",
            port=self.port,
            config=Config(overrides={"load_ssh_configs": False}),
            connect_timeout=5,
            connect_kwargs={
                "key_filename": str(self.client_key),
                "look_for_keys": False,
                "allow_agent": False,
            },
        )
        conn.client.load_host_keys(str(self.known_hosts))
        conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        return conn


def run(
    client: paramiko.SSHClient, command: str, stdin: bytes | None = None
) -> tuple[int, str, str]:
    chan = client.get_transport().open_session()  # type: ignore[union-attr]
    chan.settimeout(DEADLINE)
    chan.exec_command(command)
    if stdin is not None:
        chan.sendall(stdin)
        chan.shutdown_write()
    out = chan.makefile("rb").read().decode()
    err = chan.makefile_stderr("rb").read().decode()
    assert chan.status_event.wait(DEADLINE)
    return chan.recv_exit_status(), out, err


async def _daemon_stub(lab: Lab, socket_path: Path) -> asyncio.AbstractServer:
    """What the lab daemon does for the shims: one JSON line in, one JSON line out."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = json.loads(await reader.readline())
        lab.requests.append(request)
        if request["argv"][0] == "zfs":
            rc, out, err = run_zfs(lab.zfs, request["argv"], time.time())
        else:
            rc, out, err = 127, "", f"sh: 1: {request['argv'][0]}: not found\n"
        writer.write(json.dumps({"rc": rc, "stdout": out, "stderr": err}).encode() + b"\n")
        await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(serve, path=str(socket_path))


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="sshd-loop", daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(DEADLINE)
    loop.close()


def _start_lab(loop: asyncio.AbstractEventLoop, root: Path) -> Lab:
    root.mkdir(parents=True, exist_ok=True)
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    (root / "id_ed25519").write_bytes(client_key.export_private_key("openssh"))
    (root / "authorized_keys").write_bytes(client_key.export_public_key("openssh"))
    host_public = generate_host_key(root / "host_ed25519")
    write_shims(root / "bin", ["zfs", "nixos-rebuild"])
    lab = Lab(loop, root, default_zfs_state("pve1", time.time()))

    async def start() -> tuple[asyncssh.SSHAcceptor, asyncio.AbstractServer]:
        stub = await _daemon_stub(lab, root / "lab.sock")
        acceptor = await start_ssh_host(
            name="pve1",
            port=0,
            host_key=root / "host_ed25519",
            authorized_keys=root / "authorized_keys",
            bin_dir=root / "bin",
            socket_path=root / "lab.sock",
            fault_hook=lab.fault_hook,
        )
        return acceptor, stub

    lab.acceptor, stub = lab.call(start())
    lab.port = lab.acceptor.get_port()
    lab.known_hosts.write_text(f"[127.0.0.1]:{lab.port} {host_public}\n")
    lab.stub = stub
    return lab


def _stop_lab(lab: Lab) -> None:
    async def stop() -> None:
        lab.acceptor.close()
        await lab.acceptor.wait_closed()
        lab.stub.close()
        await lab.stub.wait_closed()

    lab.call(stop())


@pytest.fixture(scope="module")
def shared_lab(
    loop: asyncio.AbstractEventLoop, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Lab]:
    lab = _start_lab(loop, tmp_path_factory.mktemp("sshd"))
    yield lab
    _stop_lab(lab)


@pytest.fixture
def lab(shared_lab: Lab) -> Iterator[Lab]:
    """The shared host with no faults and a fresh ZFS state; checks nothing leaks afterwards."""
    shared_lab.faults.clear()
    shared_lab.hook_calls.clear()
    shared_lab.requests.clear()
    shared_lab.zfs = default_zfs_state("pve1", time.time())
    baseline = shared_lab.tasks()
    # other long-lived children (the session's lab daemon, a Prefect server) are not leaks
    children = child_pids()
    yield shared_lab
    shared_lab.faults.clear()
    wait_until(lambda: child_pids() <= children)
    wait_until(lambda: shared_lab.tasks() <= baseline)


def test_zfs_list_through_the_shim(lab: Lab) -> None:
    with lab.client() as client:
        rc, out, err = run(client, "zfs list -H -p -t snapshot -o name,creation")
    assert (rc, err) == (0, "")
    rows = [line.split("\t") for line in out.splitlines()]
    assert [name for name, _ in rows] == [
        "rpool/data@manual-keep",
        "tank/media@autosnap_2026-11-01_00:00:00_daily",
        "tank/media@moxflow-daily-20261101-000000",
    ]
    assert rows[2][1] == "1793491200"
    assert lab.requests[-1] == {
        "op": "exec",
        "host": "pve1",
        "argv": ["zfs", "list", "-H", "-p", "-t", "snapshot", "-o", "name,creation"],
        "stdin": None,
    }


def test_a_real_shell_runs_the_command(lab: Lab) -> None:
    with lab.client() as client:
        assert run(client, "echo hi | cat") == (0, "hi\n", "")
        assert run(client, "echo out; echo err >&2; exit 7") == (7, "out\n", "err\n")
        assert run(client, "printf '%s\\n' 'a b' \"c'd\"") == (0, "a b\nc'd\n", "")


def test_pipes_through_the_shim(lab: Lab) -> None:
    with lab.client() as client:
        rc, out, err = run(
            client, "zfs list -H -o name -t snapshot | grep media | sort -r | head -1"
        )
        assert (rc, out, err) == (0, "tank/media@moxflow-daily-20261101-000000\n", "")
        command = "zfs snapshot -r rpool/data@x && zfs list -H -o name -r -t snapshot rpool"
        assert run(client, command + " | wc -l") == (0, "4\n", "")
    assert lab.zfs.snapshot("rpool/data/vm-101-disk-0@x") is not None


def test_exit_codes_and_stderr_are_forwarded(lab: Lab) -> None:
    with lab.client() as client:
        assert run(client, "zfs destroy rpool/data@manual-keep") == (
            1,
            "",
            "cannot destroy snapshot rpool/data@manual-keep: dataset is busy\n",
        )
        assert run(client, "zfs")[0] == 2
        assert run(client, "nixos-rebuild switch") == (127, "", "sh: 1: nixos-rebuild: not found\n")
        assert run(client, "no-such-tool")[0] == 127
        rc, _out, _err = run(client, "kill -9 $$")
        assert rc == -1  # an exit signal, not a status: paramiko reports -1


def test_environment_is_exactly_the_labs(lab: Lab) -> None:
    with lab.client() as client:
        rc, out, _ = run(client, "env; pwd")
    assert rc == 0
    lines = out.splitlines()
    env = dict(line.split("=", 1) for line in lines[:-1])
    for shell_own in ("PWD", "OLDPWD", "SHLVL", "_"):
        env.pop(shell_own, None)
    assert env == {
        "PATH": f"{lab.root / 'bin'}:/usr/bin:/bin",
        "LABSIM_SOCKET": str(lab.root / "lab.sock"),
        "LABSIM_HOST": "pve1",
        "HOME": "/tmp",
        "LANG": "C.UTF-8",
    }
    assert lines[-1] == "/tmp"


def test_stdin(lab: Lab) -> None:
    (lab.root / "input").write_text("stream-data")
    with lab.client() as client:
        assert run(client, "tr a-z A-Z", stdin=b"hello") == (0, "HELLO", "")
        assert run(client, f"zfs version < {lab.root / 'input'}")[0] == 0
        assert lab.requests[-1]["stdin"] == "stream-data"
        # the client never closes stdin: the shim must not wait for it
        chan = client.get_transport().open_session()  # type: ignore[union-attr]
        chan.exec_command("zfs version")
        assert chan.status_event.wait(DEADLINE)
        assert chan.recv_exit_status() == 0
        assert lab.requests[-1]["stdin"] is None
        chan.close()


def test_fabric_run(lab: Lab) -> None:
    with lab.fabric() as conn:
        result = conn.run("zfs list -H -o name rpool/data", hide=True, warn=True, in_stream=False)
        assert (result.exited, result.stdout, result.stderr) == (0, "rpool/data\n", "")
        result = conn.run("zfs list nope", hide=True, warn=True, in_stream=False)
        assert (result.exited, result.stderr) == (1, "cannot open 'nope': dataset does not exist\n")


def test_unauthorised_key_is_rejected(lab: Lab) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519")
    (lab.root / "other_key").write_bytes(other.export_private_key("openssh"))
    with pytest.raises(paramiko.AuthenticationException):
        lab.client(key=lab.root / "other_key")


def test_password_auth_is_not_offered(lab: Lab) -> None:
    client = paramiko.SSHClient()
    client.load_host_keys(str(lab.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.BadAuthenticationType) as caught:
        client.connect("127.0.0.1", lab.port, username="root", password="secret",
                       look_for_keys=False, allow_agent=False, timeout=5)  # fmt: skip
    assert caught.value.allowed_types == ["publickey"]
    client.close()


def test_authorized_keys_is_read_at_each_login(lab: Lab) -> None:
    original = (lab.root / "authorized_keys").read_bytes()
    try:
        (lab.root / "authorized_keys").write_text("")
        with pytest.raises(paramiko.AuthenticationException):
            lab.client()
        (lab.root / "authorized_keys").unlink()
        with pytest.raises(paramiko.AuthenticationException):
            lab.client()
    finally:
        (lab.root / "authorized_keys").write_bytes(original)
    lab.client().close()


def test_changed_host_key_is_detected(lab: Lab) -> None:
    wrong = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode()
    changed = lab.root / "known_hosts_changed"
    changed.write_text(f"[127.0.0.1]:{lab.port} {wrong}")
    with pytest.raises(paramiko.BadHostKeyException):
        lab.client(known_hosts=changed)
    unknown = lab.root / "known_hosts_empty"
    unknown.write_text("")
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        lab.client(known_hosts=unknown)


def test_shells_and_subsystems_are_refused(lab: Lab) -> None:
    with lab.client() as client:
        chan = client.get_transport().open_session()  # type: ignore[union-attr]
        chan.invoke_shell()
        assert chan.status_event.wait(DEADLINE)
        assert chan.recv_exit_status() == 1
        assert b"does not offer a shell" in chan.makefile_stderr("rb").read()
        with pytest.raises(paramiko.SSHException):
            client.open_sftp()
        with pytest.raises(paramiko.ChannelException):
            client.get_transport().open_channel(  # type: ignore[union-attr]
                "direct-tcpip", ("127.0.0.1", lab.port), ("127.0.0.1", 0)
            )


def test_connect_fault_drop(lab: Lab) -> None:
    lab.faults["connect"] = {"action": "drop"}
    start = time.monotonic()
    with pytest.raises((paramiko.SSHException, EOFError, ConnectionError)):
        lab.client()
    assert time.monotonic() - start < 4
    assert lab.hook_calls == [("pve1", None)]


def test_connect_fault_hang_until_the_client_gives_up(lab: Lab) -> None:
    lab.faults["connect"] = {"action": "hang"}
    start = time.monotonic()
    with pytest.raises(paramiko.SSHException, match="banner"):
        lab.client(banner_timeout=0.5)
    assert 0.5 <= time.monotonic() - start < 4


def test_connect_fault_slow(lab: Lab) -> None:
    lab.faults["connect"] = {"action": "slow", "delay": 0.3}
    start = time.monotonic()
    with lab.client() as client:
        assert time.monotonic() - start >= 0.3
        assert run(client, "echo ok") == (0, "ok\n", "")


def test_exec_fault_error_does_not_run_the_command(lab: Lab) -> None:
    lab.faults["exec"] = {
        "action": "error",
        "exit": 1,
        "stderr": "cannot create snapshot: out of space",
    }
    with lab.client() as client:
        marker = lab.root / "ran"
        assert run(client, f"touch {marker}") == (1, "", "cannot create snapshot: out of space\n")
    assert not marker.exists()
    assert lab.hook_calls[-1] == ("pve1", f"touch {marker}")


def test_exec_fault_slow(lab: Lab) -> None:
    lab.faults["exec"] = {"action": "slow", "delay": 0.3}
    with lab.client() as client:
        start = time.monotonic()
        assert run(client, "zfs list -H -o name tank") == (0, "tank\n", "")
        assert time.monotonic() - start >= 0.3


def test_exec_fault_hang_ends_when_the_client_gives_up(lab: Lab) -> None:
    lab.faults["exec"] = {"action": "hang"}
    with lab.fabric() as conn:
        start = time.monotonic()
        # invoke raises CommandTimedOut, or (when it sees the channel close before its own
        # timer thread has ended, a race under load) UnexpectedExit with no exit status
        with pytest.raises((CommandTimedOut, UnexpectedExit)) as info:
            conn.run("zfs list", hide=True, in_stream=False, timeout=0.5)
        _settle_timer(conn)  # invoke's timer may still be closing the channel (as moxflow does)
        assert time.monotonic() - start < 4
        assert info.value.result.exited == -1
    # the `lab` fixture then checks that the session's task ended


def test_exec_fault_drop_closes_the_connection(lab: Lab) -> None:
    lab.faults["exec"] = {"action": "drop"}
    with lab.client() as client:
        chan = client.get_transport().open_session()  # type: ignore[union-attr]
        chan.exec_command("zfs list")
        assert chan.makefile("rb").read() == b""
        wait_until(lambda: not client.get_transport().is_active())  # type: ignore[union-attr]
        assert chan.recv_exit_status() == -1  # no exit status was sent


def test_timed_out_command_is_killed(lab: Lab) -> None:
    pidfile = lab.root / "sleeper.pid"
    with lab.fabric() as conn:
        with pytest.raises((CommandTimedOut, UnexpectedExit)):  # see above
            conn.run(
                f"sleep 300 & echo $! > {pidfile}; wait", hide=True, in_stream=False, timeout=0.5
            )
        _settle_timer(conn)
    pid = int(pidfile.read_text())
    wait_until(lambda: pid_gone(pid))


def test_dropped_client_kills_its_command(lab: Lab) -> None:
    pidfile = lab.root / "dropped.pid"
    client = lab.client()
    chan = client.get_transport().open_session()  # type: ignore[union-attr]
    chan.exec_command(f"echo $$ > {pidfile}; exec sleep 300")
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip() != "")
    pid = int(pidfile.read_text())
    client.get_transport().sock.close()  # type: ignore[union-attr]  # vanish, no SSH goodbye
    client.close()
    wait_until(lambda: pid_gone(pid))


def test_closing_the_acceptor_drops_sessions_and_kills_commands(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    lab = _start_lab(loop, tmp_path / "h")
    pidfile = tmp_path / "h" / "long.pid"
    client = lab.client()
    chan = client.get_transport().open_session()  # type: ignore[union-attr]
    chan.exec_command(f"echo $$ > {pidfile}; exec sleep 300")
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip() != "")
    pid = int(pidfile.read_text())
    _stop_lab(lab)
    assert pid_gone(pid)
    wait_until(lambda: not client.get_transport().is_active())  # type: ignore[union-attr]
    client.close()
    with pytest.raises((OSError, paramiko.SSHException)):
        lab.client()


def test_host_key_file(tmp_path: Path) -> None:
    public = generate_host_key(tmp_path / "keys" / "ssh_host_ed25519_key")
    path = tmp_path / "keys" / "ssh_host_ed25519_key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert public.startswith("ssh-ed25519 AAAA") and len(public.split()) == 2
    key = paramiko.Ed25519Key.from_private_key_file(str(path))
    assert f"{key.get_name()} {key.get_base64()}" == public
