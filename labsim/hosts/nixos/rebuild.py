"""``nixos-rebuild`` (builds, switch/boot/test, ``--rollback``, ``list-generations``), ``nix-env``
on the system profile, and a generation's ``switch-to-configuration``."""

from __future__ import annotations

import json
import re

from labsim.hosts.nixos.flake import locked_nixpkgs
from labsim.hosts.nixos.machine import NixosMachine
from labsim.hosts.nixos.model import Build, Ctx, Deferred, Result, _hash32
from labsim.hosts.nixos.nix import _flake_attrs, _no_flake, _resolve, _update_lock

_REBUILD_ACTIONS = (
    "switch", "boot", "test", "build", "dry-build", "dry-activate", "edit", "repl",
    "build-vm", "build-vm-with-bootloader", "build-image", "list-generations",
)  # fmt: skip
_REBUILD_IGNORED = (
    "-L", "--print-build-logs", "--show-trace", "-v", "--verbose", "--fast", "--no-reexec",
    "--impure", "--quiet", "--keep-going", "-k", "--refresh", "--offline", "--no-build-nix",
    "--use-substitutes", "--use-remote-sudo", "--sudo", "--no-flake", "--recreate-lock-file",
    "--no-update-lock-file", "--no-write-lock-file",
)  # fmt: skip
_REBUILD_USAGE = (
    "usage: nixos-rebuild [--verbose] [--quiet] [--max-jobs MAX_JOBS] [--cores CORES] ...\n"
    "                     [--flake [FLAKE]] [--rollback] [--json] ...\n"
    "                     [{switch,boot,test,build,edit,repl,dry-build,dry-run,dry-activate,"
    "build-vm,build-vm-with-bootloader,build-image,list-generations}]\n"
)


def _usage_error(message: str) -> Result:
    return 2, "", _REBUILD_USAGE + f"nixos-rebuild: error: {message}\n"


def _cmd_nixos_rebuild(host: NixosMachine, argv: list[str], ctx: Ctx) -> Result | Deferred:
    args = argv[1:]
    action: str | None = None
    flake: str | None = None
    rollback = False
    as_json = False
    i = 0
    while i < len(args):
        a = args[i]
        if a in _REBUILD_ACTIONS and action is None:
            action = a
        elif a == "dry-run" and action is None:
            action = "dry-build"
        elif a == "--flake":
            if i + 1 >= len(args) or args[i + 1].startswith("-"):
                flake = "/etc/nixos"
            else:
                flake = args[i + 1]
                i += 1
        elif a.startswith("--flake="):
            flake = a.split("=", 1)[1]
        elif a == "--rollback":
            rollback = True
        elif a == "--json":
            as_json = True
        elif a in _REBUILD_IGNORED:
            pass
        elif a in ("--option",):
            i += 2
        elif a in ("--max-jobs", "-j", "--cores"):
            i += 1
        elif a in ("--target-host", "--build-host", "--profile-name", "-p", "--specialisation"):
            return 1, "", f"error: labsim does not simulate nixos-rebuild {a}\n"
        else:
            return _usage_error(f"unrecognized arguments: {a}")
        i += 1
    if action is None:
        return _usage_error("the following arguments are required: action")
    if action == "list-generations":
        return _list_generations(host, as_json)
    if action not in ("switch", "boot", "test", "build", "dry-build"):
        return 1, "", f"error: labsim does not simulate nixos-rebuild {action}\n"
    if rollback:
        if action not in ("switch", "boot", "test"):
            return 1, "", f"error: --rollback is incompatible with '{action}'\n"
        return _rebuild_rollback(host, action)
    ref = flake or str(host.flake_dir)
    path, _, attr = ref.partition("#")
    attr = attr.strip('"') or host.name
    flake_dir = _resolve(path or ".", ctx.cwd)
    if (flake_dir / "flake.nix").is_file() is False:
        return 1, "", _no_flake(flake_dir)
    if attr not in _flake_attrs(flake_dir):
        t = f'nixosConfigurations."{attr}".config.system.build.toplevel'
        return (
            1,
            "",
            (
                f"error: flake 'path:{flake_dir}' does not provide attribute "
                f"'packages.x86_64-linux.{t}', 'legacyPackages.x86_64-linux.{t}' or '{t}'\n"
            ),
        )
    log = "building the system configuration...\n"
    text, error = host.read_lock(flake_dir)
    if error:
        return 1, "", error
    if text is None:
        _, lock_err = _update_lock(host, flake_dir, ctx)
        log += lock_err
        text, _ = host.read_lock(flake_dir)
    rev, modified = locked_nixpkgs(text or "")
    if rev is None:
        lock_path = flake_dir / "flake.lock"
        return 1, "", log + f"error: expected a JSON object while parsing '{lock_path}'\n"
    build = host.make_build(rev, modified, host.next)

    def after_build() -> Result:
        return _rebuild_finish(host, action, build, log, ctx)

    if build.toplevel in host.store or action == "dry-build":
        if action == "dry-build" and build.toplevel not in host.store:
            log += "these 3 derivations would be built:\n" + _drv_lines(build)
        return after_build()
    host.builds += 1
    log += "these 3 derivations will be built:\n" + _drv_lines(build)
    log += "".join(f"building '{d}'...\n" for d in _drvs(build))
    fails = build.behaviour.build_fails

    def finish() -> Result:
        if fails:
            drv = _drvs(build)[0]
            top = _drvs(build)[-1]
            return (
                1,
                "",
                log
                + (
                    f"error: builder for '{drv}' failed with exit code 2;\n"
                    "       last 3 log lines:\n"
                    "       > checking the configuration...\n"
                    f"       > error: the option 'services.{host.name}' does not exist\n"
                    "       > configuration check failed\n"
                    f"       For full logs, run 'nix log {drv}'.\n"
                    f"error: 1 dependencies of derivation '{top}' failed to build\n"
                ),
            )
        host.store[build.toplevel] = build
        return after_build()

    delay = host.build_seconds * ctx.time_scale * (0.5 if fails else 1.0)
    if ctx.internal or delay <= 0:
        return finish()
    return Deferred(delay, finish)


def _drvs(build: Build) -> list[str]:
    name = build.toplevel.split("-", 1)[1]
    digest = build.toplevel.split("/")[3].split("-", 1)[0]
    return [
        f"/nix/store/{_hash32('etc', digest)}-etc.drv",
        f"/nix/store/{_hash32('units', digest)}-system-units.drv",
        f"/nix/store/{_hash32('drv', digest)}-{name}.drv",
    ]


def _drv_lines(build: Build) -> str:
    return "".join(f"  {d}\n" for d in _drvs(build))


def _rebuild_finish(host: NixosMachine, action: str, build: Build, log: str, ctx: Ctx) -> Result:
    if action in ("build", "dry-build"):
        done = f"Done. The new configuration is {build.toplevel}\n" if action == "build" else ""
        return 0, "", log + done
    if action == "test":
        rc, out, err = host.activate(build, None, "test")
        return rc, out, log + err
    number, err = host.set_profile(build, ctx.wall)
    if number is None:
        return 1, "", log + err
    if action == "boot":
        return 0, "", log + "updating systemd-boot entries...\n"
    rc, out, err = host.activate(build, number, "switch")
    return rc, out, log + err


def _rebuild_rollback(host: NixosMachine, action: str) -> Result:
    older = [n for n in host.generations if n < host.profile_generation]
    if not older:
        current = host.profile_generation
        return 1, "", f"error: no generation older than the current ({current}) exists\n"
    target = max(older)
    if action == "test":
        rc, out, err = host.activate(host.generations[target].build, target, "test")
        return rc, out, err
    rc, err = host.switch_profile(target)
    if rc != 0:
        return rc, "", err
    if action == "boot":
        return 0, "", err
    rc, out, act = host.activate(host.generations[target].build, target, "switch")
    return rc, out, err + act


def _list_generations(host: NixosMachine, as_json: bool) -> Result:
    rows = []
    for number in sorted(host.generations, reverse=True):
        gen = host.generations[number]
        rows.append(
            {
                "generation": number,
                "date": gen.date,
                "nixosVersion": gen.build.nixos_version,
                "kernelVersion": gen.build.kernel_version,
                "configurationRevision": "",
                "specialisations": [],
                "current": number == host.profile_generation,
            }
        )
    if as_json:
        return 0, json.dumps(rows, indent=2) + "\n", ""
    lines = [
        "Generation  Build-date           NixOS version           Kernel   "
        "Configuration Revision  Specialisation"
    ]
    for row in rows:
        gen_col = f"{row['generation']}{' current' if row['current'] else ''}"
        lines.append(
            f"{gen_col:<11} {row['date']:<20} {row['nixosVersion']:<23} "
            f"{row['kernelVersion']:<8} {'':<23} *"
        )
    return 0, "\n".join(lines) + "\n", ""


def _cmd_nix_env(host: NixosMachine, argv: list[str], ctx: Ctx) -> Result:
    args = argv[1:]
    profile: str | None = None
    op: str | None = None
    target: int | None = None
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("--profile", "-p"):
            if i + 1 >= len(args):
                return 1, "", f"error: flag '{a}' requires an argument\n"
            profile = args[i + 1]
            i += 1
        elif a.startswith("--profile="):
            profile = a.split("=", 1)[1]
        elif a in ("--switch-generation", "-G"):
            if i + 1 >= len(args):
                return 1, "", f"error: flag '{a}' requires an argument\n"
            op = "switch"
            try:
                target = int(args[i + 1])
            except ValueError:
                return 1, "", f"error: invalid generation number '{args[i + 1]}'\n"
            i += 1
        elif a in ("--list-generations", "--rollback"):
            op = a[2:]
        elif a in ("--quiet", "-v", "--verbose"):
            pass
        else:
            return 1, "", f"error: unknown flag '{a}'\nTry 'nix-env --help' for more information.\n"
        i += 1
    if op is None:
        return 1, "", "error: no operation specified\nTry 'nix-env --help' for more information.\n"
    if profile is None or not host.is_profile(profile):
        shown = profile or "/root/.nix-profile"
        if op == "list-generations":
            return 0, "", ""
        return 1, "", f"error: opening lock file '{shown}.lock': No such file or directory\n"
    if op == "list-generations":
        out = "".join(
            f"{n:4}   {host.generations[n].date}   "
            f"{'(current)' if n == host.profile_generation else ''}\n"
            for n in sorted(host.generations)
        )
        return 0, out, ""
    if op == "rollback":
        older = [n for n in host.generations if n < host.profile_generation]
        if not older:
            return (
                1,
                "",
                (
                    f"error: no generation older than the current ({host.profile_generation}) "
                    "exists\n"
                ),
            )
        target = max(older)
    assert target is not None
    rc, err = host.switch_profile(target)
    return rc, "", err


def _cmd_switch_to_configuration(host: NixosMachine, argv: list[str], ctx: Ctx) -> Result:
    m = re.search(r"system-(\d+)-link/bin/switch-to-configuration$", argv[0])
    if m is None or int(m.group(1)) not in host.generations:
        return 127, "", f"sh: 1: {argv[0]}: not found\n"
    number = int(m.group(1))
    action = argv[1] if len(argv) > 1 else ""
    gen = host.generations[number]
    if action in ("switch", "test"):
        return host.activate(gen.build, number, action)
    if action == "boot":
        return 0, "", "updating systemd-boot entries...\n"
    if action == "dry-activate":
        return 0, "", "would activate the configuration...\n"
    return (
        1,
        "",
        (
            "Usage: switch-to-configuration [switch|boot|test|dry-activate|check]\n"
            "switch:       make the configuration the boot default and activate now\n"
            "boot:         make the configuration the boot default\n"
            "test:         activate the configuration, but don't make it the boot default\n"
            "dry-activate: show what would be done if this configuration were activated\n"
        ),
    )
