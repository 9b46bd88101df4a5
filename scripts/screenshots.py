"""Screenshots of the Prefect UI for the docs: ``python -m scripts.screenshots``.

Starts a simulated lab and a throw-away local Prefect server with its UI, registers every
moxflow deployment by serving them (``python -m deployments.serve``), runs zfs-snapshot/daily,
guest-snapshot/daily, nixos-update/weekly (the lab offers dns, media and builder a new
revision; media's breaks jellyfin.service, so media is rolled back while the others update)
and vzdump-backup/nightly against the lab, then photographs the UI with headless Chromium
(Debian's ``chromium`` package):

- ``docs/img/prefect-deployments.png``: the Deployments page;
- ``docs/img/prefect-run-report.png``: the zfs-snapshot run's report artifact;
- ``docs/img/prefect-flow-runs.png``: the flow runs page;
- ``docs/img/prefect-graph-nixos-update.png``: the nixos-update run's page with its run graph
  (one nixos-update-host subflow run per host);
- ``docs/img/prefect-graph-nixos-host-rollback.png``: the run graph of media's subflow run,
  the steps up to the failed verification, then the switch back;
- ``docs/img/prefect-graph-vzdump-backup.png``: the vzdump-backup run's page with its run graph.

Beside each PNG, ``<name>.txt`` holds the page's visible text (from Chromium's DOM dump), so
that a test can check what the picture shows. Everything listens on loopback, lives in a
temporary folder, and is stopped at the end.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

from websockets.sync.client import connect

from scripts.prefect_server import start_server, stop_server

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "img"
PY = sys.executable
WINDOW = (1600, 900)
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
REPORT_RUN = "zfs-snapshot/daily"
"""The run whose report artifact is photographed."""
NIXOS_RUN = "nixos-update/weekly"
BACKUP_RUN = "vzdump-backup/nightly"
RUNS = (REPORT_RUN, "guest-snapshot/daily", NIXOS_RUN, BACKUP_RUN)
"""The deployments run against the lab, in this order."""
NIXOS_HOSTS = ("dns", "media", "builder")
"""The lab's NixOS hosts, all offered a new revision before the nixos-update run ..."""
ROLLBACK_HOST = "media"
"""... of which this one's new generation fails a unit, so that it is rolled back."""
FAILING_UNIT = "jellyfin.service"
NEW_REV = "0123456789abcdef0123456789abcdef01234567"
BACKUP_PARAMETERS = {"select": "100,104"}
"""Two small guests (dns, homeassistant) on two nodes, as ``make demo`` backs up: the picture
stays legible and the run short (the lab's @all includes a large Windows VM)."""
STILL = """
if (!document.getElementById('screenshot-still')) {
  const style = document.createElement('style');
  style.id = 'screenshot-still';
  style.textContent = '*, *::before, *::after { animation: none !important; '
    + 'transition: none !important; caret-color: transparent !important; }';
  document.head.appendChild(style);
}
"""
"""Stops CSS animations and the text cursor (the "Ready" badge's dot pulses, a focused search
field blinks): the picture can then settle, and is the same from one run to the next."""
GRAPH_DRAWN = "!!document.querySelector('.flow-run-graph:not(.flow-run-graph--no-nodes) canvas')"
"""True once a flow run page has drawn its run graph (a canvas; its nodes are not in the DOM)."""


def say(text: str) -> None:
    print(f"== {text}", flush=True)


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit("chromium not found: `apt-get install chromium` (Debian's package)")


class Chromium:
    """Headless Chromium driven over the DevTools protocol, one page at a time.

    A page is photographed once it has rendered what it is expected to show and its text
    has stopped changing (the UI fetches its data after loading, then fades it in).
    """

    def __init__(self, exe: str, profile: Path, log: Path) -> None:
        profile.mkdir(parents=True)
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    exe,
                    *CHROMIUM_FLAGS,
                    f"--user-data-dir={profile}",
                    f"--window-size={WINDOW[0]},{WINDOW[1]}",
                    "--remote-debugging-address=127.0.0.1",
                    "--remote-debugging-port=0",
                    "about:blank",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise SystemExit(f"chromium did not start; see {log}")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            pages = [t for t in json.load(r) if t["type"] == "page"]
        self.ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        self._id = 0
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=WINDOW[0],
            height=WINDOW[1],
            deviceScaleFactor=1,
            mobile=False,
        )

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise SystemExit(f"chromium: {method}: {msg['error']}")
                return dict(msg.get("result", {}))

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def text(self) -> str:
        return str(self.evaluate("document.body ? document.body.innerText : ''") or "")

    def capture(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])

    def shoot(
        self,
        url: str,
        name: str,
        expect: Sequence[str],
        timeout: float = 90,
        ready: str | None = None,
    ) -> None:
        """``docs/img/<name>.png`` and ``<name>.txt`` (the visible text) of ``url``.

        Taken once the text shows every ``expect`` and has stopped changing, the JavaScript
        expression ``ready`` (if any) is true, and the picture itself has stopped changing
        (the UI fades its data in; the run graph is drawn on a canvas, then animated).
        """
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        last, stable = "", 0
        while stable < 3:
            if time.monotonic() > deadline:
                missing = [e for e in expect if e not in last] or [f"{ready} (JavaScript)"]
                raise SystemExit(f"{url} did not show {missing} within {timeout:g} s")
            time.sleep(0.5)
            now = self.text()
            shown = all(e in now for e in expect) and (ready is None or bool(self.evaluate(ready)))
            stable = stable + 1 if now == last and shown else 0
            last = now
        self.evaluate(STILL)
        png, same = self.capture(), 0
        deadline = time.monotonic() + 30
        while same < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
            again = self.capture()
            same = same + 1 if again == png else 0
            png = again
        if same < 2:
            print(f"   (docs/img/{name}.png: the picture was still changing)", flush=True)
        (OUT / f"{name}.png").write_bytes(png)
        lines = (re.sub(r"\s+", " ", t).strip() for t in re.split(r"[\n\t]", self.text()))
        (OUT / f"{name}.txt").write_text("\n".join(t for t in lines if t) + "\n", "utf-8")
        print(f"   docs/img/{name}.png: {len(png) // 1024} KiB  <- {url}", flush=True)

    def close(self) -> None:
        with contextlib.suppress(AttributeError, OSError):
            self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def serve_and_run(inventory: Path, env: dict[str, str], log: Path) -> dict[str, FlowRun]:
    """Serve every deployment, as ``python -m deployments.serve`` does, and run RUNS.

    Returns each run, finished. The serving process is stopped before returning; the
    deployments stay registered (and show as "Ready" since it served them). It logs at INFO
    level, so that the runs' pages show their logs.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    from deployments.definitions import DEFINITIONS

    with log.open("wb") as out:
        serve = subprocess.Popen(
            [PY, "-m", "deployments.serve", "--inventory", str(inventory)],
            env={**env, "PREFECT_RUNNER_POLL_FREQUENCY": "2", "PREFECT_LOGGING_LEVEL": "INFO"},
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        with get_client(sync_client=True) as client:
            while len(client.read_deployments()) < len(DEFINITIONS):
                if serve.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the deployments were not served; see {log}")
                time.sleep(0.5)
        runs: dict[str, FlowRun] = {}
        for name in RUNS:
            say(f"running {name}")
            parameters = BACKUP_PARAMETERS if name == BACKUP_RUN else {}
            flow_run = run_deployment(name, parameters=parameters, timeout=300)
            assert isinstance(flow_run, FlowRun)  # the sync call returns the run, not a coroutine
            say(f"   flow run {flow_run.name} ({flow_run.id}): {state_name(flow_run)}")
            if not (flow_run.state and flow_run.state.is_final()):
                raise SystemExit(f"{name} did not finish; see {log}")
            runs[name] = flow_run
        # the run is final, but its process may still be sending its logs: stopping the
        # runner now would mark the run Cancelled over its Completed
        deadline = time.monotonic() + 60
        while _flow_run_processes(serve.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        return runs
    finally:
        serve.terminate()
        try:
            serve.wait(timeout=30)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait()


def _flow_run_processes(parent: int) -> list[int]:
    """The flow-run processes (``python -m prefect.engine``) the runner ``parent`` started."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        if ppid == parent and b"prefect.engine" in cmdline:
            found.append(int(stat.parent.name))
    return found


def state_name(flow_run: FlowRun) -> str:
    return (flow_run.state.name if flow_run.state else None) or "without a state"


def subflow_run(parent: FlowRun, name: str) -> FlowRun:
    """The subflow run of ``parent`` named ``name`` (nixos-update names them by host)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent.id])
            )
        )
    for child in children:
        if child.name == name:
            return child
    names = ", ".join(c.name for c in children) or "none"
    raise SystemExit(f"flow run {parent.name} has no subflow run {name!r} (it has: {names})")


def report_artifact(flow_run_id: UUID) -> UUID:
    """The table artifact that the run published."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    for art in artifacts:
        if art.type == "table":
            return art.id
    raise SystemExit(f"flow run {flow_run_id} published no report artifact")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.screenshots", description=__doc__)
    parser.parse_args(argv)
    exe = find_chromium()
    OUT.mkdir(parents=True, exist_ok=True)

    from labsim.client import start_lab

    with tempfile.TemporaryDirectory(prefix="moxflow-screenshots-") as tmp:
        work = Path(tmp)
        env = dict(os.environ)
        env["PREFECT_UI_ENABLED"] = "true"
        env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
        env["PREFECT_LOGGING_LEVEL"] = "WARNING"
        # the UI then finds its API at PREFECT_API_URL, which start_server sets (loopback)
        for key in ("PREFECT_UI_API_URL", "PREFECT_SERVER_UI_API_URL", "PREFECT_UI_URL"):
            env.pop(key, None)
        say("starting the simulated lab and a local Prefect server with its UI")
        lab = start_lab(work / "lab", time_scale=0.2)
        server = None
        try:
            server = start_server(work / "prefect", env)
            api = env["PREFECT_API_URL"]
            ui = api.removesuffix("/api")
            os.environ.update(
                {k: env[k] for k in ("PREFECT_API_URL", "PREFECT_HOME", "PREFECT_LOGGING_LEVEL")}
            )
            say(f"a new NixOS revision for {', '.join(NIXOS_HOSTS)}; {ROLLBACK_HOST}'s fails")
            for host in NIXOS_HOSTS:
                failing = [FAILING_UNIT] if host == ROLLBACK_HOST else []
                lab.nixos(host, upstream=NEW_REV, failed_units=failing)
            say(f"serving the deployments at {api}")
            runs = serve_and_run(lab.inventory, env, work / "serve.log")
            artifact = report_artifact(runs[REPORT_RUN].id)
            nixos, backup = runs[NIXOS_RUN], runs[BACKUP_RUN]
            rolled_back = subflow_run(nixos, ROLLBACK_HOST)
            say("taking screenshots")
            browser = Chromium(exe, work / "chromium", work / "chromium.log")
            try:
                browser.shoot(
                    f"{ui}/deployments",
                    "prefect-deployments",
                    ["zfs-snapshot", "guest-snapshot", "nixos-update", "Ready"],
                )
                browser.shoot(
                    f"{ui}/artifacts/artifact/{artifact}",
                    "prefect-run-report",
                    ["zfs-snapshot-report", "target", "outcome", "pve2:rpool/data"],
                )
                browser.shoot(
                    f"{ui}/runs",
                    "prefect-flow-runs",
                    ["Completed", *(flow_run.name for flow_run in runs.values())],
                )
                for flow_run, name, flow_name in (
                    (nixos, "prefect-graph-nixos-update", "nixos-update"),
                    (rolled_back, "prefect-graph-nixos-host-rollback", "nixos-update-host"),
                    (backup, "prefect-graph-vzdump-backup", "vzdump-backup"),
                ):
                    browser.shoot(
                        f"{ui}/runs/flow-run/{flow_run.id}",
                        name,
                        [flow_name, flow_run.name, state_name(flow_run)],
                        ready=GRAPH_DRAWN,
                    )
            finally:
                browser.close()
        finally:
            if server is not None:
                stop_server(server)
            lab.stop()
    say(f"done: {OUT.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
