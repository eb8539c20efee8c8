"""`deployed_fleet`: the lab fleet (tests/fixtures_lab.py) with ofactl deployed on it.

One per session, built on `lab_fleet`: a tiny random-weight model (`ofactl model tiny`), an
inventory copy pointing at it (`model.local_dir`), `ofactl model pull --from`, then
`ofactl deploy --yes --json`; the fixture fails if that deploy fails. Tests that change the fleet
must put it back (`fleet.deploy()` with the fixture inventory restores model, release, configs).

    def test_x(deployed_fleet):
        rc, report = deployed_fleet.deploy("--nodes", "node1")
        rc, st = deployed_fleet.status()
        deployed_fleet.lab.exec("lb1", ["ip", "-o", "addr"])
        deployed_fleet.predict_via_vip()  # -> agent JSON answer
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

OFACTL = [sys.executable, "-c", "from ofactl.cli import main; main()"]


def run_ofactl(*args: str, timeout: float = 600, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
    """Run the ofactl CLI in a subprocess (bounded)."""
    import os

    e = dict(os.environ)
    e.pop("OFACTL_INVENTORY", None)
    e.update(env or {})
    e.setdefault("COLUMNS", "200")
    return subprocess.run([*OFACTL, *args], capture_output=True, text=True, timeout=timeout,
                          env=e)


def build_tiny(out: Path, seed: int = 0) -> Path:
    """`ofactl model tiny --out OUT --seed N` (random weights; seconds)."""
    p = run_ofactl("model", "tiny", "--out", str(out), "--seed", str(seed), "--force",
                   timeout=300)
    assert p.returncode == 0, f"model tiny failed: {p.stderr[-2000:]}"
    return out


def png_bytes() -> bytes:
    """A small RGB PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (48, 32), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class DeployedFleet:
    """The lab plus the deployment on it."""

    lab: Any  # tests.fixtures_lab.LabFleet
    inventory_path: Path
    model_dir: Path
    first_deploy: dict[str, Any]
    first_deploy_s: float
    workdir: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        # everything else is the lab's: exec, fault, heal, nodes, lbs, address, vip, ...
        if name.startswith("__") or name == "lab":
            raise AttributeError(name)
        return getattr(self.lab, name)

    def ofactl(self, *args: str, timeout: float = 600, inventory: Path | None = None
               ) -> subprocess.CompletedProcess[str]:
        """The CLI with `-i <fixture inventory>` appended (or another inventory)."""
        return run_ofactl(*args, "-i", str(inventory or self.inventory_path), timeout=timeout)

    def deploy(self, *args: str, inventory: Path | None = None, timeout: float = 600
               ) -> tuple[int, dict[str, Any]]:
        """`ofactl deploy --yes --json ARGS` -> (exit code, report)."""
        p = self.ofactl("deploy", "--yes", "--json", *args, inventory=inventory,
                        timeout=timeout)
        try:
            data = json.loads(p.stdout)
        except ValueError:
            data = {"stdout": p.stdout[-3000:], "stderr": p.stderr[-3000:]}
        return p.returncode, data

    def status(self, *args: str, inventory: Path | None = None) -> tuple[int, dict[str, Any]]:
        """`ofactl status --json` -> (exit code, data)."""
        p = self.ofactl("status", "--json", *args, inventory=inventory, timeout=120)
        try:
            return p.returncode, json.loads(p.stdout)
        except ValueError:
            return p.returncode, {"stdout": p.stdout[-3000:], "stderr": p.stderr[-3000:]}

    def predict_via_vip(self, timeout: float = 30.0) -> dict[str, Any]:
        """POST one image + hypothesis to the VIP (nginx -> an agent); the JSON answer."""
        import httpx

        r = httpx.post(f"http://{self.lab.vip}/v1/predict", timeout=timeout,
                       files={"image": ("x.png", png_bytes(), "image/png")},
                       data={"text": "a red picture"})
        assert r.status_code == 200, f"predict via VIP: {r.status_code} {r.text[:500]}"
        return dict(r.json())

    def inventory_variant(self, name: str, model_dir: Path | None = None,
                          mutate: Any = None) -> Path:
        """A copy of the fixture inventory (another model dir and/or a mutation fn(doc))."""
        import yaml

        doc = yaml.safe_load(self.inventory_path.read_text())
        if model_dir is not None:
            doc["model"]["local_dir"] = str(model_dir)
        if mutate is not None:
            mutate(doc)
        dest = self.workdir / f"{name}.yaml"
        dest.write_text(yaml.safe_dump(doc, sort_keys=False))
        return dest


@pytest.fixture(scope="session")
def deployed_fleet(lab_fleet: Any, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[DeployedFleet]:
    """lab_fleet + tiny model + a successful `ofactl deploy` (asserted)."""
    work = tmp_path_factory.mktemp("deployed-fleet")
    model = build_tiny(work / "model-seed0", seed=0)
    inv = lab_fleet.inventory_copy(work / "inventory.yaml", model_dir=model,
                                   ready_timeout_s=180)
    p = run_ofactl("model", "pull", "--from", str(model), "-i", str(inv), timeout=120)
    assert p.returncode == 0, p.stderr
    t0 = time.monotonic()
    fleet = DeployedFleet(lab_fleet, inv, model, {}, 0.0, work)
    rc, report = fleet.deploy()
    fleet.first_deploy, fleet.first_deploy_s = report, time.monotonic() - t0
    assert rc == 0, f"first deploy failed: {json.dumps(report, indent=1)[-4000:]}"
    yield fleet
