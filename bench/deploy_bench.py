"""Deploy and status benchmark on the lab (root) plus status against 200 fake agents on loopback.

    .venv/bin/python bench/deploy_bench.py [--keep-lab] [--fake-agents 200] [--skip-lab]

Figures (wall time of the real CLI, python start-up included):
  - fresh deploy of 1 node vs 4 nodes (--parallel 4) vs 4 nodes (--parallel 1), nodes wiped
    before each run (agent release + 33 MB tiny model + unit + wait for ready), LBs excluded;
  - no-change redeploy of the whole fleet (2 LBs + 4 nodes);
  - `status` of the lab (4 nodes + 2 LBs, SSH + HTTP probes);
  - status probes (HTTP: ready + metrics) of 1 vs N fake agents on loopback.
Results print as a table and go to bench/results/deploy_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OFACTL = [sys.executable, "-c", "from ofactl.cli import main; main()"]
WIPE = ("systemctl disable --now ofa-agent >/dev/null 2>&1; rm -rf /opt/ofa /etc/ofa-agent "
        "/etc/systemd/system/ofa-agent.service; systemctl daemon-reload")


def ofactl(*args: str, timeout: float = 900) -> tuple[float, int, dict[str, Any]]:
    """Run the CLI; (seconds, exit code, parsed --json output or {})."""
    env = dict(os.environ, COLUMNS="200")
    env.pop("OFACTL_INVENTORY", None)
    t0 = time.monotonic()
    p = subprocess.run([*OFACTL, *args], capture_output=True, text=True, timeout=timeout,
                       env=env)
    dt = time.monotonic() - t0
    try:
        data = json.loads(p.stdout)
    except ValueError:
        data = {"stderr": p.stderr[-2000:]}
    return dt, p.returncode, data


def _session_lock(wait_s: float = 900) -> int:
    """The lab session lock tests/fixtures_lab.py uses: one lab user at a time (bounded)."""
    from ofactl.errors import LabError
    from ofactl.lab.api import take_session_lock

    try:
        return take_session_lock(wait_s)
    except LabError as e:
        raise SystemExit(str(e)) from None


def lab_figures(work: Path, keep: bool, wait_s: float = 900) -> dict[str, Any]:
    fd = _session_lock(wait_s)
    try:
        return _lab_figures(work, keep)
    finally:
        os.close(fd)


def _lab_figures(work: Path, keep: bool) -> dict[str, Any]:
    from ofactl.lab import api

    info = api.status()
    created = False
    if info is None or not info.healthy:
        api.down()
        info = api.up(nodes=4, lbs=2)
        created = True
    try:
        model = work / "model"
        subprocess.run([*OFACTL, "model", "tiny", "--out", str(model), "--force"], check=True,
                       capture_output=True, timeout=300)
        import yaml

        doc = yaml.safe_load(Path(info.plan.inventory_path).read_text())
        doc["model"]["local_dir"] = str(model)
        doc["agent"]["runtime"] = sys.prefix
        inv = work / "inventory.yaml"
        inv.write_text(yaml.safe_dump(doc, sort_keys=False))
        nodes = [h.name for h in info.plan.hosts if h.role == "node"]

        def wipe() -> None:
            for n in nodes:
                api.exec_in(n, ["sh", "-c", WIPE], timeout=60)

        out: dict[str, Any] = {}
        runs = [("deploy_1_node_fresh_s", ["--nodes", nodes[0], "--parallel", "4"]),
                ("deploy_4_nodes_fresh_parallel4_s", ["--role", "node", "--parallel", "4"]),
                ("deploy_4_nodes_fresh_parallel1_s", ["--role", "node", "--parallel", "1"])]
        for key, extra in runs:
            wipe()
            dt, rc, data = ofactl("deploy", "-i", str(inv), "--yes", "--json", *extra)
            assert rc == 0, data
            out[key] = round(dt, 2)
            out[key.replace("_s", "_ready_after_s")] = [
                h.get("data", {}).get("ready_after_s") for h in data["hosts"]]
        dt, rc, data = ofactl("deploy", "-i", str(inv), "--yes", "--json")  # LBs too
        assert rc == 0, data
        dt, rc, data = ofactl("deploy", "-i", str(inv), "--yes", "--json")
        assert rc == 0 and data["summary"]["changed"] == 0, data
        out["redeploy_no_change_6_hosts_s"] = round(dt, 2)
        times = []
        for _ in range(3):
            dt, rc, data = ofactl("status", "-i", str(inv), "--json")
            times.append(dt)
            out["status_lab_probe_s"] = data.get("duration_s")
        out["status_lab_cli_s_best_of_3"] = round(min(times), 2)
        out["status_lab_verdict"] = data.get("verdict")
        return out
    finally:
        if created and not keep:
            api.down()


_FAKE_SERVER = r'''
import asyncio, json, sys
base, n = int(sys.argv[1]), int(sys.argv[2])
METRICS = ("".join(
    f'ofa_agent_request_duration_seconds_bucket{{le="{le}",outcome="ok"}} {c}\n'
    for le, c in (("0.05", 10), ("0.1", 50), ("0.25", 90), ("+Inf", 100)))
    + "ofa_agent_inflight 1\n"
    + 'ofa_agent_model_info{model_id="m",revision="v",digest="' + "d" * 64
    + '",device="cpu",dtype="float32",release="r1"} 1.0\n').encode()
BODIES = {b"/v2/health/ready": b'{"ready":true}', b"/metrics": METRICS,
          b"/v1/info": json.dumps({"device": "cpu", "release": "r1",
                                   "model": {"digest": "d" * 64}}).encode()}
async def handle(reader, writer):
    line = await reader.readline()
    while (await reader.readline()) not in (b"\r\n", b"\n", b""):
        pass
    path = line.split(b" ")[1] if line.count(b" ") >= 2 else b""
    body = BODIES.get(path, b"")
    status = b"200 OK" if body else b"404 Not Found"
    writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: " + str(len(body)).encode()
                 + b"\r\nConnection: close\r\n\r\n" + body)
    await writer.drain()
    writer.close()
async def main():
    for i in range(n):
        await asyncio.start_server(handle, "127.0.0.1", base + i, backlog=64)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
asyncio.run(main())
'''


def fake_figures(n: int, base_port: int = 19000) -> dict[str, Any]:
    from ofactl import status

    proc = subprocess.Popen([sys.executable, "-c", _FAKE_SERVER, str(base_port), str(n)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"

        def inv_of(k: int) -> Any:
            nodes = [SimpleNamespace(name=f"fake{i}", address="127.0.0.1", cloud="private",
                                     agent=SimpleNamespace(port=base_port + i, device="cpu"))
                     for i in range(k)]
            return SimpleNamespace(nodes=nodes, lbs=[])

        out: dict[str, Any] = {}
        for k in (1, n):
            best = None
            for _ in range(3):
                st = status.collect(inv_of(k), None, http_timeout=10)
                bad = [(x.name, x.ready_reason) for x in st.nodes if not x.ready]
                assert not bad, bad[:5]
                best = st.duration_s if best is None else min(best, st.duration_s)
            out[f"status_http_{k}_fake_agents_s"] = round(best or 0, 3)
        out["status_fake_ratio"] = round(out[f"status_http_{n}_fake_agents_s"]
                                         / max(out["status_http_1_fake_agents_s"], 1e-6), 1)
        return out
    finally:
        if proc.stdin:
            proc.stdin.close()
        proc.wait(timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fake-agents", type=int, default=200)
    ap.add_argument("--skip-lab", action="store_true")
    ap.add_argument("--keep-lab", action="store_true")
    ap.add_argument("--lab-wait", type=float, default=900,
                    help="Seconds to wait for another lab user to finish.")
    args = ap.parse_args()
    import tempfile

    res: dict[str, Any] = {"machine": f"{os.cpu_count()} CPUs"}
    if not args.skip_lab:
        with tempfile.TemporaryDirectory(prefix="ofactl-bench-") as d:
            res.update(lab_figures(Path(d), args.keep_lab, args.lab_wait))
    res.update(fake_figures(args.fake_agents))
    if "deploy_1_node_fresh_s" in res:
        res["deploy_4_vs_1_ratio"] = round(res["deploy_4_nodes_fresh_parallel4_s"]
                                           / res["deploy_1_node_fresh_s"], 2)
    for k, v in res.items():
        print(f"{k:45} {v}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "deploy_bench.json").write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
