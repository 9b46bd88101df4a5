"""SshRunner against the simulated lab's SSH hosts: quoting, exit codes, stdin, host keys,
authentication, dropped connections and timeouts."""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest

from labsim.client import LabClient
from moxflow.errors import (
    ConfigError,
    SshAuthError,
    SshCommandError,
    SshConnectError,
    SshHostKeyError,
    SshTimeout,
)
from moxflow.ssh import CommandResult, SshRunner

pytestmark = pytest.mark.lab

HOSTILE = [
    "a b; $(id)",
    'it\'s "quoted"',
    "`reboot`; rm -rf /",
    "$HOME ${PATH} * ?",
    "line one\nline two",
    "-n",
    "&& || | > < \\",
    "",
]


def _port(lab: LabClient, host: str) -> int:
    return int(lab.info["hosts"][host]["port"])


@pytest.fixture
def faulty_lab(fresh_lab: LabClient) -> Iterator[LabClient]:
    """A fresh lab for a test that breaks it; reset again afterwards for the tests that follow."""
    yield fresh_lab
    fresh_lab.reset()


def runner_for(lab: LabClient, host: str = "pve1", **kwargs: Any) -> SshRunner:
    kwargs.setdefault("key_file", lab.dir / "id_ed25519")
    kwargs.setdefault("known_hosts", lab.dir / "known_hosts")
    return SshRunner(host, "127.0.0.1", _port(lab, host), **kwargs)


@pytest.fixture
def pve1(lab: LabClient) -> Any:
    with runner_for(lab) as runner:
        yield runner


# --- running commands ----------------------------------------------------------------------


def test_zfs_list(pve1: SshRunner) -> None:
    result = pve1.run(["zfs", "list", "-H", "-o", "name"])
    assert isinstance(result, CommandResult)
    assert result.ok
    assert result.host == "pve1"
    assert result.argv == ("zfs", "list", "-H", "-o", "name")
    assert "rpool/data" in result.stdout.splitlines()
    assert result.duration > 0


@pytest.mark.parametrize("arg", HOSTILE)
def test_an_argument_arrives_as_one_literal_argument(pve1: SshRunner, arg: str) -> None:
    assert pve1.run(["printf", "%s", arg]).stdout == arg
    counted = pve1.run(["sh", "-c", 'printf %s "$#"', "sh", arg, "second"])
    assert counted.stdout == "2"


def test_exit_codes_and_check(pve1: SshRunner) -> None:
    argv = ["sh", "-c", "echo out; echo 'disk on fire' >&2; exit 3"]
    result = pve1.run(argv, check=False)
    assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "disk on fire\n")
    assert not result.ok
    with pytest.raises(SshCommandError) as info:
        pve1.run(argv)
    err = info.value
    assert (err.host, err.exit_code, err.stderr) == ("pve1", 3, "disk on fire")
    assert tuple(err.command or ()) == tuple(argv)
    assert "exit 3" in str(err)
    assert "disk on fire" in str(err)


def test_stdin_is_sent_then_closed(pve1: SshRunner) -> None:
    assert pve1.run(["cat"], stdin="hello\nworld\n").stdout == "hello\nworld\n"
    big = "0123456789" * 30_000
    started = time.monotonic()
    assert pve1.run(["wc", "-c"], stdin=big).stdout.strip() == str(len(big))
    assert time.monotonic() - started < 5
    # without stdin the command sees end-of-file at once instead of waiting forever
    assert pve1.run(["cat"], timeout=5).stdout == ""


def test_unicode_output(pve1: SshRunner) -> None:
    assert pve1.run(["printf", "%s", "naïve ☃"]).stdout == "naïve ☃"


def test_one_connection_serves_many_commands(pve1: SshRunner) -> None:
    started = time.monotonic()
    outputs = [pve1.run(["echo", str(i)]).stdout for i in range(10)]
    assert outputs == [f"{i}\n" for i in range(10)]
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("argv", "error"),
    [("zfs list", TypeError), ([], ValueError), (["echo", 1], TypeError), (b"ls", TypeError)],
)
def test_argv_must_be_a_list_of_str(pve1: SshRunner, argv: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        pve1.run(argv)


def test_string_argv_error_shows_the_list_form(pve1: SshRunner) -> None:
    with pytest.raises(TypeError, match=r"\['zfs', 'list'\]"):
        pve1.run("zfs list")


# --- host keys and authentication ----------------------------------------------------------


def test_unknown_host_key_is_refused(lab: LabClient, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with runner_for(lab, known_hosts=empty) as runner, pytest.raises(SshHostKeyError) as info:
        runner.run(["touch", "/tmp/should-not-run"])
    err = info.value
    assert not err.transient
    assert "SHA256:" in str(err)
    assert str(empty) in str(err)
    assert "ssh-keyscan" in str(err)


def test_changed_host_key_is_refused(lab: LabClient, tmp_path: Path) -> None:
    port = _port(lab, "pve1")
    other = paramiko.Ed25519Key.from_private_key_file(str(lab.dir / "id_ed25519"))
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {other.get_name()} {other.get_base64()}\n")
    with runner_for(lab, known_hosts=known) as runner, pytest.raises(SshHostKeyError) as info:
        runner.run(["true"])
    assert "the host key of pve1 changed" in str(info.value)
    assert str(known) in str(info.value)


def test_relaxed_host_keys_accept_with_a_warning(
    lab: LabClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    caplog.set_level(logging.WARNING, logger="moxflow.ssh")
    with runner_for(lab, known_hosts=empty, strict_host_keys=False) as runner:
        assert runner.run(["echo", "hi"]).stdout == "hi\n"
    messages = [r.getMessage() for r in caplog.records]
    assert any("accepting unverified host key" in m for m in messages)
    assert empty.read_text() == ""  # nothing is written back


def test_wrong_client_key_is_an_auth_error(lab: LabClient, tmp_path: Path) -> None:
    key_file = tmp_path / "id_other"
    paramiko.ECDSAKey.generate().write_private_key_file(str(key_file))
    with runner_for(lab, key_file=key_file) as runner, pytest.raises(SshAuthError) as info:
        runner.run(["true"])
    assert "ssh.key_file" in str(info.value)


def test_missing_files_are_config_errors(lab: LabClient, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        runner_for(lab, key_file=tmp_path / "nope")
    assert info.value.setting == "ssh.key_file"
    with pytest.raises(ConfigError) as info:
        runner_for(lab, known_hosts=tmp_path / "nope")
    assert info.value.setting == "ssh.known_hosts"
    garbage = tmp_path / "id_garbage"
    garbage.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nnot a key\n")
    with runner_for(lab, key_file=garbage) as runner, pytest.raises(ConfigError) as info:
        runner.run(["true"])
    assert info.value.setting == "ssh.key_file"


# --- connection trouble and timeouts -------------------------------------------------------


def test_refused_port_is_a_connect_error(lab: LabClient) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runner = SshRunner(
        "ghost",
        "127.0.0.1",
        port,
        key_file=lab.dir / "id_ed25519",
        known_hosts=lab.dir / "known_hosts",
    )
    started = time.monotonic()
    with pytest.raises(SshConnectError) as info:
        runner.run(["true"])
    assert time.monotonic() - started < 2
    assert info.value.transient
    assert "connection refused" in str(info.value)


def test_dropped_connection_then_reconnect(faulty_lab: LabClient) -> None:
    with runner_for(faulty_lab, "pve2") as runner:
        faulty_lab.fault(target="connect", host="pve2", action="drop")
        with pytest.raises(SshConnectError) as info:
            runner.run(["true"])
        assert info.value.host == "pve2"
        faulty_lab.clear_faults()
        assert runner.run(["echo", "back"]).stdout == "back\n"


def test_command_hang_times_out(faulty_lab: LabClient) -> None:
    faulty_lab.fault(target="command", host="pve1", command="^zfs", action="hang")
    with runner_for(faulty_lab) as runner:
        started = time.monotonic()
        with pytest.raises(SshTimeout) as info:
            runner.run(["zfs", "list"], timeout=1)
        elapsed = time.monotonic() - started
        assert 1 <= elapsed < 2.5
        assert "may still be running" in str(info.value)
        faulty_lab.clear_faults()
        # the connection survives a timed-out command
        assert runner.run(["echo", "still here"]).stdout == "still here\n"


def test_command_timeout_default_comes_from_the_runner(faulty_lab: LabClient) -> None:
    faulty_lab.fault(target="command", host="pve1", command="^zfs", action="hang")
    with runner_for(faulty_lab, command_timeout=0.5) as runner:
        started = time.monotonic()
        with pytest.raises(SshTimeout):
            runner.run(["zfs", "list"])
        assert time.monotonic() - started < 1.5


def test_connection_dropped_mid_command(faulty_lab: LabClient) -> None:
    faulty_lab.fault(target="command", host="pve1", command="^printf", action="drop", times=3)
    with runner_for(faulty_lab) as runner:
        for _ in range(3):
            with pytest.raises(SshConnectError) as info:
                runner.run(["printf", "%s", "x"])
            # which words depend on when the drop reached paramiko (under load it can be while
            # the command's threads still read): a connection error either way, worth a retry
            assert re.search(
                r"connection (dropped before the command reported an exit status|broke while "
                r"running|failed while starting the command)",
                str(info.value),
            ), info.value
            assert info.value.transient
        # the next run reconnects by itself
        assert runner.run(["printf", "%s", "x"]).stdout == "x"


def test_killed_by_a_signal_is_not_a_dropped_connection(pve1: SshRunner) -> None:
    # `kill -9 0` kills the command's process group: the server reports a signal, no status
    assert pve1.run(["kill", "-9", "0"], check=False).exit_code == -1
    with pytest.raises(SshCommandError, match="killed by a signal"):
        pve1.run(["kill", "-9", "0"])
    assert pve1.run(["echo", "alive"]).stdout == "alive\n"


@pytest.mark.parametrize("target", ["connect", "command"])
def test_a_dropped_connection_leaves_no_paramiko_traceback(
    faulty_lab: LabClient, target: str, caplog: pytest.LogCaptureFixture
) -> None:
    # the error is in the report already: paramiko's own traceback of its transport thread
    # (21 lines on stderr) only hides it
    caplog.set_level(logging.DEBUG, logger="moxflow")
    with runner_for(faulty_lab, "pve2", strict_host_keys=False) as runner:
        faulty_lab.fault(target=target, host="pve2", command="^true", action="drop")
        with pytest.raises(SshConnectError):
            runner.run(["true"])
    for thread in threading.enumerate():  # the transport thread logs as it dies: let it
        if isinstance(thread, paramiko.Transport):
            thread.join(timeout=10)
    loud = [r for r in caplog.records if r.name.startswith("paramiko") and r.levelno >= 30]
    assert loud == []
    # moxflow's own messages still come through
    assert any(r.name == "moxflow.ssh" and "relaxed" in r.getMessage() for r in caplog.records)
