"""Creating and removing labs for real: idempotent up, clean down, cleanup after a killed
`lab up` or a crash. These run before the shared fleet exists (marker lab_lifecycle)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ofactl.errors import LabError
from ofactl.lab import api
from ofactl.lab.plan import STATE_ROOT

pytestmark = [pytest.mark.lab, pytest.mark.lab_lifecycle]

OFACTL = [sys.executable, "-c", "from ofactl.cli import main; main()"]


def ofactl(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*OFACTL, *args], capture_output=True, text=True, timeout=timeout)


def assert_nothing_left() -> None:
    """Checked with the system's own tools, not with the lab's bookkeeping."""
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                           timeout=10).stdout
    assert "ofalab-" not in netns
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True,
                           timeout=10).stdout
    assert "ofalab0" not in links and "olv-" not in links
    mountinfo = Path("/proc/self/mountinfo").read_text()
    assert "/run/ofactl-lab" not in mountinfo and "/run/netns/ofalab-" not in mountinfo
    cgroup_fs = Path("/sys/fs/cgroup")
    assert not (cgroup_fs / "ofactl-lab").exists()
    assert not list(cgroup_fs.glob("*/ofactl-lab"))
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            cmd = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        assert b"/run/ofactl-lab/" not in cmd, f"process {pid_dir.name} left: {cmd[:200]!r}"
    assert not STATE_ROOT.exists() or not any(STATE_ROOT.iterdir())
    assert api.leftovers() == []


def test_up_is_idempotent_and_down_leaves_nothing(bare_machine: None) -> None:
    first = ofactl("lab", "up", "--json")
    assert first.returncode == 0, first.stderr
    info = json.loads(first.stdout)
    assert info["changed"] is True and info["healthy"] is True
    assert [h["name"] for h in info["hosts"]] == ["lb1", "lb2", "node1", "node2", "node3",
                                                  "node4"]
    for key in ("inventory", "key_file", "known_hosts"):
        assert Path(info[key]).is_file()
    inventory_mtime = Path(info["inventory"]).stat().st_mtime_ns
    pids = sorted(h["init_pid"] for h in info["hosts"])

    again = ofactl("lab", "up", "--json")
    assert again.returncode == 0, again.stderr
    info2 = json.loads(again.stdout)
    assert info2["changed"] is False and info2["note"] == "already running; nothing changed"
    assert sorted(h["init_pid"] for h in info2["hosts"]) == pids
    assert Path(info["inventory"]).stat().st_mtime_ns == inventory_mtime

    other = ofactl("lab", "up", "--nodes", "3")
    assert other.returncode == 1
    assert "already running with 2 LBs + 4 nodes" in other.stderr

    down = ofactl("lab", "down", "--json")
    assert down.returncode == 0, down.stderr
    assert json.loads(down.stdout)["leftovers"] == []
    assert_nothing_left()
    assert not Path(info["inventory"]).exists()

    status = ofactl("lab", "status")
    assert status.returncode == 2 and "no lab on this machine" in status.stdout


@pytest.mark.parametrize("when", ["after-state", "during-boot"])
def test_killed_lab_up_is_cleaned_by_down(bare_machine: None, when: str) -> None:
    proc = subprocess.Popen([*OFACTL, "lab", "up"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    state_file = STATE_ROOT / "ofalab" / "state.json"
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            if state_file.exists():
                data = json.loads(state_file.read_text() or "{}")
                started = any(r.get("pid") for r in data.get("records", {}).values())
                if when == "after-state" or started:
                    break
            time.sleep(0.01)
        else:
            pytest.fail("lab up never wrote its state")
    except (ValueError, OSError):
        pass  # state file mid-replace: kill now anyway
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    # a half-made lab is reported, never silently reused
    again = ofactl("lab", "up")
    assert again.returncode == 1
    assert "hint: ofactl lab down" in again.stderr
    down = ofactl("lab", "down")
    assert down.returncode == 0, down.stderr
    assert_nothing_left()


def test_down_after_a_crash_that_lost_the_state(bare_machine: None) -> None:
    info = api.up()
    # the tooling crashed: nspawn processes SIGKILLed, the state file lost
    for hs in info.hosts:
        rec_pid = hs.init_pid
        assert rec_pid is not None
    state = json.loads((STATE_ROOT / "ofalab" / "state.json").read_text())
    for rec in state["records"].values():
        os.kill(rec["pid"], signal.SIGKILL)
    (STATE_ROOT / "ofalab" / "state.json").unlink()
    assert api.leftovers()  # the containers' processes, mounts, netns are still there
    with pytest.raises(LabError) as err:
        api.up()
    assert err.value.hint == "ofactl lab down"
    report = api.down()
    assert report.leftovers == []
    assert_nothing_left()


def test_up_then_down_within_budget(bare_machine: None) -> None:
    t0 = time.monotonic()
    api.up(nodes=4, lbs=2)
    up_s = time.monotonic() - t0
    t1 = time.monotonic()
    api.down()
    down_s = time.monotonic() - t1
    assert up_s <= 30 and down_s <= 15, (up_s, down_s)
    assert_nothing_left()


def test_down_is_bounded_even_with_stubborn_services(bare_machine: None) -> None:
    api.up(nodes=2, lbs=1)
    for host in ("lb1", "node1", "node2"):
        proc = api.exec_in(host, ["systemctl", "start", "nginx"], timeout=30)
        assert proc.returncode == 0, proc.stderr
        # ignores SIGTERM and asks systemd for a minute to stop: only a kill ends it
        proc = api.exec_in(host, ["systemd-run", "--unit=stubborn", "-p", "TimeoutStopSec=60",
                                  "sh", "-c", "trap '' TERM; while :; do sleep 1; done"],
                           timeout=30)
        assert proc.returncode == 0, proc.stderr
    t0 = time.monotonic()
    report = api.down()
    assert time.monotonic() - t0 <= 15
    assert report.leftovers == []
    assert_nothing_left()


def test_fresh_hosts_run_only_sshd_with_nginx_and_keepalived_disabled(bare_machine: None) -> None:
    api.up(nodes=1, lbs=1)
    for host in ("lb1", "node1"):
        enabled = api.exec_in(host, ["systemctl", "is-enabled", "nginx", "keepalived"])
        assert enabled.stdout.split() == ["disabled", "disabled"]
        active = api.exec_in(host, ["systemctl", "is-active", "nginx", "keepalived"])
        assert active.stdout.split() == ["inactive", "inactive"]
        assert api.exec_in(host, ["test", "-x", "/usr/sbin/keepalived"]).returncode == 0
        assert api.exec_in(host, ["test", "-x", "/usr/sbin/nginx"]).returncode == 0
        assert api.exec_in(host, ["test", "-e", "/etc/nginx/sites-enabled/default"]
                           ).returncode == 1
        out = api.exec_in(host, ["systemctl", "list-units", "--type=service", "--state=running",
                                 "--no-legend", "--plain"]).stdout
        running = sorted(line.split()[0] for line in out.splitlines() if line.strip())
        assert set(running) <= {"dbus.service", "ssh.service", "systemd-journald.service",
                                "systemd-logind.service"}, running
        assert api.exec_in(host, ["systemctl", "is-system-running"]).stdout.strip() == "running"
    api.down()
    assert_nothing_left()
