"""The simulated `zfs` command: exact OpenZFS 2.2 output and messages, and its state changes."""

from __future__ import annotations

import json

import pytest

from labsim.hosts.zfs import ZfsState, default_zfs_state, nicenum, run_zfs

NOW = 1795741323.0  # 2026-11-27 01:02:03 UTC

LIST_DEFAULT = """\
NAME                           USED  AVAIL  REFER  MOUNTPOINT
rpool                         20.8G   409G   104K  /rpool
rpool/ROOT                    5.44G   409G    96K  /rpool/ROOT
rpool/ROOT/pve-1              5.44G   409G  5.44G  /
rpool/data                    15.3G   409G    96K  /rpool/data
rpool/data/subvol-100-disk-0  1.12G   409G  1.12G  /rpool/data/subvol-100-disk-0
rpool/data/vm-101-disk-0      14.2G   409G  14.2G  -
tank                          1.62T  1.88T   104K  /tank
tank/media                    1.62T  1.88T  1.62T  /tank/media
"""

LIST_SNAPSHOTS = """\
NAME                                            USED  AVAIL  REFER  MOUNTPOINT
rpool/data@manual-keep                            0B      -    96K  -
tank/media@autosnap_2026-11-01_00:00:00_daily  2.40G      -  1.62T  -
tank/media@moxflow-daily-20261101-000000       1.10G      -  1.62T  -
"""

SNAPSHOT_USAGE = """\
usage:
\tsnapshot [-r] [-o property=value] ... <filesystem|volume>@<snap> ...

For the property list, run: zfs set|get

For the delegated permission list, run: zfs allow|unallow

For further help on a command or topic, run: zfs help [<topic>]
"""

HOLD_USAGE = SNAPSHOT_USAGE.replace(
    "\tsnapshot [-r] [-o property=value] ... <filesystem|volume>@<snap> ...",
    "\thold [-r] <tag> <snapshot> ...",
)
ROLLBACK_USAGE = SNAPSHOT_USAGE.replace(
    "\tsnapshot [-r] [-o property=value] ... <filesystem|volume>@<snap> ...",
    "\trollback [-rRf] <snapshot>",
)

MEDIA = "tank/media"
AUTOSNAP = "tank/media@autosnap_2026-11-01_00:00:00_daily"
OLD_MOXFLOW = "tank/media@moxflow-daily-20261101-000000"
KEEP = "rpool/data@manual-keep"


@pytest.fixture
def pve1() -> ZfsState:
    return default_zfs_state("pve1", NOW)


def zfs(state: ZfsState, *args: str, now: float = NOW) -> tuple[int, str, str]:
    return run_zfs(state, ["zfs", *args], now)


def snapshot_names(state: ZfsState) -> list[str]:
    return [f"{ds.name}@{s.name}" for ds in state.datasets.values() for s in ds.snapshots]


# The facts command of the guide (facts.md, "NixOS and ZFS commands").
FACTS_ARGV = [
    "list",
    "-H",
    "-p",
    "-t",
    "snapshot",
    "-o",
    "name,creation,used",
    "-s",
    "creation",
    "-r",
    "tank/media",
]

# (argv, exit code, stdout, stderr) on the default pve1 state; nothing here changes it.
READ_ONLY_CASES = [
    pytest.param(["list"], 0, LIST_DEFAULT, "", id="list-default"),
    pytest.param(["list", "-t", "snapshot"], 0, LIST_SNAPSHOTS, "", id="list-snapshots"),
    pytest.param(
        FACTS_ARGV,
        0,
        f"{AUTOSNAP}\t1793491200\t2576980378\n{OLD_MOXFLOW}\t1793491200\t1181116006\n",
        "",
        id="list-facts-command",
    ),
    pytest.param(
        ["list", "-H", "-o", "name", "-t", "snapshot", MEDIA],
        0,
        f"{AUTOSNAP}\n{OLD_MOXFLOW}\n",
        "",
        id="list-snapshots-of-one-dataset",
    ),
    pytest.param(
        ["list", "-H", "-o", "name", "-t", "snapshot", "-r", "rpool"],
        0,
        f"{KEEP}\n",
        "",
        id="list-snapshots-recursive",
    ),
    pytest.param(
        ["list", "-H", "-o", "name", "-t", "snapshot", "-S", "createtxg"],
        0,
        f"{OLD_MOXFLOW}\n{AUTOSNAP}\n{KEEP}\n",
        "",
        id="list-sort-descending",
    ),
    pytest.param(
        ["list", "-H", "-o", "name,creation", "-t", "snapshot", OLD_MOXFLOW],
        0,
        f"{OLD_MOXFLOW}\tSun Nov  1  0:00 2026\n",
        "",
        id="list-one-snapshot-human-time",
    ),
    pytest.param(
        ["list", "-o", "name", "-d", "1", "rpool"],
        0,
        "NAME\nrpool\nrpool/ROOT\nrpool/data\n",
        "",
        id="list-depth",
    ),
    pytest.param(
        ["list", "-t", "volume"],
        0,
        "NAME                       USED  AVAIL  REFER  MOUNTPOINT\n"
        "rpool/data/vm-101-disk-0  14.2G   409G  14.2G  -\n",
        "",
        id="list-volumes",
    ),
    pytest.param(
        ["list", "-o", "space", "-r", "tank"],
        0,
        "NAME        AVAIL   USED  USEDSNAP  USEDDS  USEDREFRESERV  USEDCHILD\n"
        "tank        1.88T  1.62T        0B    104K             0B      1.62T\n"
        "tank/media  1.88T  1.62T     3.50G   1.62T             0B         0B\n",
        "",
        id="list-space",
    ),
    pytest.param(
        ["list", "-H", "-p", "-o", "name,used,avail,refer,type,userrefs,guid,createtxg", KEEP],
        0,
        f"{KEEP}\t0\t-\t98304\tsnapshot\t1\t3572839542075390398\t10108108\n",
        "",
        id="list-parsable-snapshot",
    ),
    pytest.param(
        ["list", "/tank/media/movies"],
        0,
        "NAME         USED  AVAIL  REFER  MOUNTPOINT\n"
        "tank/media  1.62T  1.88T  1.62T  /tank/media\n",
        "",
        id="list-by-path",
    ),
    pytest.param(
        ["list", "-t", "snapshot", "rpool/ROOT"], 0, "", "no datasets available\n", id="list-none"
    ),
    pytest.param(["list", "-H", "-t", "snapshot", "rpool/ROOT"], 0, "", "", id="list-none-H"),
    pytest.param(
        ["list", "tank/nope"],
        1,
        "",
        "cannot open 'tank/nope': dataset does not exist\n",
        id="list-missing",
    ),
    pytest.param(
        ["list", "-t", "snapshot", "tank/nope@x"],
        1,
        "",
        "cannot open 'tank/nope@x': dataset does not exist\n",
        id="list-missing-snapshot",
    ),
    pytest.param(
        ["list", "-t", "filesystem", KEEP],
        1,
        "",
        f"cannot open '{KEEP}': snapshot delimiter '@' is not expected here\n",
        id="list-type-mismatch",
    ),
    pytest.param(
        ["list", "-t", "volume", "rpool/data"],
        1,
        "",
        "cannot open 'rpool/data': operation not applicable to datasets of this type\n",
        id="list-wrong-type",
    ),
    pytest.param(
        ["list", "rpool/da;ta"],
        1,
        "",
        "cannot open 'rpool/da;ta': invalid character ';' in name\n",
        id="list-invalid-name",
    ),
    pytest.param(
        ["get", "-H", "-p", "-o", "name,property,value", "creation,used,type,userrefs", KEEP],
        0,
        f"{KEEP}\tcreation\t1792484100\n{KEEP}\tused\t0\n{KEEP}\ttype\tsnapshot\n"
        f"{KEEP}\tuserrefs\t1\n",
        "",
        id="get-parsable",
    ),
    pytest.param(
        ["get", "mountpoint", "rpool", "rpool/ROOT/pve-1", KEEP],
        0,
        "NAME                    PROPERTY    VALUE       SOURCE\n"
        "rpool                   mountpoint  /rpool      default\n"
        "rpool/ROOT/pve-1        mountpoint  /           local\n"
        "rpool/data@manual-keep  mountpoint  -           -\n",
        "",
        id="get-sources",
    ),
    pytest.param(
        ["get", "-H", "-o", "value", "-p", "used", "rpool"],
        0,
        "22292185088\n",
        "",
        id="get-value",
    ),
    pytest.param(
        ["holds", KEEP],
        0,
        "NAME                    TAG   TIMESTAMP\n"
        "rpool/data@manual-keep  keep  Tue Oct 20 08:15 2026\n",
        "",
        id="holds",
    ),
    pytest.param(
        ["holds", "-H", "-p", "-r", "rpool@manual-keep"],
        0,
        f"{KEEP}\tkeep\t1792484100\n",
        "",
        id="holds-recursive-parsable",
    ),
    pytest.param(
        ["holds", AUTOSNAP],
        0,
        "NAME                                           TAG  TIMESTAMP\n",
        "",
        id="holds-none",
    ),
    pytest.param(
        ["holds", "rpool/data"],
        1,
        "NAME  TAG  TIMESTAMP\n",  # print_holds() prints the header even with nothing to show
        "'rpool/data' is not a snapshot\nno datasets available\n",
        id="holds-not-snapshot",
    ),
    pytest.param(["version"], 0, "zfs-2.2.7-1\nzfs-kmod-2.2.7-1\n", "", id="version"),
    pytest.param(
        ["destroy", "rpool/data"],
        1,
        "",
        "cannot destroy 'rpool/data': filesystem has children\n"
        "use '-r' to destroy the following datasets:\n"
        "rpool/data/subvol-100-disk-0\nrpool/data/vm-101-disk-0\nrpool/data@manual-keep\n",
        id="destroy-filesystem-with-children",
    ),
    pytest.param(
        ["destroy", "rpool"],
        1,
        "",
        "cannot destroy 'rpool': operation does not apply to pools\n"
        "use 'zfs destroy -r rpool' to destroy all datasets in the pool\n"
        "use 'zpool destroy rpool' to destroy the pool itself\n",
        id="destroy-pool",
    ),
    pytest.param(
        ["destroy", "-nv", "-r", "tank@autosnap_2026-11-01_00:00:00_daily"],
        0,
        f"would destroy {AUTOSNAP}\nwould reclaim 2.40G\n",
        "",
        id="destroy-dry-run",
    ),
    pytest.param(
        ["destroy", f"{MEDIA}@nothing"],
        1,
        "",
        "could not find any snapshots to destroy; check snapshot names.\n",
        id="destroy-missing-snapshot",
    ),
    pytest.param(
        ["destroy", "tank/nope@x"],
        1,
        "",
        "cannot open 'tank/nope': dataset does not exist\n",
        id="destroy-missing-dataset",
    ),
    pytest.param(
        ["destroy", KEEP],
        1,
        "",
        f"cannot destroy snapshot {KEEP}: dataset is busy\n",
        id="destroy-held",
    ),
    pytest.param(
        ["rollback", AUTOSNAP],
        1,
        "",
        f"cannot rollback to '{AUTOSNAP}': more recent snapshots or bookmarks exist\n"
        "use '-r' to force deletion of the following snapshots and bookmarks:\n"
        f"{OLD_MOXFLOW}\n",
        id="rollback-not-newest",
    ),
    pytest.param(
        ["rollback", "rpool/data"],
        1,
        "",
        "cannot open 'rpool/data': missing '@' delimiter in snapshot name\n",
        id="rollback-not-snapshot",
    ),
    pytest.param(
        ["rollback", f"{MEDIA}@gone"],
        1,
        "",
        f"cannot open '{MEDIA}@gone': dataset does not exist\n",
        id="rollback-missing",
    ),
    pytest.param(["rollback"], 2, "", "missing dataset argument\n" + ROLLBACK_USAGE, id="rb-usage"),
    pytest.param(
        ["hold", "keep", KEEP],
        1,
        "",
        f"cannot hold snapshot '{KEEP}': tag already exists on this dataset\n",
        id="hold-exists",
    ),
    pytest.param(
        ["hold", "keep", f"{MEDIA}@gone"],
        1,
        "",
        f"cannot hold snapshot '{MEDIA}@gone': dataset does not exist\n",
        id="hold-missing",
    ),
    pytest.param(
        ["hold", ".x", KEEP], 2, "", "tag may not start with '.'\n" + HOLD_USAGE, id="hold-dot-tag"
    ),
    pytest.param(["hold", "keep"], 2, "", HOLD_USAGE, id="hold-usage"),
    pytest.param(
        ["release", "other", KEEP],
        1,
        "",
        f"cannot release hold from snapshot '{KEEP}': no such tag on this dataset\n",
        id="release-no-tag",
    ),
    pytest.param(
        ["release", "keep", "rpool/data@gone"],
        1,
        "",
        "cannot release hold from snapshot 'rpool/data@gone': dataset does not exist\n",
        id="release-missing",
    ),
    pytest.param(
        ["snapshot", "tank/nope@x"],
        2,
        "",
        "cannot open 'tank/nope': dataset does not exist\n" + SNAPSHOT_USAGE,
        id="snapshot-missing-dataset",
    ),
    pytest.param(["snapshot", "tank/media"], 2, "", SNAPSHOT_USAGE, id="snapshot-no-at"),
    pytest.param(
        ["snapshot"], 2, "", "missing snapshot argument\n" + SNAPSHOT_USAGE, id="snapshot-no-args"
    ),
    pytest.param(
        ["snapshot", "-x", "tank/media@a"],
        2,
        "",
        "invalid option 'x'\n" + SNAPSHOT_USAGE,
        id="snapshot-bad-flag",
    ),
    pytest.param(
        ["snapshot", "tank/media@bad$name"],
        1,
        "",
        "cannot create snapshot 'tank/media@bad$name': invalid character '$' in name\n",
        id="snapshot-invalid-char",
    ),
    pytest.param(
        ["snapshot", "-r", "tank@bad%name"],
        1,
        "",
        "cannot create snapshot 'tank@bad%name': invalid character % in name\n"
        "no snapshots were created\n",
        id="snapshot-percent",
    ),
    pytest.param(
        ["snapshot", "tank/media@"],
        1,
        "",
        "cannot create snapshot 'tank/media@': empty component or misplaced '@' or '#' "
        "delimiter in name\n",
        id="snapshot-empty-name",
    ),
    pytest.param(
        ["snapshot", f"tank/media@{'x' * 250}"],
        1,
        "",
        f"cannot create snapshot 'tank/media@{'x' * 250}': name is too long\n",
        id="snapshot-too-long",
    ),
    pytest.param(
        ["snapshot", OLD_MOXFLOW],
        1,
        "",
        f"cannot create snapshot '{OLD_MOXFLOW}': dataset already exists\n",
        id="snapshot-exists",
    ),
    pytest.param(
        ["snapshot", "tank/media@a", "tank/media@b"],
        1,
        "",
        "cannot create snapshots : multiple snapshots of same fs not allowed\n"
        "no snapshots were created\n",
        id="snapshot-same-fs-twice",
    ),
    pytest.param(
        ["snapshot", "-o", "compression=lz4", "tank/media@a"],
        1,
        "",
        "cannot create snapshots : this property can not be modified for snapshots\n",
        id="snapshot-native-property",
    ),
    pytest.param(
        ["send", "tank/media@a"], 1, "", "zfs send: not simulated by labsim\n", id="not-simulated"
    ),
]


@pytest.mark.parametrize(("argv", "rc", "stdout", "stderr"), READ_ONLY_CASES)
def test_output_and_errors(
    pve1: ZfsState, argv: list[str], rc: int, stdout: str, stderr: str
) -> None:
    before = pve1.to_json()
    assert zfs(pve1, *argv) == (rc, stdout, stderr)
    assert pve1.to_json() == before


@pytest.mark.parametrize(
    ("argv", "first_lines"),
    [
        (["list", "-o", "name,bogus"], "bad property list: invalid property 'bogus'\nusage:\n"),
        (["list", "-t", "bogus"], "invalid type 'bogus'\nusage:\n"),
        (["list", "-x"], "invalid option 'x'\nusage:\n"),
        (["list", "-s", "nope"], "invalid property 'nope'\nusage:\n"),
        (["list", "-d", "abc"], "abc is not an integer\nusage:\n"),
        (["list", "-d", "-1"], "Depth can not be negative.\nusage:\n"),
        (["get", "-o", "name,bogus", "used"], "invalid column name 'bogus'\nusage:\n"),
        (["get"], "missing property argument\nusage:\n"),
        (["destroy"], "missing dataset argument\nusage:\n"),
        (["destroy", "a@b", "c@d"], "too many arguments\nusage:\n"),
        (["frobnicate"], "unrecognized command 'frobnicate'\nusage: zfs command args ...\n"),
        ([], "missing command\nusage: zfs command args ...\n"),
    ],
)
def test_usage_errors_exit_2(pve1: ZfsState, argv: list[str], first_lines: str) -> None:
    rc, out, err = zfs(pve1, *argv)
    assert (rc, out) == (2, "")
    assert err.startswith(first_lines)


def test_list_usage_prints_the_property_table(pve1: ZfsState) -> None:
    _rc, _out, err = zfs(pve1, "list", "-t", "bogus")
    assert "\tlist [-Hp] [-r|-d max] [-o property[,...]] [-s property]...\n" in err
    assert "\n\tPROPERTY       EDIT  INHERIT   VALUES\n\n" in err
    assert "\tcreation         NO       NO   <date>\n" in err
    assert "\tmountpoint      YES      YES   <path> | legacy | none\n" in err
    assert err.endswith('    SMB SID         (eg: "S-1-234-567-89")\n')


def test_help_goes_to_stdout_with_exit_0(pve1: ZfsState) -> None:
    rc, out, err = zfs(pve1, "-?")
    assert (rc, err) == (0, "")
    assert out.startswith("usage: zfs command args ...\nwhere 'command' is one of the following:")
    assert "\tholds [-rHp] <snapshot> ...\n" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["list", "-H", "-t", "all"],
        ["list", "-H", "-p", "-t", "all", "-o", "name,creation,used,avail,refer,userrefs,guid"],
        ["list", "-H", "-p", "-t", "snapshot", "-o", "name,creation,used"],
        ["get", "-H", "-p", "-r", "creation,used,type", "rpool"],
        ["holds", "-H", "-p", "-r", "rpool@manual-keep", f"{MEDIA}@x"],
    ],
)
def test_scripted_output_splits_into_columns(pve1: ZfsState, argv: list[str]) -> None:
    assert zfs(pve1, "snapshot", "-r", "rpool@x")[0] == 0
    _rc, out, _err = zfs(pve1, *argv)
    rows = [line.split("\t") for line in out.splitlines()]
    assert rows
    assert len({len(row) for row in rows}) == 1
    assert all(cell and cell.strip() == cell for row in rows for cell in row)


def test_snapshot_is_created_with_time_and_txg(pve1: ZfsState) -> None:
    txg_before = pve1.txg
    assert zfs(pve1, "snapshot", "tank/media@moxflow-hourly-20261126-010203") == (0, "", "")
    _rc, out, _ = zfs(
        pve1, "list", "-H", "-p", "-o", "name,creation,used,createtxg", "-s", "createtxg",
        "-t", "snapshot", MEDIA,
    )  # fmt: skip
    last = out.splitlines()[-1].split("\t")
    assert last[:3] == ["tank/media@moxflow-hourly-20261126-010203", str(int(NOW)), "0"]
    assert int(last[3]) > txg_before
    snap = pve1.snapshot("tank/media@moxflow-hourly-20261126-010203")
    assert snap is not None and snap.guid > 0 and snap.holds == {}


def test_recursive_snapshot_covers_descendants_in_one_txg(pve1: ZfsState) -> None:
    assert zfs(pve1, "snapshot", "-r", "rpool/data@daily") == (0, "", "")
    created = {n: pve1.snapshot(n) for n in snapshot_names(pve1) if n.endswith("@daily")}
    assert sorted(created) == [
        "rpool/data/subvol-100-disk-0@daily",
        "rpool/data/vm-101-disk-0@daily",
        "rpool/data@daily",
    ]
    assert len({s.createtxg for s in created.values() if s}) == 1


def test_recursive_snapshot_is_all_or_nothing(pve1: ZfsState) -> None:
    assert zfs(pve1, "snapshot", "rpool/data/vm-101-disk-0@daily")[0] == 0
    before = snapshot_names(pve1)
    assert zfs(pve1, "snapshot", "-r", "rpool/data@daily") == (
        1,
        "",
        "cannot create snapshot 'rpool/data/vm-101-disk-0@daily': dataset already exists\n"
        "no snapshots were created\n",
    )
    assert snapshot_names(pve1) == before


def test_snapshot_names_may_contain_spaces_as_in_openzfs(pve1: ZfsState) -> None:
    # OpenZFS accepts ' ' in names (zfs_namecheck.c valid_char); moxflow must reject it itself.
    assert zfs(pve1, "snapshot", "tank/media@with space") == (0, "", "")
    assert pve1.snapshot("tank/media@with space") is not None


def test_snapshot_user_property(pve1: ZfsState) -> None:
    assert zfs(pve1, "snapshot", "-o", "com.example:by=moxflow", "tank/media@a")[0] == 0
    assert zfs(pve1, "get", "-H", "com.example:by", "tank/media@a", MEDIA) == (
        0,
        "tank/media\tcom.example:by\t-\t-\ntank/media@a\tcom.example:by\tmoxflow\tlocal\n",
        "",
    )


def test_destroy_snapshot(pve1: ZfsState) -> None:
    assert zfs(pve1, "destroy", OLD_MOXFLOW) == (0, "", "")
    assert OLD_MOXFLOW not in snapshot_names(pve1)
    assert (
        zfs(pve1, "list", "-H", "-p", "-o", "used", MEDIA)[1]
        == f"{1_781_212_332_032 + 2_576_980_378}\n"
    )


def test_held_snapshot_blocks_destroy_until_released(pve1: ZfsState) -> None:
    assert zfs(pve1, "destroy", KEEP)[0] == 1
    assert KEEP in snapshot_names(pve1)
    assert zfs(pve1, "release", "keep", KEEP) == (0, "", "")
    assert zfs(pve1, "holds", "-H", KEEP) == (0, "", "")
    assert zfs(pve1, "destroy", KEEP) == (0, "", "")
    assert KEEP not in snapshot_names(pve1)


def test_destroy_batch_with_a_held_snapshot_destroys_nothing(pve1: ZfsState) -> None:
    assert zfs(pve1, "snapshot", "-r", "rpool@x")[0] == 0
    assert zfs(pve1, "hold", "pin", "rpool/data/vm-101-disk-0@x")[0] == 0
    before = snapshot_names(pve1)
    assert zfs(pve1, "destroy", "-r", "rpool@x") == (
        1,
        "",
        "cannot destroy snapshot rpool/data/vm-101-disk-0@x: dataset is busy\n",
    )
    assert snapshot_names(pve1) == before


def test_held_message_of_openzfs_2_3_3_and_later(pve1: ZfsState) -> None:
    pve1.version = "2.3.4-pve1"
    assert zfs(pve1, "destroy", KEEP) == (
        1,
        "",
        f"cannot destroy snapshot {KEEP}: it's being held. Run 'zfs holds -r {KEEP}' to see "
        "holders.\n",
    )


def test_deferred_destroy_happens_at_the_last_release(pve1: ZfsState) -> None:
    assert zfs(pve1, "destroy", "-d", KEEP) == (0, "", "")
    assert zfs(pve1, "list", "-H", "-o", "defer_destroy,userrefs", KEEP) == (0, "on\t1\n", "")
    assert zfs(pve1, "release", "keep", KEEP) == (0, "", "")
    assert KEEP not in snapshot_names(pve1)


def test_destroy_recursive_comma_list_and_range(pve1: ZfsState) -> None:
    for name in ("a", "b", "c", "d"):
        assert zfs(pve1, "snapshot", "-r", f"tank@{name}")[0] == 0
    assert zfs(pve1, "destroy", "-r", "tank@a,d") == (0, "", "")
    assert zfs(pve1, "destroy", "-v", f"{MEDIA}@b%c") == (
        0,
        f"will destroy {MEDIA}@b\nwill destroy {MEDIA}@c\nwill reclaim 0B\n",
        "",
    )
    assert sorted(n for n in snapshot_names(pve1) if n.split("@")[1] in "abcd") == [
        "tank@b",
        "tank@c",
    ]


def test_destroy_parsable_verbose(pve1: ZfsState) -> None:
    assert zfs(pve1, "destroy", "-p", OLD_MOXFLOW) == (
        0,
        f"destroy\t{OLD_MOXFLOW}\nreclaim\t1181116006\n",
        "",
    )


def test_destroy_filesystem(pve1: ZfsState) -> None:
    assert zfs(pve1, "destroy", "rpool/data/subvol-100-disk-0") == (0, "", "")
    assert "rpool/data/subvol-100-disk-0" not in pve1.datasets
    assert zfs(pve1, "destroy", "-r", "rpool/data") == (
        1,
        "",
        f"cannot destroy snapshot {KEEP}: dataset is busy\n",
    )
    assert sorted(n for n in pve1.datasets if n.startswith("rpool/data")) == ["rpool/data"]


def test_rollback_to_newest(pve1: ZfsState) -> None:
    pve1.datasets[MEDIA].referenced += 5 * 1024**3
    assert zfs(pve1, "rollback", OLD_MOXFLOW) == (0, "", "")
    snap = pve1.snapshot(OLD_MOXFLOW)
    assert snap is not None
    assert pve1.datasets[MEDIA].referenced == snap.referenced


def test_rollback_r_destroys_later_snapshots(pve1: ZfsState) -> None:
    assert zfs(pve1, "rollback", "-r", AUTOSNAP) == (0, "", "")
    assert [n for n in snapshot_names(pve1) if n.startswith(MEDIA)] == [AUTOSNAP]


def test_rollback_r_fails_on_a_held_later_snapshot(pve1: ZfsState) -> None:
    assert zfs(pve1, "snapshot", f"{MEDIA}@later")[0] == 0
    assert zfs(pve1, "hold", "pin", OLD_MOXFLOW)[0] == 0
    assert zfs(pve1, "rollback", "-r", AUTOSNAP) == (
        1,
        "",
        f"cannot destroy '{OLD_MOXFLOW}': dataset is busy\n",
    )
    # as in libzfs, the later snapshots are destroyed one by one: the unheld one is gone
    assert [n for n in snapshot_names(pve1) if n.startswith(MEDIA)] == [AUTOSNAP, OLD_MOXFLOW]


def test_hold_recursive_is_all_or_nothing(pve1: ZfsState) -> None:
    assert zfs(pve1, "snapshot", "-r", "rpool@x")[0] == 0
    assert zfs(pve1, "hold", "pin", "rpool/data@x")[0] == 0
    assert zfs(pve1, "hold", "-r", "pin", "rpool@x") == (
        1,
        "",
        "cannot hold snapshot 'rpool/data@x': tag already exists on this dataset\n",
    )
    held = [n for n in snapshot_names(pve1) if (s := pve1.snapshot(n)) and "pin" in s.holds]
    assert held == ["rpool/data@x"]
    assert zfs(pve1, "release", "-r", "pin", "rpool@x") == (0, "", "")
    assert zfs(pve1, "hold", "-r", "pin", "rpool@x") == (0, "", "")
    assert zfs(pve1, "holds", "-H", "-p", "-r", "rpool@x")[1] == "".join(
        f"{name}@x\tpin\t{int(NOW)}\n"
        for name in (
            "rpool",
            "rpool/ROOT",
            "rpool/ROOT/pve-1",
            "rpool/data",
            "rpool/data/subvol-100-disk-0",
            "rpool/data/vm-101-disk-0",
        )
    )


def test_state_json_round_trip(pve1: ZfsState) -> None:
    assert zfs(pve1, "snapshot", "-r", "-o", "com.example:k=v", "rpool@x")[0] == 0
    assert zfs(pve1, "hold", "pin", "rpool/data@x")[0] == 0
    assert zfs(pve1, "destroy", "-d", "rpool/data@x")[0] == 0
    data = json.loads(json.dumps(pve1.to_json()))
    restored = ZfsState.from_json(data)
    assert restored == pve1
    assert restored.to_json() == data
    for argv in (["list", "-t", "all"], ["holds", "-r", "rpool@x"], ["get", "all", "rpool/data@x"]):
        assert zfs(restored, *argv) == zfs(pve1, *argv)


def test_default_topology_per_host() -> None:
    assert sorted(default_zfs_state("pve2", NOW).datasets) == [
        "rpool",
        "rpool/ROOT",
        "rpool/ROOT/pve-1",
        "rpool/data",
        "rpool/data/vm-102-disk-0",
    ]
    assert sorted(default_zfs_state("nas", NOW).datasets) == ["tank", "tank/backups"]
    # a generated topology's node hosts have their root dataset
    assert "rpool/ROOT/pve-1" in default_zfs_state("pve5", NOW).datasets
    empty = default_zfs_state("builder", NOW)
    assert empty.datasets == {}
    assert zfs(empty, "list") == (0, "", "no datasets available\n")
    pve1 = default_zfs_state("pve1", NOW)
    assert sorted(snapshot_names(pve1)) == [KEEP, AUTOSNAP, OLD_MOXFLOW]
    assert default_zfs_state("pve1", NOW) == pve1  # deterministic: guids, txgs and sizes


def test_txgs_increase_even_if_the_clock_goes_back(pve1: ZfsState) -> None:
    assert zfs(pve1, "snapshot", f"{MEDIA}@one")[0] == 0
    assert zfs(pve1, "snapshot", f"{MEDIA}@two", now=NOW - 3600)[0] == 0
    one, two = pve1.snapshot(f"{MEDIA}@one"), pve1.snapshot(f"{MEDIA}@two")
    assert one is not None and two is not None
    assert two.createtxg > one.createtxg


@pytest.mark.parametrize(
    ("num", "text"),
    [
        (0, "0B"),
        (1023, "1023B"),
        (1024, "1K"),
        (1536, "1.50K"),
        (10239, "10.0K"),
        (104_857_599, "100M"),
        (5_841_616_896, "5.44G"),
        (1_781_212_332_032, "1.62T"),
        (7 * 1024**4, "7T"),
    ],
)
def test_nicenum(num: int, text: str) -> None:
    assert nicenum(num, bytes_suffix=True) == text
