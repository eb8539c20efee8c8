"""`ofactl deploy` / `status` / `model verify` on the real lab (2 LBs + 4 nodes, tiny model).

Must show (issue 5): a fresh deploy ends with every node ready, one VIP holder and a prediction
through the VIP; a second deploy changes nothing; a bad nginx setting never reaches the running
nginx; status flags a stopped agent, a different model digest, a tampered model file, two VIP
holders; killing ofactl mid-deploy and re-running converges.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from typing import Any

import pytest

from tests.fleet.conftest import OFACTL, build_tiny

pytestmark = pytest.mark.lab

VIP = "10.213.0.100/24"


def _nodes(st: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in st["nodes"]}


def _sha(fleet: Any, host: str, path: str) -> str:
    p = fleet.lab.exec(host, ["sha256sum", path], timeout=10)
    return p.stdout.split()[0] if p.returncode == 0 else ""


def _wait_healthy(fleet: Any, budget_s: float = 90.0) -> dict[str, Any]:
    st: dict[str, Any] = {}
    deadline = time.monotonic() + budget_s
    while time.monotonic() < deadline:
        rc, st = fleet.status()
        if rc == 0:
            return st
        time.sleep(2)
    raise AssertionError(f"fleet not healthy after {budget_s:g} s: {st.get('reasons')}")


def test_fresh_deploy_every_node_ready_one_vip_holder_prediction(deployed_fleet):
    report = deployed_fleet.first_deploy
    assert report["ok"] is True
    hosts = {h["host"]: h for h in report["hosts"]}
    assert set(hosts) == {"lb1", "lb2", "node1", "node2", "node3", "node4"}
    assert all(h["status"] in ("changed", "unchanged") for h in hosts.values())
    st = _wait_healthy(deployed_fleet)
    assert st["verdict"] == "healthy"
    assert all(n["ready"] and n["unit"] == "active" for n in st["nodes"])
    assert len({n["model_digest"] for n in st["nodes"]}) == 1
    assert st["vips"] == {VIP: ["lb1"]}
    answer = deployed_fleet.predict_via_vip()
    assert answer.get("label") in {"entailment", "contradiction", "neutral"}, answer


def test_second_deploy_changes_nothing(deployed_fleet):
    rc, report = deployed_fleet.deploy()
    assert rc == 0, report
    changed = {h["host"]: h["changes"] for h in report["hosts"] if h["changes"]}
    assert changed == {}
    assert report["summary"] == {"changed": 0, "unchanged": 6, "failed": 0, "skipped": 0}
    # it reports the release the nodes run, not a new id for the same content
    assert report["release"] == deployed_fleet.first_deploy["release"]
    # nothing restarted: agents still ready, nothing reloaded
    assert deployed_fleet.status()[0] == 0


def test_dry_run_changes_nothing_and_shows_diff(deployed_fleet):
    inv = deployed_fleet.inventory_variant(
        "dry", mutate=lambda d: d["agent"].update(max_batch_size=4))
    before = _sha(deployed_fleet, "node1", "/etc/ofa-agent/agent.env")
    p = deployed_fleet.ofactl("deploy", "--dry-run", "--nodes", "node1", inventory=inv)
    assert p.returncode == 0, p.stderr
    assert "write /etc/ofa-agent/agent.env" in p.stdout
    assert "systemctl restart ofa-agent" in p.stdout
    assert _sha(deployed_fleet, "node1", "/etc/ofa-agent/agent.env") == before


def test_bad_nginx_setting_never_reaches_running_nginx(deployed_fleet):
    """An upstream node nginx cannot resolve: `nginx -t` fails on lb1, the old config stays,
    nginx keeps serving through the VIP, lb2 is left alone, exit code 1."""

    def bad(doc: dict[str, Any]) -> None:
        doc["sites"][0]["nodes"].append({"name": "node9", "address": "no-such-host.invalid",
                                         "weight": 1})

    inv = deployed_fleet.inventory_variant("bad-nginx", mutate=bad)
    before = {lb: _sha(deployed_fleet, lb, "/etc/nginx/nginx.conf") for lb in ("lb1", "lb2")}
    pid_before = deployed_fleet.lab.exec("lb1", ["systemctl", "show", "-p", "MainPID",
                                                 "--value", "nginx"]).stdout.strip()
    # the dry run already says so: validated on the host from a temp file
    rc, report = deployed_fleet.deploy("--role", "lb", "--dry-run", inventory=inv)
    assert rc == 1, report
    assert "validation failed (dry run)" in report["hosts"][-2]["error"]
    rc, report = deployed_fleet.deploy("--role", "lb", inventory=inv)
    assert rc == 1, report
    hosts = {h["host"]: h for h in report["hosts"]}
    assert hosts["lb1"]["status"] == "failed"
    assert "validation failed, live config left as it was" in hosts["lb1"]["error"]
    assert "no-such-host.invalid" in hosts["lb1"]["error"]
    assert hosts["lb2"]["status"] == "skipped"
    after = {lb: _sha(deployed_fleet, lb, "/etc/nginx/nginx.conf") for lb in ("lb1", "lb2")}
    assert after == before
    assert deployed_fleet.lab.exec("lb1", ["systemctl", "is-active", "nginx"]).stdout.strip() \
        == "active"
    assert deployed_fleet.lab.exec("lb1", ["systemctl", "show", "-p", "MainPID", "--value",
                                           "nginx"]).stdout.strip() == pid_before
    assert deployed_fleet.lab.exec("lb1", "ls /etc/nginx/ | grep -c ofactl-new || true"
                                   ).stdout.strip() == "0"
    deployed_fleet.predict_via_vip()


def test_status_flags_a_stopped_agent(deployed_fleet):
    deployed_fleet.lab.fault("node2", "stop", "ofa-agent")
    try:
        rc, st = deployed_fleet.status()
        assert rc == 1, st
        n2 = _nodes(st)["node2"]
        assert not n2["ready"]
        assert "unit inactive" in n2["flags"]
        assert any(r.startswith("node2: ") for r in st["reasons"])
    finally:
        rc, report = deployed_fleet.deploy("--nodes", "node2")
        assert rc == 0, report
    assert ["ofa-agent started"] == [c for c in report["hosts"][0]["changes"]]


def test_status_flags_a_node_with_a_different_model(deployed_fleet):
    other = build_tiny(deployed_fleet.workdir / "model-seed1", seed=1)
    inv1 = deployed_fleet.inventory_variant("seed1", model_dir=other)
    p = deployed_fleet.ofactl("model", "pull", "--from", str(other), inventory=inv1)
    assert p.returncode == 0, p.stderr
    rc, report = deployed_fleet.deploy("--nodes", "node3", inventory=inv1)
    assert rc == 0, report
    try:
        rc, st = deployed_fleet.status()
        assert rc == 1, st
        n3 = _nodes(st)["node3"]
        assert any(f.startswith("model digest ") and "differs" in f for f in n3["flags"]), n3
        assert not any("model digest" in f for n, s in _nodes(st).items() if n != "node3"
                       for f in s["flags"])
    finally:
        rc, report = deployed_fleet.deploy("--nodes", "node3")
        assert rc == 0, report


def test_model_verify_flags_a_tampered_file(deployed_fleet):
    p = deployed_fleet.ofactl("model", "verify", "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    deployed_fleet.lab.exec("node4", "cd /opt/ofa/model/ && printf x >> vocab.json", check=True)
    try:
        p = deployed_fleet.ofactl("model", "verify", "--json")
        assert p.returncode == 1
        data = json.loads(p.stdout)
        bad = {n["host"]: n for n in data["nodes"] if n["status"] == "failed"}
        assert list(bad) == ["node4"]
        assert "vocab.json: sha256 mismatch" in bad["node4"]["error"]
    finally:
        rc, report = deployed_fleet.deploy("--nodes", "node4")
        assert rc == 0, report
    assert any("repaired" in c for c in report["hosts"][0]["changes"]), report
    assert deployed_fleet.ofactl("model", "verify").returncode == 0


def test_status_flags_two_vip_holders(deployed_fleet):
    # out of band: lb2 also claims the VIP (split-brain)
    deployed_fleet.lab.exec("lb2", ["ip", "addr", "add", VIP, "dev", "eth0"], check=True)
    try:
        rc, st = deployed_fleet.status()
        assert rc != 0, st
        assert sorted(st["vips"][VIP]) == ["lb1", "lb2"]
        assert any("split-brain" in r for r in st["reasons"])
    finally:
        deployed_fleet.lab.exec("lb2", ["ip", "addr", "del", VIP, "dev", "eth0"])
    rc, st = deployed_fleet.status()
    assert st["vips"] == {VIP: ["lb1"]}


def test_killed_deploy_rerun_converges(deployed_fleet):
    """SIGKILL ofactl while it pushes a new model to every node; the re-run breaks the stale
    lock, finishes, and a third run changes nothing."""
    other = build_tiny(deployed_fleet.workdir / "model-seed2", seed=2)
    inv2 = deployed_fleet.inventory_variant("seed2", model_dir=other)
    assert deployed_fleet.ofactl("model", "pull", "--from", str(other),
                                 inventory=inv2).returncode == 0
    env = dict(os.environ, COLUMNS="200")
    env.pop("OFACTL_INVENTORY", None)
    proc = subprocess.Popen([*OFACTL, "deploy", "--yes", "--json", "-i", str(inv2)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    # kill it once some node has started receiving the new snapshot (bounded wait)
    digest12 = json.loads((other / "ofactl-manifest.json").read_text())["digest"][:12]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        p = deployed_fleet.lab.exec("node1", ["test", "-d", f"/opt/ofa/models/{digest12}"])
        if p.returncode == 0:
            break
        time.sleep(0.1)
    assert proc.poll() is None, "deploy finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    try:
        rc, report = deployed_fleet.deploy(inventory=inv2)
        assert rc == 0, report
        assert "broke stale lock" in report["lock"]
        rc, st = deployed_fleet.status(inventory=inv2)
        assert rc == 0, st["reasons"]
        assert {n["model_digest"][:12] for n in st["nodes"]} == {digest12}
        rc, report = deployed_fleet.deploy(inventory=inv2)
        assert rc == 0 and report["summary"]["changed"] == 0, report
    finally:
        rc, report = deployed_fleet.deploy()
        assert rc == 0, report


def test_lock_status_free_after_deploys(deployed_fleet):
    p = deployed_fleet.ofactl("lock", "status", "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["held"] is False
    # every non-dry deploy left an audit line on the lock host
    assert data["recent"] and data["recent"][-1]["command"].startswith("deploy")
    assert data["recent"][-1]["ok"] is True


def test_manifest_sha_on_node_matches_control(deployed_fleet):
    local = (deployed_fleet.model_dir / "ofactl-manifest.json").read_bytes()
    assert _sha(deployed_fleet, "node1", "/opt/ofa/model/ofactl-manifest.json") == \
        hashlib.sha256(local).hexdigest()
