"""The lab's pure parts: shape, addresses, inventory document, state, refusals (no root needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ofactl.errors import LabError, UsageError
from ofactl.lab import api
from ofactl.lab.inventory import render_inventory
from ofactl.lab.plan import HOST_RUNTIME, make_hosts, make_plan
from ofactl.lab.state import HostRecord, LabState


def test_hosts_split_two_sites_with_weights() -> None:
    hosts = make_hosts(nodes=4, lbs=2)
    assert [(h.name, h.address, h.site, h.cloud, h.weight, h.priority) for h in hosts] == [
        ("lb1", "10.213.0.10", "onprem", "private", 0, 150),
        ("lb2", "10.213.0.11", "onprem", "private", 0, 100),
        ("node1", "10.213.0.20", "onprem", "private", 3, 0),
        ("node2", "10.213.0.21", "onprem", "private", 3, 0),
        ("node3", "10.213.0.22", "cloud", "public", 2, 0),
        ("node4", "10.213.0.23", "cloud", "public", 2, 0),
    ]
    assert [h.netns for h in hosts[:2]] == ["ofalab-lb1", "ofalab-lb2"]
    assert [h.veth for h in hosts[:2]] == ["olv-lb1", "olv-lb2"]


def test_odd_node_count_puts_the_extra_node_on_the_private_site() -> None:
    sites = [h.site for h in make_hosts(nodes=3, lbs=0)]
    assert sites == ["onprem", "onprem", "cloud"]


@pytest.mark.parametrize(
    ("nodes", "lbs", "message"),
    [
        (0, 2, "--nodes: must be between 1 and 60, got 0"),
        (61, 2, "--nodes: must be between 1 and 60, got 61"),
        (4, 3, "--lbs: must be 0, 1 or 2, got 3"),
    ],
)
def test_bad_shapes_are_refused(nodes: int, lbs: int, message: str) -> None:
    with pytest.raises(UsageError) as err:
        make_hosts(nodes, lbs)
    assert err.value.message == message


def test_bad_name_is_refused() -> None:
    with pytest.raises(UsageError) as err:
        make_plan("Bad Name", 4, 2, "/venv")
    assert err.value.message == (
        "--name: must be lowercase letters, digits or '-', starting with a letter, at most 24 "
        "characters, got 'Bad Name'")


def test_every_address_stays_in_the_lab_range() -> None:
    for h in make_hosts(nodes=60, lbs=2):
        last = int(h.address.rsplit(".", 1)[1])
        assert h.address.startswith("10.213.0.") and 10 <= last < 100


def _plan(tmp_path: Path, model: str | None = None):  # type: ignore[no-untyped-def]
    return make_plan("ofalab", 4, 2, "/work/main/.venv", model, state_root=tmp_path / "run",
                     control_root=tmp_path / "ctl")


def test_inventory_document(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    doc = render_inventory(plan, tmp_path / "tok", tmp_path / "vrrp")
    assert doc["version"] == 1 and doc["fleet"] == "ofalab"
    ssh = doc["defaults"]["ssh"]
    assert ssh["user"] == "root" and ssh["port"] == 22
    assert ssh["key_file"] == str(tmp_path / "ctl/ofalab/id_ed25519")
    assert ssh["known_hosts"] == str(tmp_path / "ctl/ofalab/known_hosts")
    assert doc["agent"]["runtime"] == HOST_RUNTIME == "/opt/ofa-lab/runtime"
    assert doc["agent"]["runtime_source"] == "present"
    assert doc["agent"]["token"] == {"file": str(tmp_path / "tok")}
    assert "local_dir" not in doc["model"]
    private, public = doc["sites"]
    assert (private["name"], private["cloud"], public["name"], public["cloud"]) == (
        "onprem", "private", "cloud", "public")
    assert [(n["name"], n["weight"]) for n in private["nodes"]] == [("node1", 3), ("node2", 3)]
    assert [(n["name"], n["weight"]) for n in public["nodes"]] == [("node3", 2), ("node4", 2)]
    lb = private["lb"]
    assert lb["vip"] == "10.213.0.100/24" and lb["mode"] == "unicast"
    assert lb["interface"] == "eth0" and lb["auth_pass"] == {"file": str(tmp_path / "vrrp")}
    assert lb["members"] == [
        {"name": "lb1", "address": "10.213.0.10", "priority": 150},
        {"name": "lb2", "address": "10.213.0.11", "priority": 100},
    ]
    assert "lb" not in public
    assert yaml.safe_load(yaml.safe_dump(doc)) == doc


def test_inventory_names_the_model_dir_when_given(tmp_path: Path) -> None:
    doc = render_inventory(_plan(tmp_path, "/models/tiny"), tmp_path / "t", tmp_path / "v")
    assert doc["model"]["local_dir"] == "/models/tiny"


def test_inventory_loads_with_the_inventory_module(tmp_path: Path) -> None:
    inventory = pytest.importorskip("ofactl.inventory")
    plan = _plan(tmp_path)
    plan.control_dir.mkdir(parents=True)
    for f in ("id_ed25519", "known_hosts", "agent-token", "vrrp-pass"):
        (plan.control_dir / f).write_text("x\n")
    from ofactl.lab.inventory import write_inventory

    inv = inventory.load_inventory(write_inventory(plan))
    assert [n.name for n in inv.nodes] == ["node1", "node2", "node3", "node4"]
    assert [n.weight for n in inv.nodes] == [3, 3, 2, 2]
    assert [lb.name for lb in inv.lbs] == ["lb1", "lb2"]


def test_state_round_trip(tmp_path: Path) -> None:
    st = LabState(plan=_plan(tmp_path), phase="running", created_at=1.5, ready_s=0.9,
                  hosts={"lb1": HostRecord(pid=42, starttime=7, host_key="ssh-ed25519 AAA")})
    back = LabState.from_json(st.to_json())
    assert back.plan == st.plan and back.hosts == st.hosts and back.phase == "running"


def test_refusal_when_not_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(api, "_tool_present", lambda tool: True)
    with pytest.raises(LabError) as err:
        api.preflight()
    assert err.value.message == (
        "lab: cannot run here: the lab needs root (network namespaces, mounts, cgroups)")
    assert err.value.hint == "run as root: sudo ofactl lab up"


def test_refusal_when_tools_are_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api.os, "geteuid", lambda: 0)
    monkeypatch.setattr(api, "_tool_present", lambda tool: tool not in ("systemd-nspawn",
                                                                         "keepalived"))
    with pytest.raises(LabError) as err:
        api.preflight()
    assert err.value.message == ("lab: cannot run here: missing: systemd-nspawn "
                                 "(systemd-container), keepalived (keepalived)")
    assert err.value.hint == (
        "sudo apt-get install --no-install-recommends systemd-container openssh-server nginx "
        "keepalived iproute2 util-linux")


def test_refusal_when_not_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api.platform, "system", lambda: "Darwin")
    assert api.preflight_problems() == [
        "the lab needs Linux (network namespaces, systemd-nspawn); this is Darwin"]


def test_cli_refusal_prints_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    from ofactl.cli import app

    monkeypatch.setattr(api.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(api, "_tool_present", lambda tool: True)
    result = CliRunner().invoke(app, ["lab", "up"])
    assert result.exit_code == 1
    out = result.output
    assert "error: lab: cannot run here: the lab needs root" in out
    assert "hint: run as root: sudo ofactl lab up" in out


def test_cli_exec_needs_a_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from ofactl.cli import app

    result = CliRunner().invoke(app, ["lab", "exec", "node1"])
    assert result.exit_code == 2
