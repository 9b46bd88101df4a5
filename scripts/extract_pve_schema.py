"""Extract the Proxmox VE API endpoints moxflow uses into ``labsim/pve-api-subset.json``.

The full schema (pve-docs' ``apidata.js``, flattened) is too large to ship and is not part of
a fresh clone, so the simulated lab and the conformance tests read this committed subset.
Run it again whenever the project starts using a new endpoint::

    python scripts/extract_pve_schema.py [SCHEMA_JSON] [--output labsim/pve-api-subset.json]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SCHEMA = REPO.parent / "shared" / "reference" / "proxmox-ve-api-schema.json"
DEFAULT_OUTPUT = REPO / "labsim" / "pve-api-subset.json"

# Every endpoint moxflow calls or will call: path -> the methods to copy.
SUBSET: dict[str, tuple[str, ...]] = {
    "/version": ("GET",),
    "/cluster/status": ("GET",),
    "/cluster/resources": ("GET",),
    "/nodes": ("GET",),
    "/nodes/{node}/status": ("GET", "POST"),
    "/nodes/{node}/tasks": ("GET",),
    "/nodes/{node}/tasks/{upid}": ("DELETE", "GET"),
    "/nodes/{node}/tasks/{upid}/status": ("GET",),
    "/nodes/{node}/tasks/{upid}/log": ("GET",),
    "/nodes/{node}/storage": ("GET",),
    "/nodes/{node}/storage/{storage}/content": ("GET",),
    "/nodes/{node}/storage/{storage}/content/{volume}": ("DELETE", "GET", "PUT"),
    "/nodes/{node}/storage/{storage}/prunebackups": ("DELETE", "GET"),
    "/nodes/{node}/vzdump": ("POST",),
    "/nodes/{node}/apt/update": ("GET", "POST"),
    "/nodes/{node}/apt/versions": ("GET",),
    "/nodes/{node}/migrateall": ("POST",),
    "/nodes/{node}/stopall": ("POST",),
    "/nodes/{node}/startall": ("POST",),
    "/cluster/ha/status/manager_status": ("GET",),
    "/cluster/ha/status/current": ("GET",),
    "/cluster/config/qdevice": ("GET",),
}
for _t in ("qemu", "lxc"):
    SUBSET |= {
        f"/nodes/{{node}}/{_t}": ("GET", "POST"),
        f"/nodes/{{node}}/{_t}/{{vmid}}": ("DELETE",),
        f"/nodes/{{node}}/{_t}/{{vmid}}/config": ("GET",),
        f"/nodes/{{node}}/{_t}/{{vmid}}/migrate": ("GET", "POST"),
        f"/nodes/{{node}}/{_t}/{{vmid}}/status/current": ("GET",),
        f"/nodes/{{node}}/{_t}/{{vmid}}/status/start": ("POST",),
        f"/nodes/{{node}}/{_t}/{{vmid}}/status/stop": ("POST",),
        f"/nodes/{{node}}/{_t}/{{vmid}}/status/shutdown": ("POST",),
        f"/nodes/{{node}}/{_t}/{{vmid}}/status/reboot": ("POST",),
        f"/nodes/{{node}}/{_t}/{{vmid}}/snapshot": ("GET", "POST"),
        f"/nodes/{{node}}/{_t}/{{vmid}}/snapshot/{{snapname}}": ("DELETE", "GET"),
        f"/nodes/{{node}}/{_t}/{{vmid}}/snapshot/{{snapname}}/config": ("GET", "PUT"),
        f"/nodes/{{node}}/{_t}/{{vmid}}/snapshot/{{snapname}}/rollback": ("POST",),
    }
# Plus every method of every path under these prefixes (the QEMU guest agent commands).
SUBSET_PREFIXES: tuple[str, ...] = ("/nodes/{node}/qemu/{vmid}/agent",)

_PREFIX_RE = re.compile("|".join(f"^{re.escape(p)}(/|$)" for p in SUBSET_PREFIXES))


def extract(schema: dict[str, Any]) -> dict[str, Any]:
    """The subset document: the same shape as the full schema, only what we use."""
    paths: dict[str, Any] = schema["paths"]
    wanted: dict[str, tuple[str, ...] | None] = dict(SUBSET)
    wanted |= {p: None for p in paths if _PREFIX_RE.match(p) and p not in wanted}
    out: dict[str, Any] = {}
    missing: list[str] = []
    for path in sorted(wanted):
        methods = wanted[path]
        entry = paths.get(path, {})
        names = sorted(entry) if methods is None else methods
        for m in names:
            if m not in entry:
                missing.append(f"{m} {path}")
        if names:
            out[path] = {m: entry[m] for m in names if m in entry}
    if missing:
        raise KeyError(f"not in the schema: {', '.join(missing)}")
    return {
        "source": schema.get("source", ""),
        "note": "subset extracted by scripts/extract_pve_schema.py; do not edit by hand",
        "paths": out,
    }


def render(subset: dict[str, Any]) -> str:
    """The subset as committed: sorted keys, one-space indent, trailing newline."""
    return json.dumps(subset, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "schema",
        nargs="?",
        type=Path,
        default=DEFAULT_SCHEMA,
        help=f"the full flattened schema (default: {DEFAULT_SCHEMA})",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help=f"where to write the subset (default: {DEFAULT_OUTPUT})",
    )
    args = parser.parse_args(argv)
    if not args.schema.is_file():
        print(f"schema not found: {args.schema}", file=sys.stderr)
        return 2
    subset = extract(json.loads(args.schema.read_text(encoding="utf-8")))
    args.output.write_text(render(subset), encoding="utf-8")
    print(f"wrote {len(subset['paths'])} paths to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
