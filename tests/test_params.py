"""One parameter model per job drives both the Prefect form and the command line."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from flows import params as fp
from flows.params import FlowParams, option

JOBS: dict[str, type[FlowParams]] = {
    "flows.zfs_snapshot:zfs_snapshot": fp.ZfsSnapshotParams,
    "flows.guest_snapshot:guest_snapshot": fp.GuestSnapshotParams,
    "flows.nixos_update:nixos_update": fp.NixosUpdateParams,
    "flows.vzdump_backup:vzdump_backup": fp.VzdumpBackupParams,
    "flows.offsite_copy:offsite_copy": fp.OffsiteCopyParams,
    "flows.restore_test:restore_test": fp.RestoreTestParams,
    "flows.restore:restore": fp.RestoreParams,
    "flows.health_report:health_report": fp.HealthReportParams,
    "flows.proxmox_update:proxmox_update": fp.ProxmoxUpdateParams,
    "flows.windows_update:windows_update": fp.WindowsUpdateParams,
    "flows.windows_provision:windows_provision": fp.WindowsProvisionParams,
}


def load(spec: str) -> tuple[Any, Any]:
    """The job's command module (``flows.X``) and its flow (in ``flows.jobs.X``)."""
    module_name, name = spec.split(":")
    module = importlib.import_module(module_name)
    job = importlib.import_module(module_name.replace("flows.", "flows.jobs.", 1))
    return module, getattr(job, name)


def test_every_job_has_a_model() -> None:
    models = {v for v in vars(fp).values() if isinstance(v, type) and issubclass(v, FlowParams)} - {
        FlowParams
    }
    assert models == set(JOBS.values())


@pytest.mark.parametrize(("spec", "model"), JOBS.items(), ids=list(JOBS))
def test_the_ui_form_is_the_model(spec: str, model: type[FlowParams]) -> None:
    _, flow = load(spec)
    schema = flow.parameters.model_dump()
    props: dict[str, Any] = schema["properties"]
    assert list(props) == list(model.model_fields)
    for name, info in model.model_fields.items():
        assert props[name]["description"] == " ".join((info.description or "").split())
        assert len(props[name]["description"]) > 10
        if info.is_required():
            assert name in schema["required"]
        else:
            assert props[name]["default"] == info.default
    # a run's parameters are checked against the same types
    with pytest.raises(Exception, match="dry_run"):
        flow.validate_parameters({"dry_run": "maybe", **_required(model)})
    with pytest.raises(Exception, match="bogus"):
        flow.validate_parameters({"bogus": 1, **_required(model)})


def test_limits_of_the_model_are_checked_by_prefect_too() -> None:
    _, flow = load("flows.guest_snapshot:guest_snapshot")
    concurrency = flow.parameters.model_dump()["properties"]["concurrency"]
    assert {"minimum": 1, "maximum": 64, "type": "integer"} in concurrency["anyOf"]
    with pytest.raises(Exception, match="greater than or equal to 1"):
        flow.validate_parameters({"concurrency": 0})
    _, restore = load("flows.restore:restore")
    with pytest.raises(Exception, match="greater than or equal to 100"):
        restore.validate_parameters({"vmid": 12})


def _required(model: type[FlowParams]) -> dict[str, Any]:
    return {n: 101 for n, i in model.model_fields.items() if i.is_required()}


@pytest.mark.parametrize(("spec", "model"), JOBS.items(), ids=list(JOBS))
def test_the_command_line_is_the_model(spec: str, model: type[FlowParams]) -> None:
    module, _ = load(spec)
    parser = module.command.parser()
    flags = {a.dest: a for a in parser._actions if a.dest != "help"}
    assert set(flags) == set(model.model_fields)
    for name, info in model.model_fields.items():
        action = flags[name]
        assert action.help and (info.description or "") in action.help
        assert action.required is info.is_required()
        assert action.option_strings[0] in (option(name), "--no-" + name.replace("_", "-"))
        if info.default is None and info.annotation == (bool | None):  # the inventory decides
            assert action.option_strings == [option(name), "--no-" + name.replace("_", "-")]
    # the options, parsed, give the model's defaults
    argv = [x for n in _required(model) for x in (option(n), "101")]
    parsed = fp.params_from_args(model, parser.parse_args(argv))
    assert parsed == model(**_required(model))


def test_options_parse_into_the_model() -> None:
    from flows.vzdump_backup import command as backup_command
    from flows.zfs_snapshot import command as zfs_command

    got = fp.params_from_args(
        fp.ZfsSnapshotParams,
        zfs_command.parser().parse_args(["--only", "pve1,nas/tank", "--only", "pve2", "--dry-run"]),
    )
    assert got.only == ["pve1", "nas/tank", "pve2"] and got.dry_run and got.label == "hourly"
    backup = fp.params_from_args(
        fp.VzdumpBackupParams, backup_command.parser().parse_args(["--no-offsite"])
    )
    assert backup.offsite is False and backup.lock_timeout == 120.0

    from flows.guest_snapshot import command as guest_command

    def guests(*argv: str) -> tuple[bool | None, bool | None]:
        got = fp.params_from_args(fp.GuestSnapshotParams, guest_command.parser().parse_args(argv))
        return got.running_only, got.vmstate

    assert guests() == (None, None)  # the inventory decides
    assert guests("--running-only", "--no-vmstate") == (True, False)


@pytest.mark.parametrize(
    ("module", "argv", "message"),
    [
        ("flows.guest_snapshot", ["--concurrency", "0"], "--concurrency: Input should be greater"),
        ("flows.health_report", ["--only", "backups,disks"], "--only: Input should be"),
        ("flows.restore", ["--vmid", "12"], "--vmid: Input should be greater"),
        ("flows.vzdump_backup", ["--lock-timeout", "-1"], "--lock-timeout"),
    ],
)
def test_bad_options_exit_2_naming_the_option(
    module: str, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    main = importlib.import_module(module).main
    assert main(argv) == 2
    assert message in capsys.readouterr().err
