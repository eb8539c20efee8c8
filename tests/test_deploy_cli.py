"""CLI wiring of status/deploy without a fleet: exit codes and JSON shape (loopback only)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner

from ofactl.cli import app


class _Agent(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = {"/v2/health/ready": b'{"ready":true}',
                "/metrics": (b'ofa_agent_inflight 0\nofa_agent_model_info{model_id="m",'
                             b'revision="v",digest="' + b"d" * 64 + b'",device="cpu",'
                             b'dtype="float32",release="r1"} 1.0\n')}.get(self.path, b"")
        self.send_response(200 if body else 404)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a: Any) -> None:
        pass


def write_inventory(tmp: Path, sites: list[dict[str, Any]]) -> Path:
    """A valid inventory with these sites, a fake SSH key, a token file and an empty
    known_hosts under tmp (shared by the CLI tests that never reach a real host)."""
    key = tmp / "key"
    key.write_text("not a real key\n")
    tok = tmp / "token"
    tok.write_text("t0ken\n")
    doc = {
        "version": 1, "fleet": "t",
        "defaults": {"ssh": {"user": "root", "key_file": str(key),
                             "known_hosts": str(tmp / "kh")}},
        "agent": {"token": {"file": str(tok)}},
        "model": {"id": "iic/x", "revision": "v1", "source": "push",
                  "local_dir": str(tmp / "model")},
        "sites": sites,
    }
    (tmp / "kh").write_text("")
    inv = tmp / "inventory.yaml"
    inv.write_text(yaml.safe_dump(doc, sort_keys=False))
    return inv


def _inventory(tmp: Path, ports: list[int]) -> Path:
    return write_inventory(tmp, [{"name": "s1", "cloud": "private", "provider": "onprem",
                                  "nodes": [{"name": f"n{i}", "address": f"127.0.0.{i + 1}",
                                             "agent": {"port": p}}
                                            for i, p in enumerate(ports)]}])


def test_status_no_ssh_degraded_when_one_node_down(tmp_path):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Agent)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    try:
        inv = _inventory(tmp_path, [srv.server_address[1], closed])
        r = CliRunner().invoke(app, ["status", "-i", str(inv), "--no-ssh", "--json",
                                     "--http-timeout", "2"])
        assert r.exit_code == 1, r.output
        data = json.loads(r.stdout)
        assert data["verdict"] == "degraded"
        n0, n1 = data["nodes"]
        assert n0["ready"] and n0["release"] == "r1" and n0["device"] == "cpu"
        assert not n1["ready"] and n1["flags"] == ["not ready (no answer)"]
        r = CliRunner().invoke(app, ["status", "-i", str(inv), "--no-ssh", "--json",
                                     "--nodes", "n1", "--http-timeout", "2"])
        assert r.exit_code == 2 and json.loads(r.stdout)["verdict"] == "down"
    finally:
        srv.shutdown()


def test_deploy_without_model_snapshot_is_a_usage_error(tmp_path):
    inv = _inventory(tmp_path, [8000])
    r = CliRunner().invoke(app, ["deploy", "-i", str(inv), "--yes"])
    assert r.exit_code == 2
    assert "no manifest" in r.output and "ofactl model pull" in r.output


def test_deploy_unknown_selection(tmp_path):
    inv = _inventory(tmp_path, [8000])
    r = CliRunner().invoke(app, ["deploy", "-i", str(inv), "--yes", "--nodes", "zz*"])
    assert r.exit_code == 2 and "no host matches the selection" in r.output


def test_deploy_refuses_bad_rollout_flags_before_touching_any_host(tmp_path):
    inv = _inventory(tmp_path, [1])  # port 1 / a fake key: any connection attempt would fail
    r = CliRunner().invoke(app, ["deploy", "-i", str(inv), "--yes", "--batch", "0"])
    assert r.exit_code == 2, r.output
    assert "--batch: must be a whole number ≥ 1 or a percentage like 25%, got '0'" in r.output
    r = CliRunner().invoke(app, ["deploy", "-i", str(inv), "--yes", "--canary", "-1"])
    assert r.exit_code == 2, r.output
    assert "--canary and --max-fail must be ≥ 0, got -1 and 0" in r.output
    assert "Traceback" not in r.output
