"""The self-hosted stack, natively: PostgreSQL, ``prefect server start`` on it, a worker.

The same topology as docker-compose.yml, without Docker: a throwaway PostgreSQL cluster from
Debian's packages on a free port in a temporary folder, the Prefect server on it, the
process work pool ``moxflow`` with the deployments from ``prefect.yaml``. Every process
started here is stopped at the end, failure or not.

PostgreSQL refuses to run as root: when the tests run as root (as CI does), ``initdb`` and
``postgres`` run as the ``postgres`` user that Debian's package creates.

Without PostgreSQL's server binaries these tests are skipped, except in CI (``CI=true``),
where that is a failure: ``.ci/run`` installs them.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from labsim.client import LabClient
from tasks.targets import LEASE_STORAGE
from tests.system.stack import (
    DB_NAME,
    DB_USER,
    PG_USER,
    Postgres,
    PrefectStack,
    Service,
    clean_env,
    free_port,
    healthy,
    postgres_bin_dir,
    start,
    wait_for,
)


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI must run these tests; .ci/run installs postgresql)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """PostgreSQL in a temporary folder on a free port; trust auth on 127.0.0.1 only."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        _unavailable(
            "PostgreSQL server binaries (initdb, postgres) not found on PATH or in "
            "/usr/lib/postgresql/*/bin; install them with `apt-get install postgresql`"
        )
    as_user: dict[str, Any] = {}
    base = Path(tempfile.mkdtemp(prefix="moxflow-pg-"))
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        try:
            pw = pwd.getpwnam(PG_USER)
        except KeyError:
            shutil.rmtree(base)
            _unavailable(
                f"running as root and there is no {PG_USER!r} user to run PostgreSQL as "
                "(Debian's postgresql package creates it)"
            )
        os.chown(base, pw.pw_uid, pw.pw_gid)
        as_user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    data = base / "data"
    log = base / "postgres.log"
    env = clean_env(LC_ALL="C")
    service: Service | None = None
    try:
        subprocess.run(
            [
                bin_dir / "initdb",
                *("-D", str(data), "-U", DB_USER, "--auth=trust", "-E", "UTF8", "--no-sync"),
            ],
            env=env,
            cwd=base,
            check=True,
            capture_output=True,
            **as_user,
        )
        port = free_port()
        service = start(
            "postgres",
            [
                str(bin_dir / "postgres"),
                *("-D", str(data), "-p", str(port)),
                *("-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={base}"),
                *("-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"),
            ],
            log,
            env=env,
            cwd=base,
            **as_user,
        )

        def ready() -> bool:
            assert service is not None
            if not service.alive():
                pytest.fail(f"postgres exited:\n{service.tail()}")
            probe = [bin_dir / "pg_isready", "-q", "-h", "127.0.0.1", "-p", str(port)]
            return subprocess.run(probe, env=env, check=False).returncode == 0

        wait_for("PostgreSQL accepting connections", ready, 30, log)
        createdb = bin_dir / "createdb"
        subprocess.run(
            [createdb, "-h", "127.0.0.1", "-p", str(port), "-U", DB_USER, DB_NAME],
            env=env,
            check=True,
            capture_output=True,
        )
        yield Postgres(port, service)
    finally:
        if service is not None:
            service.stop(signal.SIGINT)  # "fast" shutdown
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def prefect_stack(
    postgres: Postgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrefectStack]:
    """``prefect server start`` with its database on the PostgreSQL cluster."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = clean_env(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=api_url,
        PREFECT_SERVER_DATABASE_CONNECTION_URL=postgres.url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        PREFECT_SERVER_UI_API_URL=api_url,
        PREFECT_CLI_PROMPT="false",
        # as docker-compose.yml: leases on disk survive a server restart
        PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=LEASE_STORAGE,
    )
    server = start(
        "prefect server",
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        home / "server.log",
        env=env,
        cwd=home,
    )
    try:

        def up() -> bool:
            if not server.alive():
                pytest.fail(f"the Prefect server exited:\n{server.tail()}")
            return healthy(api_url)

        wait_for("the Prefect server's /api/health", up, 90, server.log)
        yield PrefectStack(api_url, home, env, server)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def berlin_inventory(lab: LabClient) -> Path:
    """A copy of the lab's inventory in time zone Europe/Berlin, next to the original, with
    the schedules of :data:`SCHEDULES`."""
    text = (lab.dir / "inventory.toml").read_text()
    assert 'timezone = "UTC"' in text
    dst = lab.dir / "inventory-berlin.toml"
    schedules = "".join(f'"{name}" = "{cron}"\n' for name, cron in SCHEDULES.items())
    dst.write_text(
        text.replace('timezone = "UTC"', 'timezone = "Europe/Berlin"')
        + f"\n[schedules]\n{schedules}"
    )
    return dst


SCHEDULES = {"health-report/daily": "30 6 * * *", "restore-test/weekly": "off"}
"""The Berlin inventory's [schedules]: one time changed, one schedule turned off."""


@pytest.fixture(scope="session")
def local_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A plain ``prefect server start`` on SQLite, on a free port, as a user runs one on their
    own machine (docs/install.md, "Trying it without a homelab"): its API URL."""
    from scripts.prefect_server import start_server, stop_server

    env = clean_env()
    proc = start_server(tmp_path_factory.mktemp("prefect-local"), env)
    try:
        yield env["PREFECT_API_URL"]
    finally:
        stop_server(proc)
