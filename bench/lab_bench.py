"""Benchmark `ofactl lab up` (2 LBs + 4 nodes, budget 30 s) and `ofactl lab down` (budget 15 s).

    sudo .venv/bin/python bench/lab_bench.py [--runs 5] [--json]

Each run times the real CLI end to end (process start included): `lab up` returns once every
host's systemd is running and its sshd answers; then one SSH login per host is checked (not
timed); `lab down` returns once nothing of the lab is left. Prints every run, the medians and
their ratio to the budget; exits 1 when a median is over budget or anything was left behind.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ofactl.errors import LabError  # noqa: E402
from ofactl.lab import api  # noqa: E402

UP_BUDGET_S = 30.0
DOWN_BUDGET_S = 15.0
OFACTL = [sys.executable, "-c", "from ofactl.cli import main; main()"]


def take_lab(wait_s: float) -> int:
    """Wait (bounded) until no test session or other user holds the lab."""
    try:
        return api.take_session_lock(wait_s)
    except LabError as e:
        raise SystemExit(f"lab_bench: {e}") from None


def timed(args: list[str], timeout: float) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.monotonic()
    proc = subprocess.run([*OFACTL, *args], capture_output=True, text=True, timeout=timeout)
    return time.monotonic() - t0, proc


def ssh_check(info: dict[str, object]) -> int:
    """Log in to every host with strict host-key checking; return how many answered."""
    import paramiko  # type: ignore[import-untyped]

    ok = 0
    for host in info["hosts"]:  # type: ignore[attr-defined]
        client = paramiko.SSHClient()
        client.load_host_keys(str(info["known_hosts"]))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(host["address"], username="root", key_filename=str(info["key_file"]),
                           timeout=10, banner_timeout=10, auth_timeout=10, look_for_keys=False,
                           allow_agent=False)
            _, out, _ = client.exec_command("hostname", timeout=10)
            ok += out.read().decode().strip() == host["name"]
        finally:
            client.close()
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--lbs", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--wait", type=float, default=900, help="seconds to wait for the lab "
                        "lock held by test sessions")
    a = parser.parse_args()
    problems = api.preflight_problems()
    if problems:
        print("lab_bench: cannot run: " + "; ".join(problems), file=sys.stderr)
        return 2
    take_lab(a.wait)  # held until exit
    api.down()  # start from a clean machine
    ups: list[float] = []
    downs: list[float] = []
    failures: list[str] = []
    for i in range(a.runs):
        up_s, up = timed(["lab", "up", "--nodes", str(a.nodes), "--lbs", str(a.lbs), "--json"],
                         timeout=120)
        if up.returncode != 0:
            failures.append(f"run {i + 1}: lab up exited {up.returncode}: {up.stderr[-300:]}")
            api.down()
            continue
        info = json.loads(up.stdout)
        answered = ssh_check(info)
        if answered != len(info["hosts"]):
            failures.append(f"run {i + 1}: {answered}/{len(info['hosts'])} hosts answered SSH")
        down_s, down = timed(["lab", "down"], timeout=60)
        left = api.leftovers()
        if down.returncode != 0 or left:
            failures.append(f"run {i + 1}: lab down exited {down.returncode}, left {left}")
        ups.append(up_s)
        downs.append(down_s)
        if not a.json:
            print(f"run {i + 1}: lab up {up_s:5.2f} s (ready in {info['elapsed_s']:.2f} s inside)"
                  f"  lab down {down_s:5.2f} s  ssh {answered}/{len(info['hosts'])}")
    up_med = round(statistics.median(ups), 2) if ups else float("nan")
    down_med = round(statistics.median(downs), 2) if downs else float("nan")
    result: dict[str, object] = {
        "shape": f"{a.lbs} LBs + {a.nodes} nodes",
        "runs": len(ups),
        "up_s": [round(x, 2) for x in ups],
        "down_s": [round(x, 2) for x in downs],
        "up_median_s": up_med if ups else None,
        "down_median_s": down_med if downs else None,
        "up_budget_s": UP_BUDGET_S,
        "down_budget_s": DOWN_BUDGET_S,
        "failures": failures,
    }
    ok = bool(ups) and not failures and up_med <= UP_BUDGET_S and down_med <= DOWN_BUDGET_S
    if a.json:
        print(json.dumps({**result, "ok": ok}, indent=2))
    else:
        if ups:
            print(f"lab up   ({result['shape']}): median {up_med:.2f} s "
                  f"over {len(ups)} runs = {up_med / UP_BUDGET_S:.0%} of the "
                  f"{UP_BUDGET_S:g} s budget")
            print(f"lab down: median {down_med:.2f} s = "
                  f"{down_med / DOWN_BUDGET_S:.0%} of the {DOWN_BUDGET_S:g} s "
                  f"budget; nothing left after each down: {not failures}")
        for f in failures:
            print("FAIL " + f)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
