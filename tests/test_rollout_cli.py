"""CLI wiring of restart --rolling / rollback / failover-test without a fleet (no network)."""

from __future__ import annotations

import json
from pathlib import Path

from test_deploy_cli import write_inventory
from typer.testing import CliRunner

from ofactl.cli import app


def _inventory(tmp: Path) -> Path:
    return write_inventory(tmp, [
        {"name": "dc1", "cloud": "private", "provider": "onprem",
         "nodes": [{"name": f"dc1-n{i}", "address": f"10.213.0.{20 + i}"} for i in (1, 2, 3)]},
        {"name": "aws", "cloud": "public", "provider": "aws",
         "nodes": [{"name": f"aws-n{i}", "address": f"10.213.0.{30 + i}"} for i in (1, 2)]},
    ])


def test_restart_dry_run_plan_json(tmp_path: Path) -> None:
    inv = _inventory(tmp_path)
    r = CliRunner().invoke(app, ["restart", "--rolling", "--dry-run", "--batch", "100%",
                                 "--canary", "1", "--json", "-i", str(inv)])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["plan"]["batches"] == [
        {"index": 0, "nodes": ["dc1-n1"], "canary": True},
        {"index": 1, "nodes": ["dc1-n2", "dc1-n3", "aws-n1"], "canary": False},
        {"index": 2, "nodes": ["aws-n2"], "canary": False},
    ]
    assert "  dc1-n1: systemctl restart ofa-agent" in data["steps"]


def test_restart_needs_rolling_and_guards_capacity(tmp_path: Path) -> None:
    inv = _inventory(tmp_path)
    r = CliRunner().invoke(app, ["restart", "-i", str(inv)])
    assert r.exit_code == 2
    assert "error: restart: only rolling restarts are supported" in r.output
    r = CliRunner().invoke(app, ["restart", "--rolling", "--dry-run", "--min-ready-per-cloud",
                                 "public=2", "-i", str(inv)])
    assert r.exit_code == 2
    assert ("aws-n1: draining it would leave 1 ready node(s) in cloud public, below the minimum "
            "of 2") in r.output.replace("\n", " ")
    r = CliRunner().invoke(app, ["restart", "--rolling", "--dry-run", "--batch", "x",
                                 "-i", str(inv)])
    assert r.exit_code == 2 and "--batch: must be a whole number" in r.output


def test_failover_test_rejects_bad_scenario_and_no_vip(tmp_path: Path) -> None:
    inv = _inventory(tmp_path)
    r = CliRunner().invoke(app, ["failover-test", "--scenario", "dc", "-i", str(inv)])
    assert r.exit_code == 2
    assert "--scenario: expected one of node, lb, cloud, all, got 'dc'" in r.output
    r = CliRunner().invoke(app, ["failover-test", "--scenario", "node", "--rate", "0",
                                 "-i", str(inv)])
    assert r.exit_code == 2 and "must be > 0" in r.output
    r = CliRunner().invoke(app, ["failover-test", "--scenario", "cloud", "--yes",
                                 "-i", str(inv)])
    assert r.exit_code == 2 and "no load-balancer pair in the inventory" in r.output
