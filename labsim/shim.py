"""Writes the tool shims (``zfs``, ``nixos-rebuild``, ...) that simulated hosts run.

A shim is a tiny stdlib-only script: it sends one ``exec`` request to the lab daemon's control
socket (``LABSIM_SOCKET``) for the host in ``LABSIM_HOST`` and replays the answer as its own
stdout, stderr and exit status.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

# Exit status when the daemon cannot be reached, as a shell reports a missing command.
UNREACHABLE_EXIT = 127

_TEMPLATE = """#!{python} -IS
# labsim shim for `{name}`: forwards the command to the lab daemon (written by labsim.shim).
import json, os, select, socket, sys

NAME = {name!r}
SEND_CWD = {send_cwd!r}


def main():
    data = None
    try:
        if not os.isatty(0) and select.select([0], [], [], 0)[0]:
            chunks = []
            while True:
                chunk = os.read(0, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
            data = b"".join(chunks).decode("utf-8", "surrogateescape") or None
    except OSError:
        data = None
    path = os.environ.get("LABSIM_SOCKET", "")
    if not path:
        sys.stderr.write("labsim: %s: LABSIM_SOCKET is not set\\n" % NAME)
        return {unreachable}
    request = {{
        "op": "exec",
        "host": os.environ.get("LABSIM_HOST", ""),
        "argv": [NAME, *sys.argv[1:]],
        "stdin": data,
    }}
    if SEND_CWD:
        try:
            request["cwd"] = os.getcwd()
        except OSError:
            pass
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(path)
            sock.sendall(json.dumps(request).encode() + b"\\n")
            line = sock.makefile("rb").readline()
    except OSError as exc:
        sys.stderr.write("labsim: %s: cannot reach the lab daemon at %r: %s\\n" % (NAME, path, exc))
        return {unreachable}
    try:
        reply = json.loads(line)
        rc = int(reply["rc"])
    except (ValueError, KeyError, TypeError):
        sys.stderr.write("labsim: %s: bad answer from the lab daemon: %r\\n" % (NAME, line[:200]))
        return {unreachable}
    try:
        sys.stdout.write(reply.get("stdout") or "")
        sys.stdout.flush()
        sys.stderr.write(reply.get("stderr") or "")
        sys.stderr.flush()
    except BrokenPipeError:
        return rc or 141
    return rc


if __name__ == "__main__":
    code = main()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        pass
    os._exit(code)
"""


# Commands whose answer depends on the working directory (relative flake paths): their shims
# also send ``cwd``.
SENDS_CWD = frozenset({"nix", "nixos-rebuild", "nix-env", "systemd-run"})


def shim_source(name: str, python: str = sys.executable, *, send_cwd: bool | None = None) -> str:
    """The text of the shim for command ``name`` (sent as argv[0]) run by ``python``."""
    if send_cwd is None:
        send_cwd = name in SENDS_CWD
    return _TEMPLATE.format(
        python=python, name=name, unreachable=UNREACHABLE_EXIT, send_cwd=send_cwd
    )


def write_shims(bin_dir: Path, commands: Iterable[str], python: str = sys.executable) -> None:
    """Write an executable shim per command name into ``bin_dir`` (created if missing)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in commands:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", name):
            raise ValueError(f"not a command name: {name!r}")
        _write_atomic(bin_dir / name, shim_source(name, python))


def write_shim(path: Path, name: str, python: str = sys.executable) -> None:
    """Write one executable shim at ``path`` that sends ``name`` as argv[0] (e.g. its own
    path, for ``system-N-link/bin/switch-to-configuration``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, shim_source(name, python, send_cwd=False))


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o755)  # noqa: S103 - the shims must be executable by the shell
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
