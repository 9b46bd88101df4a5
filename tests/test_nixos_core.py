"""NixOS facts and plans as data: raw ``nixos-rebuild``/``systemctl``/``flake.lock`` output in,
typed facts out; hosts in, waves out; facts before and after a switch in, a verdict out."""

from __future__ import annotations

import json
import shlex
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moxflow.errors import ConfigError, ParseError, UnsafeNameError
from moxflow.health import HealthResult
from moxflow.inventory import Inventory, load_inventory
from moxflow.nixos import (
    JOURNAL_PHASES,
    Generation,
    HostFacts,
    Journal,
    JournalPhase,
    LockChange,
    NixosHostSpec,
    RecoveryState,
    arm_deadman_argv,
    build_argv,
    clear_journal_argv,
    current_generation,
    deadman_armed_argv,
    disarm_deadman_argv,
    evaluate,
    failed_units_argv,
    find_cycle,
    flake_update_argv,
    generations_argv,
    lock_argv,
    lock_changes,
    lock_holder,
    lock_orphaned_argv,
    new_failures,
    next_generation,
    next_recovery_step,
    parse_failed_units,
    parse_flake_lock,
    parse_generations,
    parse_system_state,
    plan_update,
    plan_waves,
    prepare_state_dir_argv,
    read_journal_argv,
    revert_argvs,
    switch_argv,
    system_state_argv,
    unlock_argv,
    update_stands,
    validate_remote_path,
    write_journal_argv,
)

PROFILE = "/nix/var/nix/profiles/system"

# --- facts: raw output in, typed values out ------------------------------------------------

# nixos-rebuild list-generations --json (nixos-rebuild-ng prints it with indent=2, newest first)
GENERATIONS = """\
[
  {
    "generation": 43,
    "date": "2026-11-25 03:12:44",
    "nixosVersion": "25.11.20261120.5e4fbfb",
    "kernelVersion": "6.12.58",
    "configurationRevision": "Unknown",
    "specialisations": [],
    "current": true
  },
  {
    "generation": 42,
    "date": "2026-11-18 03:10:02",
    "nixosVersion": "25.11.20261112.c1f53a2",
    "kernelVersion": "6.12.57",
    "configurationRevision": "9f1c2d3e4b5a",
    "specialisations": [
      "no-gpu"
    ],
    "current": false
  },
  {
    "generation": 41,
    "date": "2026-11-11 03:09:51",
    "nixosVersion": "Unknown",
    "kernelVersion": "Unknown",
    "configurationRevision": "Unknown",
    "specialisations": [],
    "current": false
  }
]
"""

# systemctl list-units --failed --output=json
FAILED_UNITS = (
    '[{"unit":"jellyfin.service","load":"loaded","active":"failed","sub":"failed",'
    '"description":"Jellyfin Media Server"},'
    '{"unit":"nix-gc.service","load":"loaded","active":"failed","sub":"failed",'
    '"description":"Nix Garbage Collector"}]\n'
)

FLAKE_LOCK = """\
{
  "nodes": {
    "home-manager": {
      "inputs": {
        "nixpkgs": [
          "nixpkgs"
        ]
      },
      "locked": {
        "lastModified": 1763900000,
        "narHash": "sha256-Hm0x7kRz6H8m1WQ9cY4VY4wq2b3Xk1m2t5iH3u8XyZ0=",
        "owner": "nix-community",
        "repo": "home-manager",
        "rev": "3b8f2c9a0d4e5f60718293a4b5c6d7e8f9a0b1c2",
        "type": "github"
      },
      "original": {
        "owner": "nix-community",
        "ref": "release-25.11",
        "repo": "home-manager",
        "type": "github"
      }
    },
    "nixpkgs": {
      "locked": {
        "lastModified": 1763600000,
        "narHash": "sha256-q2W8m0bY8pV0yJt3b8q9J4m6b1s2d3f4g5h6j7k8l9M=",
        "owner": "NixOS",
        "repo": "nixpkgs",
        "rev": "5e4fbfb6b3de1aa2872b76d49fafc942626e2add",
        "type": "github"
      },
      "original": {
        "owner": "NixOS",
        "ref": "nixos-25.11",
        "repo": "nixpkgs",
        "type": "github"
      }
    },
    "root": {
      "inputs": {
        "home-manager": "home-manager",
        "nixpkgs": "nixpkgs",
        "secrets": "secrets"
      }
    },
    "secrets": {
      "locked": {
        "lastModified": 1760000000,
        "narHash": "sha256-Zx1y2w3v4u5t6s7r8q9p0o1n2m3l4k5j6i7h8g9f0e1=",
        "path": "/etc/nixos/secrets",
        "type": "path"
      },
      "original": {
        "path": "./secrets",
        "type": "path"
      }
    }
  },
  "root": "root",
  "version": 7
}
"""


def test_parse_generations() -> None:
    gens = parse_generations(GENERATIONS)
    assert gens == [
        Generation(
            43,
            datetime(2026, 11, 25, 3, 12, 44),
            "25.11.20261120.5e4fbfb",
            "6.12.58",
            "Unknown",
            True,
        ),
        Generation(
            42,
            datetime(2026, 11, 18, 3, 10, 2),
            "25.11.20261112.c1f53a2",
            "6.12.57",
            "9f1c2d3e4b5a",
            False,
            ("no-gpu",),
        ),
        Generation(41, datetime(2026, 11, 11, 3, 9, 51), "Unknown", "Unknown", "Unknown", False),
    ]
    assert current_generation(gens).number == 43


def test_generation_date_in_another_format_is_kept_as_none() -> None:
    data = json.loads(GENERATIONS)
    data[0]["date"] = "Wed 2026-11-25 03:12:44"
    [first, *_] = parse_generations(json.dumps(data))
    assert first.date is None
    assert first.number == 43


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d[0].update(generation="43"), "generation should be a whole number"),
        (lambda d: d[0].update(generation=0), "generation should be a whole number"),
        (lambda d: d[0].update(generation=True), "generation should be a whole number"),
        (lambda d: d[1].update(generation=43), "generation 43 is listed twice"),
        (lambda d: d[0].pop("current"), "current should be true or false"),
        (lambda d: d[0].update(kernelVersion=6), "kernelVersion should be text"),
        (lambda d: d[0].update(specialisations="no-gpu"), "specialisations should be a list"),
        (lambda d: d.append("44"), "entry 3: not an object"),
    ],
)
def test_parse_generations_refuses_malformed_entries(change: object, message: str) -> None:
    data = json.loads(GENERATIONS)
    change(data)  # type: ignore[operator]
    with pytest.raises(ParseError, match=message):
        parse_generations(json.dumps(data))


@pytest.mark.parametrize("text", ["", "error: not root", "{}", '{"generation": 1}'])
def test_parse_generations_refuses_non_lists(text: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_generations(text)
    assert info.value.source == "nixos-rebuild list-generations"


@pytest.mark.parametrize("currents", [(), (43, 42)])
def test_current_generation_needs_exactly_one(currents: tuple[int, ...]) -> None:
    gens = [Generation(n, None, "", "", "", n in currents) for n in (43, 42, 41)]
    with pytest.raises(ParseError, match="expected one current generation"):
        current_generation(gens)


def test_parse_failed_units() -> None:
    assert parse_failed_units(FAILED_UNITS) == {"jellyfin.service", "nix-gc.service"}
    assert parse_failed_units("[]\n") == frozenset()
    assert parse_failed_units("") == frozenset()


@pytest.mark.parametrize("text", ["0 loaded units listed.", "{}", '[{"load": "loaded"}]', "[1]"])
def test_parse_failed_units_refuses_other_output(text: str) -> None:
    with pytest.raises(ParseError):
        parse_failed_units(text)


def test_new_failures_count_only_units_that_failed_after_the_change() -> None:
    before = {"nix-gc.service"}
    after = parse_failed_units(FAILED_UNITS)
    assert new_failures(before, after) == {"jellyfin.service"}
    assert new_failures(after, before) == frozenset()


@pytest.mark.parametrize(
    "state", ["running", "degraded", "starting", "initializing", "maintenance", "stopping"]
)
def test_parse_system_state(state: str) -> None:
    assert parse_system_state(state + "\n") == state


def test_parse_system_state_refuses_anything_else() -> None:
    with pytest.raises(ParseError, match="unknown state"):
        parse_system_state("Failed to connect to bus: No such file or directory")


def test_parse_flake_lock() -> None:
    assert parse_flake_lock(FLAKE_LOCK) == {
        "home-manager": "3b8f2c9a0d4e5f60718293a4b5c6d7e8f9a0b1c2",
        "nixpkgs": "5e4fbfb6b3de1aa2872b76d49fafc942626e2add",
        "secrets": "sha256-Zx1y2w3v4u5t6s7r8q9p0o1n2m3l4k5j6i7h8g9f0e1=",
    }


def test_lock_changes() -> None:
    before = parse_flake_lock(FLAKE_LOCK)
    data = json.loads(FLAKE_LOCK)
    data["nodes"]["nixpkgs"]["locked"]["rev"] = "c1f53a2b9e0d8a7f6e5d4c3b2a1f0e9d8c7b6a5f"
    del data["nodes"]["secrets"]
    data["nodes"]["sops"] = {"locked": {"narHash": "sha256-abc", "type": "path", "path": "/x"}}
    after = parse_flake_lock(json.dumps(data))
    changes = lock_changes(before, after)
    assert changes == [
        LockChange(
            "nixpkgs",
            "5e4fbfb6b3de1aa2872b76d49fafc942626e2add",
            "c1f53a2b9e0d8a7f6e5d4c3b2a1f0e9d8c7b6a5f",
        ),
        LockChange("secrets", "sha256-Zx1y2w3v4u5t6s7r8q9p0o1n2m3l4k5j6i7h8g9f0e1=", None),
        LockChange("sops", None, "sha256-abc"),
    ]
    assert str(changes[0]) == "nixpkgs: 5e4fbfb6b3de → c1f53a2b9e0d"
    assert str(changes[2]) == "sops: (none) → sha256-abc"
    assert lock_changes(before, before) == []


@pytest.mark.parametrize(
    "text",
    ["", "[]", '{"nodes": []}', '{"nodes": {"nixpkgs": {}}}', '{"nodes": {"a": {"locked": {}}}}'],
)
def test_parse_flake_lock_refuses_malformed(text: str) -> None:
    with pytest.raises(ParseError):
        parse_flake_lock(text)


# --- commands ------------------------------------------------------------------------------

INNER = (
    "nix-env --profile /nix/var/nix/profiles/system --switch-generation 42 && "
    "/nix/var/nix/profiles/system-42-link/bin/switch-to-configuration switch"
)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (flake_update_argv("/etc/nixos"), ["nix", "flake", "update", "--flake", "/etc/nixos"]),
        (
            flake_update_argv("/etc/nixos", commit=True),
            ["nix", "flake", "update", "--flake", "/etc/nixos", "--commit-lock-file"],
        ),
        (
            build_argv("/etc/nixos", "media"),
            ["nixos-rebuild", "build", "--flake", "/etc/nixos#media"],
        ),
        (
            switch_argv("/srv/flakes/home-lab", "nas.lan"),
            ["nixos-rebuild", "switch", "--flake", "/srv/flakes/home-lab#nas.lan"],
        ),
        (generations_argv(), ["nixos-rebuild", "list-generations", "--json"]),
        (failed_units_argv(), ["systemctl", "list-units", "--failed", "--output=json"]),
        (system_state_argv(), ["systemctl", "is-system-running"]),
        (disarm_deadman_argv(), ["systemctl", "stop", "moxflow-deadman.timer"]),
        (deadman_armed_argv(), ["systemctl", "is-active", "moxflow-deadman.timer"]),
        (
            arm_deadman_argv(PROFILE, 42, 120),
            [
                *("systemd-run", "--unit", "moxflow-deadman", "--collect", "--on-active", "120s"),
                "--description",
                "moxflow: revert to generation 42 unless the update is confirmed",
                *("/bin/sh", "-c", INNER),
            ],
        ),
        (
            revert_argvs(PROFILE, 42),
            [
                ["nix-env", "--profile", PROFILE, "--switch-generation", "42"],
                [f"{PROFILE}-42-link/bin/switch-to-configuration", "switch"],
            ],
        ),
        (prepare_state_dir_argv("/var/lib/moxflow"), ["mkdir", "-p", "/var/lib/moxflow"]),
        (lock_argv("/var/lib/moxflow"), ["mkdir", "/var/lib/moxflow/update.lock"]),
        (unlock_argv("/var/lib/moxflow"), ["rm", "-rf", "/var/lib/moxflow/update.lock"]),
        (read_journal_argv("/var/lib/moxflow"), ["cat", "/var/lib/moxflow/journal.json"]),
        (clear_journal_argv("/var/lib/moxflow"), ["rm", "-f", "/var/lib/moxflow/journal.json"]),
        (
            write_journal_argv("/var/lib/moxflow"),
            [
                "/bin/sh",
                "-c",
                "cat > /var/lib/moxflow/journal.json.tmp && "
                "mv /var/lib/moxflow/journal.json.tmp /var/lib/moxflow/journal.json",
            ],
        ),
    ],
)
def test_argv(argv: list[str], expected: list[str]) -> None:
    assert argv == expected


@pytest.mark.parametrize(("seconds", "text"), [(120.0, "120s"), (2.5, "2.5s"), (0.05, "0.05s")])
def test_deadman_seconds(seconds: float, text: str) -> None:
    argv = arm_deadman_argv(PROFILE, 1, seconds)
    assert argv[argv.index("--on-active") + 1] == text


def test_deadman_inner_command_is_the_revert_commands() -> None:
    inner = arm_deadman_argv(PROFILE, 42, 60)[-1]
    first, second = inner.split(" && ")
    reverts = revert_argvs(PROFILE, 42)
    assert shlex.split(first) == reverts[0]
    assert shlex.split(second) == reverts[1]


def test_deadman_quotes_paths_for_the_shell() -> None:
    profile = "/srv/nix/profiles/system@lab+1"
    inner = arm_deadman_argv(profile, 7, 60)[-1]
    assert shlex.split(inner) == [
        *("nix-env", "--profile", profile, "--switch-generation", "7", "&&"),
        *(f"{profile}-7-link/bin/switch-to-configuration", "switch"),
    ]


@pytest.mark.parametrize(
    "path",
    [
        "etc/nixos",
        "/etc/nixos;reboot",
        "/etc/nix os",
        "/etc/$(reboot)",
        "/etc/`id`",
        "/etc/nixos\n",
        "/etc/'x'",
        "/etc/nixos/",
        "",
        "~/nixos",
        "/etc/nix\u0430s",
    ],
)
def test_builders_refuse_unsafe_paths(path: str) -> None:
    with pytest.raises(UnsafeNameError, match="invalid path"):
        validate_remote_path(path)
    for build in (
        lambda: flake_update_argv(path),
        lambda: build_argv(path, "media"),
        lambda: switch_argv(path, "media"),
        lambda: arm_deadman_argv(path, 1, 60),
        lambda: revert_argvs(path, 1),
        lambda: lock_argv(path),
        lambda: write_journal_argv(path),
    ):
        with pytest.raises(UnsafeNameError):
            build()


@pytest.mark.parametrize("attr", ["", "me dia", "media#x", "-media", '"media"', "a" * 64])
def test_builders_refuse_unsafe_attrs(attr: str) -> None:
    with pytest.raises(UnsafeNameError, match="nixosConfigurations attribute"):
        build_argv("/etc/nixos", attr)


@pytest.mark.parametrize("generation", [0, -1, True])
def test_deadman_refuses_bad_generations(generation: int) -> None:
    with pytest.raises(ValueError, match="generation number"):
        arm_deadman_argv(PROFILE, generation, 60)
    with pytest.raises(ValueError, match="generation number"):
        revert_argvs(PROFILE, generation)


@pytest.mark.parametrize("seconds", [0, -5, float("nan"), float("inf")])
def test_deadman_refuses_bad_timeouts(seconds: float) -> None:
    with pytest.raises(ValueError, match="positive number of seconds"):
        arm_deadman_argv(PROFILE, 1, seconds)


def run(argv: list[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)


def test_lock_is_exclusive_on_a_real_file_system(tmp_path: Path) -> None:
    state = str(tmp_path / "var/lib/moxflow")
    assert run(prepare_state_dir_argv(state)).returncode == 0
    assert run(prepare_state_dir_argv(state)).returncode == 0  # idempotent
    assert run(lock_argv(state)).returncode == 0
    second = run(lock_argv(state))
    assert second.returncode != 0
    assert "exists" in second.stderr
    assert run(unlock_argv(state)).returncode == 0
    assert run(unlock_argv(state)).returncode == 0  # idempotent
    assert run(lock_argv(state)).returncode == 0


def test_journal_round_trip_through_a_real_shell(tmp_path: Path) -> None:
    state = str(tmp_path)
    journal = Journal(
        run_id="3f2a9c",
        flow_run_id="0b7e1d52-8f43-4c1e-9a51-6d0f5e2c7a10",
        host="media",
        phase="armed",
        old_generation=42,
        new_generation=None,
        snapshot="moxflow-nixos-20261126-031500",
        started="2026-11-26T03:15:00+00:00",
    )
    assert run(read_journal_argv(state)).returncode != 0  # no journal: no unfinished update
    assert run(write_journal_argv(state), journal.to_json()).returncode == 0
    newer = journal.advance("switched", new_generation=43)
    assert run(write_journal_argv(state), newer.to_json()).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.json"]
    read = run(read_journal_argv(state))
    assert Journal.from_json(read.stdout) == newer
    assert run(clear_journal_argv(state)).returncode == 0
    assert run(clear_journal_argv(state)).returncode == 0  # idempotent
    assert list(tmp_path.iterdir()) == []


def test_journal_phases_in_order() -> None:
    assert JOURNAL_PHASES == ("started", "snapshotted", "built", "armed", "switched", "confirmed")
    journal = Journal("r", None, "dns", "built", 7, None, None, "2026-11-26T03:15:00Z")
    assert journal.advance("built").phase == "built"
    with pytest.raises(ValueError, match="cannot go back from built to snapshotted"):
        journal.advance("snapshotted")


def test_journal_json_is_one_line_without_secrets_or_surprises() -> None:
    journal = Journal("r1", None, "dns", "started", 7, None, None, "2026-11-26T03:15:00+00:00")
    assert json.loads(journal.to_json()) == {
        "run_id": "r1",
        "flow_run_id": None,
        "host": "dns",
        "phase": "started",
        "old_generation": 7,
        "new_generation": None,
        "snapshot": None,
        "started": "2026-11-26T03:15:00+00:00",
    }
    assert "\n" not in journal.to_json()


def test_a_busy_host_says_who_holds_its_lock_since_when_and_what_to_do() -> None:
    now = datetime(2026, 11, 26, 5, 45, tzinfo=UTC)
    journal = Journal("r1", "0b7e1d52", "dns", "switched", 7, 8, None, "2026-11-26T03:15:00+01:00")
    text = lock_holder("dns", journal, now)
    assert text.startswith("another run (flow run 0b7e1d52) is updating dns, ")
    assert "since 2026-11-26 02:15 UTC (3h30m ago), phase switched" in text
    assert "cancel it in the Prefect UI" in text and "docs/operating.md" in text
    fresh = lock_holder("dns", None, now)
    assert "took the lock moments ago" in fresh and "run again once it is done" in fresh


GOOD_JOURNAL = json.loads(
    Journal("r1", "f1", "dns", "switched", 7, 8, "s", "2026-11-26T03:15:00+00:00").to_json()
)


@pytest.mark.parametrize(
    "text",
    [
        "",
        '{"run_id": "r1"',
        "[]",
        "null",
        json.dumps({**GOOD_JOURNAL, "phase": "rebooting"}),
        json.dumps({**GOOD_JOURNAL, "old_generation": "7"}),
        json.dumps({**GOOD_JOURNAL, "old_generation": True}),
        json.dumps({**GOOD_JOURNAL, "old_generation": 0}),
        json.dumps({**GOOD_JOURNAL, "new_generation": 8.0}),
        json.dumps({**GOOD_JOURNAL, "started": "yesterday"}),
        json.dumps({k: v for k, v in GOOD_JOURNAL.items() if k != "host"}),
        json.dumps({**GOOD_JOURNAL, "snapshot": 5}),
    ],
)
def test_journal_from_garbage(text: str) -> None:
    with pytest.raises(ParseError) as info:
        Journal.from_json(text)
    assert info.value.source == "moxflow journal"


def test_journal_from_good_json() -> None:
    assert Journal.from_json(json.dumps(GOOD_JOURNAL)) == Journal(
        "r1", "f1", "dns", "switched", 7, 8, "s", "2026-11-26T03:15:00+00:00"
    )


# --- verdict -------------------------------------------------------------------------------

BASE = HostFacts(42, "degraded", frozenset({"nix-gc.service"}))


@pytest.mark.parametrize(
    ("facts", "health", "ok", "reasons"),
    [
        (HostFacts(43, "running"), (), True, ()),
        (
            HostFacts(43, "degraded", frozenset({"nix-gc.service"})),
            (),
            True,
            ("degraded only by units that had failed before: nix-gc.service",),
        ),
        (
            HostFacts(42, "running"),
            (),
            False,
            ("generation 42 is active, expected 43",),
        ),
        (
            HostFacts(43, "degraded", frozenset({"nix-gc.service", "jellyfin.service"})),
            (),
            False,
            ("units failed since the switch: jellyfin.service",),
        ),
        (
            HostFacts(43, "starting"),
            (),
            False,
            ("system state is starting, not running",),
        ),
        (
            HostFacts(43, "running"),
            (
                HealthResult("GET http://x/health", False, "HTTP 503, expected 200"),
                HealthResult("TCP connect to x:22", True, "connection accepted"),
            ),
            False,
            ("health check failed: GET http://x/health (HTTP 503, expected 200)",),
        ),
        (
            HostFacts(41, "maintenance", frozenset({"a.service"})),
            (),
            False,
            (
                "generation 41 is active, expected 43",
                "units failed since the switch: a.service",
                "system state is maintenance, not running",
            ),
        ),
    ],
)
def test_evaluate(
    facts: HostFacts, health: tuple[HealthResult, ...], ok: bool, reasons: tuple[str, ...]
) -> None:
    verdict = evaluate(BASE, facts, 43, health)
    assert verdict.ok is ok
    assert verdict.reasons == reasons
    assert verdict.new_failures == new_failures(BASE.failed_units, facts.failed_units)


def test_verdict_reads_well() -> None:
    assert str(evaluate(BASE, HostFacts(43, "running"), 43)) == "healthy"
    assert str(evaluate(BASE, HostFacts(42, "running"), 43)) == (
        "unhealthy: generation 42 is active, expected 43"
    )


def test_evaluate_from_parsed_output() -> None:
    baseline = HostFacts(
        current_generation(parse_generations(GENERATIONS)).number - 1,
        parse_system_state("degraded\n"),
        parse_failed_units('[{"unit":"nix-gc.service","load":"loaded"}]'),
    )
    facts = HostFacts(
        current_generation(parse_generations(GENERATIONS)).number,
        parse_system_state("degraded\n"),
        parse_failed_units(FAILED_UNITS),
    )
    verdict = evaluate(baseline, facts, 43)
    assert not verdict.ok
    assert verdict.new_failures == {"jellyfin.service"}


# --- waves ---------------------------------------------------------------------------------


def specs(*names: str, canary: str = "", **after: str) -> list[NixosHostSpec]:
    """Hosts in this order; ``canary`` names canaries (comma-separated); ``x="a,b"``: x after."""
    canaries = set(canary.split(",")) - {""}
    return [
        NixosHostSpec(n, n in canaries, tuple(a for a in after.get(n, "").split(",") if a))
        for n in names
    ]


def test_canary_then_waves_of_max_parallel() -> None:
    hosts = specs("dns", *(f"h{i:02d}" for i in range(1, 11)), canary="dns")
    assert plan_waves(hosts, 4) == [
        ["dns"],
        ["h01", "h02", "h03", "h04"],
        ["h05", "h06", "h07", "h08"],
        ["h09", "h10"],
    ]


def test_canary_need_not_be_listed_first() -> None:
    hosts = specs("a", "b", "c", "dns", canary="dns")
    assert plan_waves(hosts, 2) == [["dns"], ["a", "b"], ["c"]]


def test_all_canaries_go_together_whatever_max_parallel() -> None:
    hosts = specs("a", "b", "c", "d", canary="a,c,d")
    assert plan_waves(hosts, 1) == [["a", "c", "d"], ["b"]]


def test_no_canary_means_the_first_host_goes_alone() -> None:
    assert plan_waves(specs("a", "b", "c", "d"), 2) == [["a"], ["b", "c"], ["d"]]
    assert plan_waves(specs("a"), 3) == [["a"]]
    assert plan_waves([], 3) == []


def test_no_canary_and_the_first_host_waits_for_another() -> None:
    assert plan_waves(specs("media", "dns", "nas", media="dns"), 2) == [
        ["dns"],
        ["media", "nas"],
    ]


def test_after_puts_a_host_in_a_later_wave_than_its_dependencies() -> None:
    hosts = specs("a", "b", "c", "d", "e", b="c", d="b")
    assert plan_waves(hosts, 2) == [["a"], ["c", "e"], ["b"], ["d"]]


def test_after_a_host_of_the_same_ready_set_waits_a_wave() -> None:
    hosts = specs("dns", "db", "app", "web", canary="dns", app="db", web="app,db")
    assert plan_waves(hosts, 4) == [["dns"], ["db"], ["app"], ["web"]]


def test_after_names_outside_the_selection_are_ignored() -> None:
    hosts = specs("media", "builder", media="dns", builder="media")
    assert plan_waves(hosts, 2) == [["media"], ["builder"]]


def test_canaries_waiting_for_canaries_get_waves_of_their_own() -> None:
    hosts = specs("a", "b", "c", canary="a,b", b="a")
    assert plan_waves(hosts, 2) == [["a"], ["b"], ["c"]]


def test_canary_waiting_for_a_normal_host_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        plan_waves(specs("a", "b", canary="b", b="a"), 2)
    assert "canary b waits for a, which is not a canary" in str(info.value)
    assert info.value.setting == "nixos.hosts.b.after"


@pytest.mark.parametrize(
    ("hosts", "cycle"),
    [
        (specs("a", "b", a="b", b="a"), "a → b → a"),
        (specs("x", "a", "b", "c", a="c", b="a", c="b"), "a → c → b → a"),
        (specs("a", a="a"), "a → a"),
    ],
)
def test_cycles_are_refused_and_named(hosts: list[NixosHostSpec], cycle: str) -> None:
    with pytest.raises(ConfigError) as info:
        plan_waves(hosts, 2)
    assert f"dependency cycle: {cycle}" in str(info.value)
    assert info.value.setting == f"nixos.hosts.{cycle[0]}.after"


def test_find_cycle() -> None:
    assert find_cycle({"a": ["b"], "b": ["c"], "c": []}) is None
    assert find_cycle({"a": ["b"], "b": ["zz"]}) is None
    assert find_cycle({"a": ["b"], "b": ["a"]}) == ["a", "b", "a"]


@pytest.mark.parametrize("max_parallel", [0, -1])
def test_max_parallel_must_be_positive(max_parallel: int) -> None:
    with pytest.raises(ConfigError) as info:
        plan_waves(specs("a", "b"), max_parallel)
    assert info.value.setting == "nixos.max_parallel"


def test_duplicate_hosts_are_refused() -> None:
    with pytest.raises(ConfigError, match="hosts listed twice: a"):
        plan_waves(specs("a", "b", "a"), 2)


@st.composite
def host_graphs(draw: st.DrawFn) -> tuple[list[NixosHostSpec], int]:
    """Random acyclic dependencies (a host waits only for hosts listed before it)."""
    n = draw(st.integers(0, 12))
    names = [f"h{i}" for i in range(n)]
    canaries = draw(st.sets(st.sampled_from(names))) if names else set()
    hosts = []
    for i, name in enumerate(names):
        pool = [m for m in names[:i] if name not in canaries or m in canaries]
        after = draw(st.lists(st.sampled_from(pool), unique=True)) if pool else []
        hosts.append(NixosHostSpec(name, name in canaries, tuple(after)))
    order = draw(st.permutations(hosts))
    return list(order), draw(st.integers(1, 5))


@given(host_graphs())
def test_waves_properties(graph: tuple[list[NixosHostSpec], int]) -> None:
    hosts, max_parallel = graph
    waves = plan_waves(hosts, max_parallel)
    placed = [n for wave in waves for n in wave]
    assert sorted(placed) == sorted(h.name for h in hosts)  # every host exactly once
    wave_of = {n: i for i, wave in enumerate(waves) for n in wave}
    for host in hosts:
        assert all(wave_of[a] < wave_of[host.name] for a in host.after)
    order = [h.name for h in hosts]
    assert all(wave == sorted(wave, key=order.index) for wave in waves)  # inventory order
    canaries = [h.name for h in hosts if h.canary]
    lead = len({wave_of[c] for c in canaries}) if canaries else min(1, len(waves))
    assert all(len(wave) <= max_parallel for wave in waves[lead:])
    assert all(h.canary == (wave_of[h.name] < lead) for h in hosts if canaries)
    assert plan_waves(hosts, max_parallel) == waves  # deterministic


# --- the plan of a run ---------------------------------------------------------------------

INVENTORY = """\
[hosts.pve1]
address = "127.0.0.1"
[hosts.dns]
address = "127.0.0.1"
port = 22101
[hosts.media]
address = "127.0.0.1"
port = 22102
[hosts.builder]
address = "127.0.0.1"
port = 22103

[nixos]
confirm_timeout = 90
health_grace = 30
max_parallel = 2
profile = "/lab/nix/var/nix/profiles/system"

[nixos.hosts.dns]
canary = true
flake = "/lab/hosts/dns/etc/nixos"
state_dir = "/lab/hosts/dns/var/lib/moxflow"
snapshot = { method = "proxmox", vmid = 100 }
[[nixos.hosts.dns.health]]
http = "http://127.0.0.1:8080/health/dns"
expect_text = "ok"

[nixos.hosts.media]
after = ["dns"]
attr = "media-server"
commit_lock_file = true
snapshot = { method = "zfs", host = "pve1", dataset = "rpool/data/subvol-101-disk-0" }
[[nixos.hosts.media.health]]
tcp = "127.0.0.1:8096"

[nixos.hosts.builder]
profile = "/lab/hosts/builder/nix/var/nix/profiles/system"
snapshot = { method = "none" }
"""


@pytest.fixture
def inv(tmp_path: Path) -> Inventory:
    path = tmp_path / "inventory.toml"
    path.write_text(INVENTORY)
    return load_inventory(path)


def test_plan_update(inv: Inventory) -> None:
    plan = plan_update(inv)
    assert plan.waves == [["dns"], ["media", "builder"]]
    dns, media, builder = plan.hosts["dns"], plan.hosts["media"], plan.hosts["builder"]
    assert (dns.wave, dns.canary, media.wave, media.canary) == (1, True, 2, False)
    assert dns.target == "/lab/hosts/dns/etc/nixos#dns"
    assert media.target == "/etc/nixos#media-server"
    assert dns.snapshot == "Proxmox snapshot of guest 100"
    assert media.snapshot == "ZFS snapshot of pve1:rpool/data/subvol-101-disk-0"
    assert builder.snapshot == "none (opted out)"
    assert dns.health == ("GET http://127.0.0.1:8080/health/dns expecting 200 and 'ok'",)
    assert media.health == ("TCP connect to 127.0.0.1:8096",)
    assert dns.commands == (
        "mkdir -p /lab/hosts/dns/var/lib/moxflow",
        "mkdir /lab/hosts/dns/var/lib/moxflow/update.lock",
        "nix flake update --flake /lab/hosts/dns/etc/nixos",
        "nixos-rebuild build --flake '/lab/hosts/dns/etc/nixos#dns'",
        "systemd-run --unit moxflow-deadman --collect --on-active 90s --description "
        "'moxflow: revert to "
        "generation N unless the update is confirmed' /bin/sh -c 'nix-env --profile "
        "/lab/nix/var/nix/profiles/system --switch-generation N && "
        "/lab/nix/var/nix/profiles/system-N-link/bin/switch-to-configuration switch'",
        "nixos-rebuild switch --flake '/lab/hosts/dns/etc/nixos#dns'",
        "systemctl is-system-running",
        "systemctl list-units --failed --output=json",
        "systemctl stop moxflow-deadman.timer",
        "rm -f /lab/hosts/dns/var/lib/moxflow/journal.json",
        "rm -rf /lab/hosts/dns/var/lib/moxflow/update.lock",
    )
    assert "nix flake update --flake /etc/nixos --commit-lock-file" in media.commands
    assert any(
        "/lab/hosts/builder/nix/var/nix/profiles/system-N-link" in c for c in builder.commands
    )


def test_plan_update_describes_itself(inv: Inventory) -> None:
    plan = plan_update(inv)
    lines = plan.describe()
    assert lines[0] == "NixOS update: 3 hosts in 2 waves, at most 2 at a time after the canaries"
    assert lines[1] == "wave 1 (canary): dns"
    assert "  dns: /lab/hosts/dns/etc/nixos#dns; snapshot: Proxmox snapshot of guest 100" in lines
    assert "wave 2: media, builder" in lines
    assert "    health: TCP connect to 127.0.0.1:8096" in lines
    assert plan.hosts["dns"].describe() == (
        "canary, /lab/hosts/dns/etc/nixos#dns, snapshot: Proxmox snapshot of guest 100, "
        "1 health check"
    )


def test_plan_update_only_filters_before_planning(inv: Inventory) -> None:
    plan = plan_update(inv, ["builder", "media"])
    assert plan.waves == [["media"], ["builder"]]  # no canary selected: the first goes alone
    assert sorted(plan.hosts) == ["builder", "media"]
    assert plan.hosts["media"].canary
    assert plan_update(inv, ["builder", "media"], max_parallel=1).waves == [["media"], ["builder"]]
    assert plan_update(inv, ["dns", "builder"]).waves == [["dns"], ["builder"]]
    assert plan_update(inv, []).waves == plan_update(inv).waves


def test_plan_update_max_parallel_override(inv: Inventory) -> None:
    assert plan_update(inv, max_parallel=1).waves == [["dns"], ["media"], ["builder"]]


def test_plan_update_unknown_host_in_only(inv: Inventory) -> None:
    with pytest.raises(ConfigError) as info:
        plan_update(inv, ["media", "nas"])
    assert "'nas' is not a NixOS host; known NixOS hosts: dns, media, builder" in str(info.value)


def test_plan_update_without_nixos_hosts(tmp_path: Path) -> None:
    path = tmp_path / "inventory.toml"
    path.write_text('[hosts.pve1]\naddress = "10.0.0.2"\n')
    with pytest.raises(ConfigError) as info:
        plan_update(load_inventory(path))
    assert info.value.setting == "nixos.hosts"
    assert "the inventory has no [nixos.hosts] tables: no NixOS host to update" in str(info.value)
    assert "add a [nixos.hosts.NAME] table" in str(info.value)


def test_the_generation_column_says_before_and_after() -> None:
    from moxflow.nixos import generation_text

    assert generation_text(41, 42) == "41 → 42"
    assert generation_text(41, 41) == "41"  # switched, but the configuration did not change
    assert generation_text(41) == "41"  # not updated (up to date, failed before the switch)
    assert generation_text(41, "?") == "41 → ?"  # needs attention: what it runs is not known
    assert generation_text(None) == ""  # unreachable in pre-flight: shown as the empty mark


# --- the recovery ladder ------------------------------------------------------------------

OLD, NEW = 7, 8


@pytest.mark.parametrize(
    ("state", "step"),
    [
        # first rung: from what the host says right after the failed verification
        (RecoveryState(OLD, NEW, has_snapshot=True), "switch-back"),
        (RecoveryState(OLD, OLD, has_snapshot=True), "wait-for-dead-man"),  # timer fired
        (RecoveryState(OLD, None, has_snapshot=True), "wait-for-dead-man"),  # unreachable
        (RecoveryState(OLD, None, has_snapshot=False), "wait-for-dead-man"),
        # a rung that brought it back healthy ends the ladder
        (RecoveryState(OLD, OLD, True, ("switch-back",), healthy=True), "rolled-back"),
        (RecoveryState(OLD, OLD, True, ("wait-for-dead-man",), healthy=True), "rolled-back"),
        (
            RecoveryState(OLD, OLD, True, ("switch-back", "snapshot-rollback"), healthy=True),
            "rolled-back",
        ),
        # still unhealthy: the snapshot, once, if there is one
        (RecoveryState(OLD, NEW, True, ("switch-back",)), "snapshot-rollback"),
        (RecoveryState(OLD, None, True, ("wait-for-dead-man",)), "snapshot-rollback"),
        (RecoveryState(OLD, OLD, False, ("switch-back",)), "needs-attention"),
        (
            RecoveryState(OLD, None, True, ("wait-for-dead-man", "snapshot-rollback")),
            "needs-attention",
        ),
    ],
)
def test_next_recovery_step(state: RecoveryState, step: str) -> None:
    assert next_recovery_step(state) == step


def test_the_ladder_ends_for_every_path() -> None:
    """Walking the ladder with a host that never recovers ends at a human within three
    rungs, and takes the snapshot rollback at most once."""
    for generation in (OLD, NEW, None):
        for has_snapshot in (True, False):
            state = RecoveryState(OLD, generation, has_snapshot)
            seen = []
            while (step := next_recovery_step(state)) not in ("rolled-back", "needs-attention"):
                seen.append(step)
                state = state.after(step, healthy=False, generation=None)
            assert step == "needs-attention"
            assert len(seen) <= 2 and seen.count("snapshot-rollback") == int(has_snapshot)


@pytest.mark.parametrize("phase", JOURNAL_PHASES)
def test_only_a_confirmed_update_of_an_interrupted_run_stands(phase: JournalPhase) -> None:
    journal = Journal("r", None, "dns", "started", 7, None, None, "2026-11-26T03:15:00Z")
    assert update_stands(journal.advance(phase)) is (phase == "confirmed")
    assert update_stands(None) is False  # a lock without a journal: nothing is known


def test_the_next_generation_is_one_past_the_highest_not_the_current() -> None:
    def gen(number: int, current: bool) -> Generation:
        return Generation(number, None, "25.11", "6.12", "Unknown", current)

    assert next_generation([gen(7, True), gen(6, False)]) == 8
    # after a rollback to 5, the newest is still 7: the next switch makes 8, not 6
    assert next_generation([gen(7, False), gen(6, False), gen(5, True)]) == 8
    assert next_generation([]) == 1


def test_a_lock_is_orphaned_when_minutes_old() -> None:
    assert lock_orphaned_argv("/var/lib/moxflow") == [
        "find", "/var/lib/moxflow/update.lock", "-maxdepth", "0", "-mmin", "+2",
    ]  # fmt: skip
    with pytest.raises(ConfigError):
        lock_orphaned_argv("relative/dir")
