"""Inventory loading and validation: exact messages, exit code 2, never a traceback."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from ofactl.cli import app
from ofactl.errors import InventoryError, UsageError
from ofactl.inventory import LBHost, Node, SecretRef, load_inventory
from ofactl.render import render_all

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "inventory.example.yaml"

BASE: dict[str, Any] = {
    "version": 1,
    "fleet": "t",
    "defaults": {"ssh": {"user": "root", "key_file": "id_test"}, "weight": 1},
    "agent": {"port": 8000, "runtime": "/opt/ofa/runtime", "token": {"env": "T_TOKEN"}},
    "model": {"id": "iic/ofa_ve", "revision": "v1.0.1"},
    "sites": [
        {"name": "dc1", "cloud": "private", "provider": "onprem",
         "nodes": [{"name": "n1", "address": "10.0.0.11", "weight": 3},
                   {"name": "n2", "address": "10.0.0.12", "weight": 3}],
         "lb": {"vip": "10.0.0.100/24", "interface": "eth0", "virtual_router_id": 51,
                "auth_pass": {"env": "T_PASS"},
                "members": [{"name": "lb1", "address": "10.0.0.2", "priority": 150},
                            {"name": "lb2", "address": "10.0.0.3", "priority": 100}]}},
        {"name": "aws", "cloud": "public", "provider": "aws",
         "nodes": [{"name": "c1", "address": "172.31.0.21", "weight": 2},
                   {"name": "c2", "address": "172.31.0.22", "weight": 2}],
         "lb": {"vip": "172.31.0.100/24", "interface": "ens5", "virtual_router_id": 52,
                "auth_pass": {"file": "vrrp.pass"}, "preempt": False, "upstream": "site",
                "notify": {"master": "/usr/local/bin/move-eip.sh"},
                "members": [{"name": "cl1", "address": "172.31.0.2", "priority": 120},
                            {"name": "cl2", "address": "172.31.0.3", "priority": 110}]}},
    ],
}

Mut = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mut:
    """A mutation setting a dotted path (list indexes as numbers) to value (or deleting it)."""

    def mutate(d: dict[str, Any]) -> None:
        keys: list[str | int] = [int(k) if k.isdigit() else k for k in path.split(".")]
        cur: Any = d
        for k in keys[:-1]:
            cur = cur[k]
        if value is _DELETE:
            del cur[keys[-1]]
        else:
            cur[keys[-1]] = value

    return mutate


_DELETE = object()


def _all(*muts: Mut) -> Mut:
    def mutate(d: dict[str, Any]) -> None:
        for m in muts:
            m(d)

    return mutate


def _write(tmp: Path, data: dict[str, Any] | str) -> Path:
    (tmp / "id_test").write_text("not really a key\n")
    p = tmp / "inv.yaml"
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return p


# (id, mutation or raw YAML text, expected message with {tmp} for the directory)
CASES: list[tuple[str, Mut | str, str]] = [
    ("yaml-syntax", "version: 1\nfleet: [\n",
     "inv.yaml: line 3, column 1: expected the node content, but found '<stream end>', "
     "expected valid YAML"),
    ("yaml-indent", "version: 1\nfleet: t\n  agent: x\n",
     "inv.yaml: line 3, column 8: mapping values are not allowed here, expected valid YAML"),
    ("yaml-duplicate-key", "version: 1\nfleet: a\nfleet: b\n",
     "inv.yaml: line 3, column 1: duplicate key 'fleet', expected valid YAML"),
    ("empty-file", "",
     "inv.yaml: (top level): the file is empty, expected a mapping with version, fleet, "
     "agent, model and sites"),
    ("top-is-list", "- a\n- b\n",
     "inv.yaml: (top level): got a list, expected a mapping with version, fleet, agent, "
     "model and sites"),
    ("unknown-top-key", _set("sitse", []),
     "inv.yaml: sitse: unknown key, expected one of: version, fleet, defaults, agent, model, "
     "sites, monitoring, lab, hooks"),
    ("missing-sites", _set("sites", _DELETE),
     "inv.yaml: sites: missing, expected a value"),
    ("version-2", _set("version", 2), "inv.yaml: version: got 2, expected 1"),
    ("fleet-bad-name", _set("fleet", "Ofa Prod"),
     "inv.yaml: fleet: got 'Ofa Prod', expected a lowercase name of letters, digits and '-' "
     "(at most 63 characters)"),
    ("node-unknown-key", _set("sites.0.nodes.0.wieght", 2),
     "inv.yaml: sites[0].nodes[0].wieght: unknown key, expected one of: name, address, "
     "weight, accelerator, labels, ssh, agent"),
    ("weight-zero", _set("sites.0.nodes.1.weight", 0),
     "inv.yaml: sites[0].nodes[1].weight: got 0, expected an integer from 1 to 1000"),
    ("weight-negative", _set("sites.1.nodes.0.weight", -2),
     "inv.yaml: sites[1].nodes[0].weight: got -2, expected an integer from 1 to 1000"),
    ("weight-string", _set("sites.0.nodes.0.weight", "heavy"),
     "inv.yaml: sites[0].nodes[0].weight: got 'heavy', expected an integer from 1 to 1000"),
    ("default-weight-zero", _set("defaults.weight", 0),
     "inv.yaml: defaults.weight: got 0, expected an integer from 1 to 1000"),
    ("duplicate-node-name", _set("sites.1.nodes.1.name", "n1"),
     "inv.yaml: sites[1].nodes[1].name: duplicate host name 'n1' (first at "
     "sites[0].nodes[0].name), expected unique host names"),
    ("duplicate-lb-name", _set("sites.1.lb.members.0.name", "n2"),
     "inv.yaml: sites[1].lb.members[0].name: duplicate host name 'n2' (first at "
     "sites[0].nodes[1].name), expected unique host names"),
    ("duplicate-address", _set("sites.0.nodes.1.address", "10.0.0.11"),
     "inv.yaml: sites[0].nodes[1].address: duplicate address 10.0.0.11 (first at "
     "sites[0].nodes[0].address), expected one host per address"),
    ("duplicate-vrid", _set("sites.1.lb.virtual_router_id", 51),
     "inv.yaml: sites[1].lb.virtual_router_id: duplicate 51 (first at "
     "sites[0].lb.virtual_router_id), expected a VRID unique in the fleet"),
    ("vrid-out-of-range", _set("sites.0.lb.virtual_router_id", 256),
     "inv.yaml: sites[0].lb.virtual_router_id: got 256, expected an integer from 1 to 255"),
    ("vip-outside-subnet", _set("sites.0.lb.vip", "10.9.0.100/24"),
     "inv.yaml: sites[0].lb.vip: 10.9.0.100/24 is outside the subnet of member 'lb1' "
     "(10.0.0.2 on eth0), expected a VIP inside 10.0.0.0/24\n"
     "inv.yaml: sites[0].lb.vip: 10.9.0.100/24 is outside the subnet of member 'lb2' "
     "(10.0.0.3 on eth0), expected a VIP inside 10.0.0.0/24"),
    ("vip-without-prefix", _set("sites.0.lb.vip", "10.0.0.100"),
     "inv.yaml: sites[0].lb.vip: got '10.0.0.100', expected an address with the interface's "
     "prefix length, such as 10.20.0.100/24"),
    ("vip-is-host-address", _set("sites.0.lb.vip", "10.0.0.12/24"),
     "inv.yaml: sites[0].lb.vip: 10.0.0.12 is also the address of sites[0].nodes[1].address, "
     "expected a free address for the VIP"),
    ("duplicate-vip", _all(
        _set("sites.1.lb.vip", "10.0.0.100/24"), _set("sites.1.lb.members.0.address", "10.0.0.4"),
        _set("sites.1.lb.members.1.address", "10.0.0.5")),
     "inv.yaml: sites[1].lb.vip: duplicate VIP 10.0.0.100 (first at sites[0].lb.vip), "
     "expected one VIP per LB pair"),
    ("unicast-one-member", _set("sites.0.lb.members", [
        {"name": "lb1", "address": "10.0.0.2", "priority": 150}]),
     "inv.yaml: sites[0].lb.members: unicast with 1 member and no peer, expected at least 2 "
     "members for unicast"),
    ("priority-duplicate", _set("sites.0.lb.members.1.priority", 150),
     "inv.yaml: sites[0].lb.members[1].priority: duplicate priority 150 (also "
     "sites[0].lb.members[0].priority), expected distinct priorities within an LB pair"),
    ("priority-255", _set("sites.0.lb.members.0.priority", 255),
     "inv.yaml: sites[0].lb.members[0].priority: got 255, expected an integer from 1 to 254"),
    ("member-hostname", _set("sites.0.lb.members.0.address", "lb1.example.com"),
     "inv.yaml: sites[0].lb.members[0].address: got 'lb1.example.com', expected an IP "
     "address"),
    ("node-bad-address", _set("sites.0.nodes.0.address", "10.0.0.300"),
     "inv.yaml: sites[0].nodes[0].address: got '10.0.0.300', expected an IP address or a "
     "DNS name"),
    ("key-file-missing", _set("defaults.ssh.key_file", "keys/nope"),
     "inv.yaml: defaults.ssh.key_file: {tmp}/keys/nope does not exist, expected an existing "
     "private key file"),
    ("node-key-file-missing", _set("sites.0.nodes.0.ssh", {"key_file": "~/.ofactl-no-key"}),
     "inv.yaml: sites[0].nodes[0].ssh.key_file: {home}/.ofactl-no-key does not exist, "
     "expected an existing private key file"),
    ("token-inline", _set("agent.token", "s3cr3t-value"),
     "inv.yaml: agent.token: secret written inline, expected {env: VAR} or {file: PATH}"),
    ("auth-pass-inline", _set("sites.0.lb.auth_pass", "hunter2"),
     "inv.yaml: sites[0].lb.auth_pass: secret written inline, expected {env: VAR} or "
     "{file: PATH}"),
    ("token-both-kinds", _set("agent.token", {"env": "A", "file": "b"}),
     "inv.yaml: agent.token: got 2 keys, expected exactly one of env or file"),
    ("token-bad-env-name", _set("agent.token", {"env": "1-bad"}),
     "inv.yaml: agent.token.env: got '1-bad', expected an environment variable name"),
    ("token-missing", _set("agent.token", _DELETE),
     "inv.yaml: agent.token: missing, expected {env: VAR} or {file: PATH}"),
    ("mode-typo", _set("sites.0.lb.mode", "unicats"),
     "inv.yaml: sites[0].lb.mode: got 'unicats', expected unicast or multicast"),
    ("cloud-bad", _set("sites.1.cloud", "hybrid"),
     "inv.yaml: sites[1].cloud: got 'hybrid', expected private or public"),
    ("accelerator-bad", _set("sites.0.nodes.0.accelerator", "tpu"),
     "inv.yaml: sites[0].nodes[0].accelerator: got 'tpu', expected cpu or gpu"),
    ("cuda-on-cpu-node", _set("sites.0.nodes.0.agent", {"device": "cuda"}),
     "inv.yaml: sites[0].nodes[0].agent.device: cuda on node 'n1' whose accelerator is cpu, "
     "expected device auto or cpu on a cpu node"),
    ("agent-unknown-key", _set("agent.max_batch", 4),
     "inv.yaml: agent.max_batch: unknown key, expected one of: port, runtime, runtime_source, "
     "base_dir, keep_releases, device, dtype, max_batch_size, max_queue_delay_ms, max_queue, "
     "request_timeout_s, drain_timeout_s, max_body_bytes, max_image_pixels, max_text_chars, "
     "ready_timeout_s, token, require_token, warmup, torch_threads, prepare_threads"),
    ("agent-prepare-threads-zero", _set("agent.prepare_threads", 0),
     "inv.yaml: agent.prepare_threads: got 0, expected an integer from 1 to 64"),
    ("agent-torch-threads-negative", _set("sites.0.nodes.0.agent", {"torch_threads": -1}),
     "inv.yaml: sites[0].nodes[0].agent.torch_threads: got -1, expected an integer from 0 to 256"),
    ("agent-port-range", _set("agent.port", 70000),
     "inv.yaml: agent.port: got 70000, expected an integer from 1 to 65535"),
    ("agent-runtime-relative", _set("agent.runtime", "venv"),
     "inv.yaml: agent.runtime: got 'venv', expected an absolute path on the node"),
    ("queue-below-batch", _set("agent.max_queue", 4),
     "inv.yaml: agent.max_queue: 4 is below max_batch_size 8, expected max_queue >= "
     "max_batch_size"),
    ("model-revision-master", _set("model.revision", "master"),
     "inv.yaml: model.revision: got 'master', expected a pinned revision such as v1.0.1"),
    ("model-id-bad", _set("model.id", "ofa"),
     "inv.yaml: model.id: got 'ofa', expected a ModelScope id 'owner/name'"),
    ("ssh-port-string", _set("defaults.ssh.port", "ssh"),
     "inv.yaml: defaults.ssh.port: got 'ssh', expected an integer from 1 to 65535"),
    ("ssh-nonroot-no-sudo", _set("sites.1.nodes.0.ssh", {"user": "ubuntu", "sudo": False}),
     "inv.yaml: sites[1].nodes[0].ssh.sudo: false for user 'ubuntu', expected true when "
     "user is not root"),
    ("ssh-user-override-without-sudo", _set("sites.1.nodes.1.ssh", {"user": "ubuntu"}),
     "inv.yaml: sites[1].nodes[1].ssh.sudo: false for user 'ubuntu', expected true when "
     "user is not root"),
    ("ssh-defaults-nonroot", _set("defaults.ssh.user", "deploy"),
     "inv.yaml: defaults.ssh.sudo: false for user 'deploy', expected true when user is not "
     "root"),
    ("ssh-override-unknown-key", _set("sites.0.nodes.1.ssh", {"usr": "x"}),
     "inv.yaml: sites[0].nodes[1].ssh.usr: unknown key, expected one of: user, port, "
     "key_file, known_hosts, jump_host, connect_timeout, sudo"),
    ("lb-member-missing-priority", _set("sites.0.lb.members.1.priority", _DELETE),
     "inv.yaml: sites[0].lb.members[1].priority: missing, expected a value"),
    ("lb-missing-vip", _set("sites.0.lb.vip", _DELETE),
     "inv.yaml: sites[0].lb.vip: missing, expected a value"),
    ("advert-int-zero", _set("sites.0.lb.advert_int", 0),
     "inv.yaml: sites[0].lb.advert_int: got 0, expected an integer from 1 to 255"),
    ("preempt-string", _set("sites.0.lb.preempt", "no"),
     "inv.yaml: sites[0].lb.preempt: got 'no', expected true or false"),
    ("upstream-bad", _set("sites.0.lb.upstream", "all"),
     "inv.yaml: sites[0].lb.upstream: got 'all', expected fleet or site"),
    ("jump-host-bad", _set("defaults.ssh.jump_host", "not a host"),
     "inv.yaml: defaults.ssh.jump_host: got 'not a host', expected 'user@host:port' or null"),
    ("notify-unknown-kind", _set("sites.1.lb.notify", {"mastr": "/x.sh"}),
     "inv.yaml: sites[1].lb.notify.mastr: unknown key, expected one of: master, backup, "
     "fault, stop"),
    ("notify-relative", _set("sites.1.lb.notify", {"master": "move-eip.sh"}),
     "inv.yaml: sites[1].lb.notify.master: got 'move-eip.sh', expected an absolute script "
     "path without spaces or quotes"),
    ("duplicate-site", _set("sites.1.name", "dc1"),
     "inv.yaml: sites[1].name: duplicate site name 'dc1' (first at sites[0].name), expected "
     "unique site names"),
    ("nodes-empty", _set("sites.1.nodes", []),
     "inv.yaml: sites[1].nodes: got a list, expected a non-empty list of nodes"),
    ("monitoring-unknown-host", _set("monitoring", {"host": "lb3"}),
     "inv.yaml: monitoring.host: got 'lb3', expected the name of a load-balancer host "
     "(lb1, lb2, cl1, cl2)"),
    ("monitoring-bad-interval", _set("monitoring", {"scrape_interval": "15 seconds"}),
     "inv.yaml: monitoring.scrape_interval: got '15 seconds', expected a duration such as "
     "15s or 1m"),
    ("lab-not-mapping", _set("lab", "ofa-lab"),
     "inv.yaml: lab: got 'ofa-lab', expected a mapping"),
    ("labels-nested", _set("sites.0.nodes.0.labels", {"rack": {"row": 1}}),
     "inv.yaml: sites[0].nodes[0].labels.rack: got a mapping, expected a label name "
     "[a-zA-Z_][a-zA-Z0-9_]* with a scalar value"),
    ("two-problems", _all(_set("sites.0.nodes.0.weight", 0), _set("agent.port", 0)),
     "inv.yaml: agent.port: got 0, expected an integer from 1 to 65535\n"
     "inv.yaml: sites[0].nodes[0].weight: got 0, expected an integer from 1 to 1000"),
]


def _prepare(tmp_path: Path, spec: Mut | str) -> Path:
    if isinstance(spec, str):
        return _write(tmp_path, spec)
    data = copy.deepcopy(BASE)
    spec(data)
    return _write(tmp_path, data)


def _expected(msg: str, tmp_path: Path) -> str:
    return msg.replace("{tmp}", str(tmp_path)).replace("{home}", str(Path.home()))


_LINE = re.compile(r"^(error: )?(inv\.yaml):\d+: ", re.M)


def _without_lines(message: str) -> str:
    """The message with the line numbers after the file name taken out (tested separately)."""
    return _LINE.sub(r"\1\2: ", message)


def test_there_are_at_least_30_broken_inventories() -> None:
    assert len(CASES) >= 30


def test_base_inventory_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    inv = load_inventory(_prepare(tmp_path, lambda d: None).name)
    assert [n.name for n in inv.nodes] == ["n1", "n2", "c1", "c2"]
    assert [lb.name for lb in inv.lbs] == ["lb1", "lb2", "cl1", "cl2"]


@pytest.mark.parametrize("spec,expected", [(c[1], c[2]) for c in CASES],
                         ids=[c[0] for c in CASES])
def test_broken_inventory(spec: Mut | str, expected: str, tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = _prepare(tmp_path, spec)
    want = _expected(expected, tmp_path)
    with pytest.raises(InventoryError) as info:
        load_inventory(path.name)
    assert _without_lines(info.value.message) == want
    assert all(re.match(r"inv\.yaml(:\d+)?: ", line)
               for line in info.value.message.splitlines())
    assert info.value.hint
    result = CliRunner().invoke(app, ["inventory", "check", "-i", path.name])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert f"error: {info.value.message}\nhint: {info.value.hint}\n" == result.stderr
    # Secret values written inline never show up in any output.
    assert "s3cr3t-value" not in result.output and "hunter2" not in result.output


HINTS = [
    ("node-unknown-key", "did you mean 'weight'?"),
    ("unknown-top-key", "did you mean 'sites'?"),
    ("mode-typo", "did you mean 'unicast'?"),
    ("notify-unknown-kind", "did you mean 'master'?"),
    ("monitoring-unknown-host", "did you mean 'lb2'?"),
    ("token-inline", "move the value out of the inventory, e.g. token: {env: OFA_AGENT_TOKEN}"),
    ("unicast-one-member", "add the second LB host, or use mode: multicast for a single LB"),
    ("two-problems", "set port to an integer from 1 to 65535 (2 problems in all, fix them top "
                     "to bottom)"),
]


@pytest.mark.parametrize("case,hint", HINTS, ids=[h[0] for h in HINTS])
def test_hints(case: str, hint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = next(c[1] for c in CASES if c[0] == case)
    with pytest.raises(InventoryError) as info:
        load_inventory(_prepare(tmp_path, spec).name)
    assert info.value.hint == hint


def test_missing_file_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["inventory", "check", "-i", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {tmp_path / 'nope.yaml'}: no such file\n")
    assert "Traceback" not in result.output


def test_inventory_env_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _prepare(tmp_path, lambda d: None)
    monkeypatch.setenv("OFACTL_INVENTORY", str(path))
    result = CliRunner().invoke(app, ["inventory", "check", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["ok"] is True and data["nodes"] == 4 and data["lbs"] == 4


def test_example_loads_and_is_hybrid() -> None:
    inv = load_inventory(EXAMPLE, check_files=False)
    clouds = {n.cloud for n in inv.nodes}
    assert clouds == {"private", "public"}
    assert sum(n.cloud == "private" for n in inv.nodes) >= 2
    assert sum(n.cloud == "public" for n in inv.nodes) >= 2
    assert len(inv.lb_groups) >= 1 and all(len(g.members) == 2 for g in inv.lb_groups)
    assert inv.monitoring is not None and inv.monitoring.host == "dc1-lb1"


def test_example_check_reports_missing_key_on_fresh_machine() -> None:
    key = Path("~/.ssh/ofactl_ed25519").expanduser()
    if key.exists():
        pytest.skip("this machine has the example's key file")
    with pytest.raises(InventoryError) as info:
        load_inventory(EXAMPLE)
    line = 1 + next(i for i, text in enumerate(EXAMPLE.read_text().splitlines())
                    if text.strip().startswith("key_file:"))
    assert info.value.message == (
        f"{EXAMPLE}:{line}: defaults.ssh.key_file: {key} does not exist, expected an existing "
        "private key file")


def test_overrides_are_merged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    def mutate(d: dict[str, Any]) -> None:
        d["sites"][1]["nodes"][0]["ssh"] = {"user": "ubuntu", "sudo": True, "port": 2222}
        d["sites"][0]["nodes"][0]["accelerator"] = "gpu"
        d["sites"][0]["nodes"][0]["agent"] = {"device": "cuda", "dtype": "float16"}
        d["sites"][0]["nodes"][0]["labels"] = {"rack": "a1", "spare": True}

    inv = load_inventory(_prepare(tmp_path, mutate).name)
    n1 = inv.node("n1")
    assert (n1.agent.device, n1.agent.dtype, n1.agent.port) == ("cuda", "float16", 8000)
    assert n1.labels == {"rack": "a1", "spare": "true"}
    c1 = inv.node("c1")
    assert (c1.ssh.user, c1.ssh.sudo, c1.ssh.port) == ("ubuntu", True, 2222)
    assert c1.ssh.key_file == tmp_path / "id_test"
    assert inv.node("c2").ssh.user == "root"
    assert inv.agent.device == "auto"


def test_hosts_are_hashable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    inv = load_inventory(_prepare(tmp_path, lambda d: None).name)
    assert len(set(inv.hosts)) == 8
    with pytest.raises(TypeError):
        inv.node("n1").labels["x"] = "y"  # type: ignore[index]


def test_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    inv = load_inventory(_prepare(tmp_path, lambda d: None).name)
    assert inv.fleet == "t" and inv.path == Path("inv.yaml")
    lb = inv.host("cl2")
    assert isinstance(lb, LBHost) and lb.group.site == "aws" and lb.cloud == "public"
    assert isinstance(inv.host("n1"), Node)
    assert [h.name for h in inv.select(nodes="c*")] == ["c1", "c2", "cl1", "cl2"]
    assert [h.name for h in inv.select(nodes="c*", role="node")] == ["c1", "c2"]
    assert [h.name for h in inv.select(cloud="private", role="lb")] == ["lb1", "lb2"]
    assert [h.name for h in inv.select(nodes="n1,lb*")] == ["n1", "lb1", "lb2"]
    assert [n.name for n in inv.upstream_nodes(inv.lb_groups[1])] == ["c1", "c2"]
    assert [n.name for n in inv.upstream_nodes(inv.lb_groups[0])] == ["n1", "n2", "c1", "c2"]
    assert inv.lb_groups[0].master.name == "lb1"
    assert inv.lb_groups[1].notify == {"master": "/usr/local/bin/move-eip.sh"}
    assert inv.monitoring is not None and inv.monitoring.host == "lb1"
    with pytest.raises(UsageError) as info:
        inv.host("n11")
    assert info.value.message == "inv.yaml: no host named 'n11'"
    assert info.value.hint == "did you mean 'n1'?"


def test_secret_refs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    inv = load_inventory(_prepare(tmp_path, lambda d: None).name)
    tok = inv.agent.token
    assert repr(tok) == "SecretRef(env='T_TOKEN', value=[REDACTED])"
    monkeypatch.delenv("T_TOKEN", raising=False)
    with pytest.raises(InventoryError) as info:
        tok.resolve()
    assert info.value.message == "agent.token: environment variable T_TOKEN is not set"
    monkeypatch.setenv("T_TOKEN", "tok-123\n")
    assert tok.resolve() == "tok-123"
    pw = inv.lb_groups[1].auth_pass
    assert pw == SecretRef(file=tmp_path / "vrrp.pass")
    with pytest.raises(InventoryError):
        pw.resolve()
    (tmp_path / "vrrp.pass").write_text("pw-aws\n")
    assert pw.resolve() == "pw-aws"
    assert "pw-aws" not in repr(inv) and "tok-123" not in repr(inv)


def test_show_redacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = _prepare(tmp_path, lambda d: None)
    monkeypatch.setenv("T_TOKEN", "tok-should-not-appear")
    result = CliRunner().invoke(app, ["inventory", "show", "-i", path.name, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["agent"]["token"] == {"env": "T_TOKEN", "value": "[REDACTED]"}
    assert data["lb_groups"][1]["auth_pass"] == {"file": str(tmp_path / "vrrp.pass"),
                                                 "value": "[REDACTED]"}
    assert data["nodes"][0]["weight"] == 3 and data["nodes"][0]["ssh"]["user"] == "root"
    table = CliRunner().invoke(app, ["inventory", "show", "-i", path.name])
    assert table.exit_code == 0, table.output
    assert "tok-should-not-appear" not in table.output + result.output
    assert "[REDACTED]" in table.output


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


WEIRD: list[Any] = [None, 0, -1, "", "x", [], {}, True, 1.5, [1, "a"], {"k": None}]


def test_no_traceback_for_any_weird_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    """Every key of the base inventory replaced by every odd value: only InventoryError."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "id_test").write_text("k\n")
    checked = 0
    for path in _paths(BASE):
        for weird in WEIRD:
            data = copy.deepcopy(BASE)
            cur: Any = data
            for k in path[:-1]:
                cur = cur[k]
            cur[path[-1]] = weird
            p = tmp_path / "inv.yaml"
            p.write_text(yaml.safe_dump(data))
            try:
                inv = load_inventory(p.name)
            except InventoryError as err:
                assert re.match(r"inv\.yaml(:\d+)?: ", err.message) and err.hint
            else:
                render_all(inv)  # whatever loads also renders
            checked += 1
    assert checked > 500


def test_check_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = _prepare(tmp_path, lambda d: None)
    monkeypatch.delenv("T_TOKEN", raising=False)
    monkeypatch.setenv("T_PASS", "pw")
    result = CliRunner().invoke(app, ["inventory", "check", "-i", path.name, "--secrets"])
    assert result.exit_code == 2
    assert result.stderr == (
        "error: inv.yaml: agent.token: environment variable T_TOKEN is not set\n"
        f"inv.yaml: sites[1].lb.auth_pass: cannot read secret file {tmp_path}/vrrp.pass: "
        "No such file or directory\n"
        "hint: export T_TOKEN=... (the value is never printed)\n")
    monkeypatch.setenv("T_TOKEN", "tok-zzz")
    (tmp_path / "vrrp.pass").write_text("pw2\n")
    result = CliRunner().invoke(app, ["inventory", "check", "-i", path.name, "--secrets",
                                      "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["secrets_checked"] is True
    assert "tok-zzz" not in result.output


def test_problems_name_their_line_in_file_order(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "inv.yaml").write_text(
        "version: 1\n"                       # 1
        "fleet: x\n"                         # 2
        "sites:\n"                           # 3
        "  - name: dc1\n"                    # 4
        "    cloud: private\n"               # 5
        "    nodes:\n"                       # 6
        "      - name: n1\n"                 # 7
        "        address: 10.0.0.1\n"        # 8
        "        weight: 0\n"                # 9
        "agent:\n"                           # 10
        "  port: 70000\n"                    # 11
        "  tokn: {env: T}\n"                 # 12
        "model:\n"                           # 13
        "  id: a/b\n"                        # 14
    )
    with pytest.raises(InventoryError) as info:
        load_inventory("inv.yaml")
    lines = info.value.message.splitlines()
    # The checker finds agent problems before site problems; the report is in file order.
    assert [line.split(": ", 1)[0] for line in lines] == [
        "inv.yaml:9", "inv.yaml:10", "inv.yaml:11", "inv.yaml:12", "inv.yaml:13"]
    assert lines[0].startswith("inv.yaml:9: sites[0].nodes[0].weight: got 0")
    assert lines[1].startswith("inv.yaml:10: agent.token: missing")  # at its parent's line
    assert lines[3].startswith("inv.yaml:12: agent.tokn: unknown key")
    assert info.value.hint.startswith("set weight")


def test_check_json_reports_problems_for_scripts(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = _prepare(tmp_path, _all(_set("sites.0.nodes.0.weight", 0), _set("agent.port", 0)))
    result = CliRunner().invoke(app, ["inventory", "check", "-i", path.name, "--json"])
    assert result.exit_code == 2
    out = json.loads(result.stdout)
    assert out["ok"] is False and out["file"] == path.name
    assert [(p["path"], p["problem"]) for p in out["problems"]] == [
        ("agent.port", "got 0, expected an integer from 1 to 65535"),
        ("sites[0].nodes[0].weight", "got 0, expected an integer from 1 to 1000")]
    text = path.read_text().splitlines()
    for p in out["problems"]:  # each line number points at the key in the file
        assert text[p["line"] - 1].strip().startswith(p["path"].rsplit(".", 1)[-1] + ":")
    assert "error: inv.yaml:" in result.stderr  # the human-readable error still goes to stderr
    (tmp_path / "bad.yaml").write_text("version: 1\nfleet: [x\n")
    result = CliRunner().invoke(app, ["inventory", "check", "-i", "bad.yaml", "--json"])
    assert result.exit_code == 2 and json.loads(result.stdout)["problems"][0]["line"] == 3
