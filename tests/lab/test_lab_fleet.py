"""What the shared fleet gives the other tests: real hosts, SSH, services, faults."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import paramiko
import pytest

from tests.fixtures_lab import LabFleet

pytestmark = pytest.mark.lab


def ssh(fleet: LabFleet, host: str, command: str, timeout: float = 15) -> tuple[int, str]:
    """One command over SSH with strict host-key checking against the lab's known_hosts."""
    client = paramiko.SSHClient()
    client.load_host_keys(str(fleet.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(fleet.address(host), username="root", key_filename=str(fleet.key_file),
                       timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                       look_for_keys=False, allow_agent=False)
        _, out, _ = client.exec_command(command, timeout=timeout)
        text = out.read().decode()
        return out.channel.recv_exit_status(), text
    finally:
        client.close()


def wait_until(check, timeout: float, interval: float = 0.1) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return bool(check())


def port_open(address: str, port: int = 22) -> bool:
    try:
        with socket.create_connection((address, port), timeout=0.5):
            return True
    except OSError:
        return False


def test_every_host_answers_ssh_with_strict_host_keys(lab_fleet: LabFleet) -> None:
    assert lab_fleet.lbs == ["lb1", "lb2"]
    assert lab_fleet.nodes == ["node1", "node2", "node3", "node4"]
    for host in lab_fleet.hosts:
        rc, out = ssh(lab_fleet, host, "hostname")
        assert (rc, out.strip()) == (0, host)


def test_hosts_are_distinct_machines(lab_fleet: LabFleet) -> None:
    ids = {lab_fleet.exec(h, ["cat", "/etc/machine-id"], check=True).stdout.strip()
           for h in lab_fleet.hosts}
    assert len(ids) == len(lab_fleet.hosts)
    keys = [line.split()[2] for line in lab_fleet.known_hosts.read_text().splitlines()]
    assert len(set(keys)) == len(lab_fleet.hosts)


def test_sshd_is_key_only_on_the_lab_address(lab_fleet: LabFleet) -> None:
    out = lab_fleet.exec("node1", ["sshd", "-T"], check=True).stdout
    assert "passwordauthentication no" in out
    assert "kbdinteractiveauthentication no" in out
    assert "listenaddress 10.213.0.20:22" in out
    transport = paramiko.Transport((lab_fleet.address("node1"), 22))
    try:
        transport.start_client(timeout=10)
        with pytest.raises(paramiko.AuthenticationException):
            transport.auth_password("root", "root")
    finally:
        transport.close()


def test_build_machine_services_stay_masked(lab_fleet: LabFleet) -> None:
    # (the fresh-host checks -- nginx/keepalived disabled, only sshd running -- are in
    # test_lab_lifecycle.py: deploy tests may already have changed this shared fleet)
    masked = lab_fleet.exec("node2", ["systemctl", "is-enabled", "postgresql", "cron",
                                      "apt-daily.timer", "prometheus"]).stdout.split()
    assert masked == ["masked"] * 4
    for unit in ("postgresql", "prometheus", "cron"):
        active = lab_fleet.exec("node2", ["systemctl", "is-active", unit]).stdout.strip()
        assert active == "inactive"


def test_no_default_route_and_only_lab_addresses(lab_fleet: LabFleet) -> None:
    routes = lab_fleet.exec("node3", ["ip", "-4", "route"], check=True).stdout
    assert "default" not in routes
    addrs = lab_fleet.exec("node3", ["ip", "-4", "-o", "addr"], check=True).stdout
    found = {line.split()[3] for line in addrs.splitlines()}
    assert found == {"127.0.0.1/8", "10.213.0.22/24"}
    addrs6 = lab_fleet.exec("node3", ["ip", "-6", "-o", "addr"], check=True).stdout
    assert {line.split()[3] for line in addrs6.splitlines()} <= {"::1/128"}


def test_agent_runtime_is_visible_inside_hosts(lab_fleet: LabFleet) -> None:
    py = Path(lab_fleet.runtime) / "bin" / "python"
    proc = lab_fleet.exec("node1", [str(py), "-c", "import sys; print(sys.prefix)"], timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == lab_fleet.runtime


@pytest.mark.runtime
def test_torch_imports_inside_a_node(lab_fleet: LabFleet) -> None:
    venv = Path(__file__).resolve().parents[2] / ".venv"
    if not list(venv.glob(".ofa-runtime-*")):
        pytest.skip(f"no agent runtime in {venv} (scripts/install-runtime.sh)")
    proc = lab_fleet.exec("node4", [str(venv / "bin/python"), "-c", "import torch"],
                          timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_fault_kill_and_stop_a_service(lab_fleet: LabFleet) -> None:
    before = lab_fleet.exec("node1", ["systemctl", "show", "-p", "NRestarts", "--value",
                                      "ssh"]).stdout.strip()
    assert lab_fleet.fault("node1", "kill", "ssh") == "node1: systemctl kill --signal=SIGKILL ssh"
    # Restart=on-failure brings it back (a real systemd restart)
    assert wait_until(lambda: lab_fleet.exec("node1", ["systemctl", "show", "-p", "NRestarts",
                                                       "--value", "ssh"]).stdout.strip()
                      == str(int(before) + 1), 10)
    assert wait_until(lambda: port_open("10.213.0.20"), 10)
    lab_fleet.fault("node1", "stop", "ssh")
    assert not port_open("10.213.0.20")
    lab_fleet.fault("node1", "start", "ssh")
    assert wait_until(lambda: port_open("10.213.0.20"), 10)


def test_fault_link_down_and_up(lab_fleet: LabFleet) -> None:
    lab_fleet.fault("node2", "link-down")
    try:
        assert not port_open("10.213.0.21")
        status = {h.host.name: h for h in lab_fleet.status().hosts}
        assert status["node2"].link is False and not status["node2"].healthy
    finally:
        lab_fleet.fault("node2", "link-up")
    assert wait_until(lambda: port_open("10.213.0.21"), 10)


def test_fault_crash_and_boot_keeps_the_host(lab_fleet: LabFleet) -> None:
    lab_fleet.exec("node4", ["sh", "-c", "echo kept > /root/marker"], check=True)
    assert lab_fleet.fault("node4", "crash") == "node4: crashed (link cut, every process killed)"
    status = {h.host.name: h for h in lab_fleet.status().hosts}
    assert not status["node4"].running and not port_open("10.213.0.23")
    assert lab_fleet.fault("node4", "boot") == "node4: booted"
    rc, out = ssh(lab_fleet, "node4", "cat /root/marker")  # same host key, same disk
    assert (rc, out.strip()) == (0, "kept")
    lab_fleet.heal()
    assert lab_fleet.status().healthy


def test_fault_poweroff_and_boot(lab_fleet: LabFleet) -> None:
    assert lab_fleet.fault("node3", "poweroff") == "node3: powered off"
    assert not lab_fleet.status().healthy
    lab_fleet.heal()
    assert lab_fleet.status().healthy


KEEPALIVED_CONF = """\
vrrp_instance lab {{
  state BACKUP
  interface eth0
  virtual_router_id 77
  priority {prio}
  advert_int 1
  unicast_src_ip {me}
  unicast_peer {{
    {peer}
  }}
  virtual_ipaddress {{
    10.213.0.99/24
  }}
}}
"""


def test_keepalived_moves_the_vip_between_the_lbs(lab_fleet: LabFleet) -> None:
    # its own VIP and router id: a deployed keepalived (10.213.0.100, vrid 51) may be running
    lbs = {"lb1": ("10.213.0.10", "10.213.0.11", 150), "lb2": ("10.213.0.11", "10.213.0.10", 100)}
    conf = "/run/ofactl-lab-test-keepalived.conf"

    def has_vip(host: str) -> bool:
        out = lab_fleet.exec(host, ["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).stdout
        return "10.213.0.99/" in out

    try:
        for host, (me, peer, prio) in lbs.items():
            lab_fleet.exec(host, ["sh", "-c", f"cat > {conf}"], check=True,
                           input=KEEPALIVED_CONF.format(me=me, peer=peer, prio=prio))
            # own pid files: a deployed keepalived would make a second one refuse to start
            lab_fleet.exec(host, ["systemd-run", "--unit=lab-test-keepalived", "keepalived",
                                  "-n", "-l", "-D", "-P", "-f", conf,
                                  "-p", "/run/lab-test-keepalived.pid",
                                  "-r", "/run/lab-test-vrrp.pid",
                                  "-c", "/run/lab-test-checkers.pid"], check=True)
        assert wait_until(lambda: has_vip("lb1"), 10)
        assert not has_vip("lb2")
        lab_fleet.fault("lb1", "stop", "lab-test-keepalived")
        assert wait_until(lambda: has_vip("lb2"), 6)
    finally:
        for host in lbs:
            lab_fleet.exec(host, ["sh", "-c", "systemctl stop lab-test-keepalived; "
                                  f"systemctl reset-failed lab-test-keepalived; rm -f {conf}"])
    assert wait_until(lambda: not has_vip("lb1") and not has_vip("lb2"), 5)


def test_exec_timeout_kills_the_command_inside_the_host(lab_fleet: LabFleet) -> None:
    t0 = time.monotonic()
    proc = lab_fleet.exec("node2", ["sleep", "37"], timeout=1)
    assert proc.returncode == 124 and "timed out after 1 s" in proc.stderr
    assert time.monotonic() - t0 < 5
    left = lab_fleet.exec("node2", ["pgrep", "-f", "sleep 37"])
    assert left.returncode == 1, left.stdout


def test_cli_exec_status_and_fault(lab_fleet: LabFleet) -> None:
    import json

    from typer.testing import CliRunner

    from ofactl.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["lab", "exec", "node1", "--", "hostname"])
    assert (res.exit_code, res.stdout.strip()) == (0, "node1")
    res = runner.invoke(app, ["lab", "exec", "node1", "--", "sh", "-c", "exit 3"])
    assert res.exit_code == 3
    res = runner.invoke(app, ["lab", "status", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["running"] is True and doc["healthy"] is True
    assert doc["inventory"] == str(lab_fleet.inventory_path) and doc["vip"] == "10.213.0.100/24"
    res = runner.invoke(app, ["lab", "fault", "node1", "restart", "ssh"])
    assert (res.exit_code, res.stdout.strip()) == (0, "node1: systemctl restart ssh")
    res = runner.invoke(app, ["lab", "fault", "node9", "crash"])
    assert res.exit_code == 2 and "no host named 'node9'" in res.output
    res = runner.invoke(app, ["lab", "fault", "node1", "stop"])
    assert res.exit_code == 2 and "which service?" in res.output
