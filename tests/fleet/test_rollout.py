"""Rollouts and drills on a real, deployed lab fleet (2 LBs + 4 nodes; sshd, nginx, keepalived,
systemd, ofa-agent), with prediction load through the VIP the whole time.

Must show (issue 6): a rolling restart of every node under load fails 0 requests; the node
scenario fails 0; the LB scenario moves the VIP within 4 s, never with two holders, counting
every failure; the cloud scenario keeps serving from the public nodes; rollback returns the
previous release on every node while serving.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from ofactl.drill import Budget, DrillSettings, build_payload, run_drill
from ofactl.drill.load import LoadGenerator
from ofactl.inventory import load_inventory
from ofactl.rolling import restart_nodes
from ofactl.transport import ssh_factory

pytestmark = pytest.mark.lab

# Requests per second through the VIP. The lab runs 2 LBs, 4 agents and this load on a shared
# 2-core machine: at 10/s a busy machine queues requests for seconds (slow, not dropped), so the
# tests stay well inside capacity and give every request a generous timeout.
RATE = 4.0


def _inv(fleet: Any) -> Any:
    return load_inventory(fleet.inventory_path)


def _vip(inv: Any) -> str:
    return inv.lb_groups[0].vip_address


def _main_pids(fleet: Any, inv: Any) -> dict[str, str]:
    out = {}
    for n in inv.nodes:
        proc = fleet.exec(n.name, ["systemctl", "show", "-p", "MainPID", "--value", "ofa-agent"],
                          timeout=10)
        out[n.name] = proc.stdout.strip()
    return out


class Load:
    """Background prediction load through the VIP until stopped (bounded: at most 600 s)."""

    def __init__(self, inv: Any, rate: float = RATE) -> None:
        self.gen = LoadGenerator(f"http://{_vip(inv)}", build_payload(inv), rate=rate,
                                 duration=600.0, timeout=10.0)

    def __enter__(self) -> Load:
        self.gen.start()
        time.sleep(1.0)
        return self

    def __exit__(self, *exc: object) -> None:
        self.gen.stop()

    def finish(self) -> list[Any]:
        time.sleep(1.0)
        self.gen.stop()
        return self.gen.join(extra=0.0)


def _failures(records: list[Any]) -> list[str]:
    return [f"{r.t:.2f}s {r.kind}" for r in records if not r.ok]


def test_rolling_restart_every_node_under_load(deployed_fleet: Any) -> None:
    inv = _inv(deployed_fleet)
    before = _main_pids(deployed_fleet, inv)
    events: list[tuple[str, dict[str, Any]]] = []
    with Load(inv) as load:
        result = restart_nodes(inv, ssh_factory(), batch="1", canary=1,
                               on_event=lambda k, d: events.append((k, d)))
        records = load.finish()
    assert result.ok, result.to_dict()
    assert [o.node for o in result.outcomes] == [n.name for n in inv.nodes]
    after = _main_pids(deployed_fleet, inv)
    assert all(after[n] != before[n] and after[n] != "0" for n in before), (before, after)
    assert len(records) > 50
    assert _failures(records) == []
    # the LBs serve every node again (nothing left `down`)
    for lb in inv.lbs:
        conf = deployed_fleet.exec(lb.name, ["cat", "/etc/nginx/nginx.conf"], timeout=10).stdout
        assert " down;" not in conf


def test_deploy_with_changed_agents_restarts_them_rolling_under_load(deployed_fleet: Any
                                                                     ) -> None:
    """A deploy that changes every agent's settings restarts serving agents through the LBs
    (drain, restart, ready + smoke prediction, undrain): 0 failed requests through the VIP."""
    inv = _inv(deployed_fleet)

    def slower_batches(doc: dict[str, Any]) -> None:
        doc["agent"]["max_queue_delay_ms"] = int(doc["agent"].get("max_queue_delay_ms", 10)) + 3

    changed = deployed_fleet.inventory_variant("agent-setting", mutate=slower_batches)
    before = _main_pids(deployed_fleet, inv)
    try:
        with Load(inv) as load:
            rc, report = deployed_fleet.deploy("--batch", "1", inventory=changed)
            records = load.finish()
        assert rc == 0, report
        rolling = report["rolling_restart"]
        assert rolling["ok"] and rolling["left_drained"] == [], rolling
        nodes = {h["host"]: h for h in report["hosts"] if h["host"] in before}
        assert all(any("rolling" in c for c in h["changes"]) for h in nodes.values()), nodes
        after = _main_pids(deployed_fleet, inv)
        assert all(after[n] != before[n] and after[n] != "0" for n in before), (before, after)
        assert len(records) > 20
        assert _failures(records) == []
        for lb in inv.lbs:
            conf = deployed_fleet.exec(lb.name, ["cat", "/etc/nginx/nginx.conf"],
                                       timeout=10).stdout
            assert " down;" not in conf
    finally:
        rc, report = deployed_fleet.deploy()  # back to the fixture's settings
        assert rc == 0, report


def _drill(fleet: Any, scenario: str, **kw: Any) -> Any:
    inv = _inv(fleet)
    settings = DrillSettings(base_url=f"http://{_vip(inv)}", payload=build_payload(inv),
                             rate=kw.pop("rate", RATE), duration=kw.pop("duration", 16.0),
                             timeout=kw.pop("timeout", 3.0))
    [result] = run_drill(inv, ssh_factory(), [scenario], settings=settings,
                         budget=Budget(max_errors=kw.pop("max_errors", None),
                                       max_failover_s=kw.pop("max_failover_s", None)), **kw)
    return result


def test_node_scenario_zero_failures(deployed_fleet: Any) -> None:
    r = _drill(deployed_fleet, "node", max_errors=0, timeout=10.0)
    m = r.metrics
    assert r.restored and m.recover_s is not None
    assert m.requests == int(RATE * 16)
    assert m.failures == 0, m.failures_by_kind
    assert r.breaches == []


@pytest.mark.parametrize("lb_fault", ["nginx", "keepalived"])
def test_lb_scenario_vip_moves_within_4s(deployed_fleet: Any, lb_fault: str) -> None:
    r = _drill(deployed_fleet, "lb", lb_fault=lb_fault, max_failover_s=4.0)
    m = r.metrics
    assert r.restored
    assert m.vip_holder_before is not None and m.vip_holder_during not in (None,
                                                                         m.vip_holder_before)
    assert m.vip_moved_s is not None and m.vip_moved_s <= 4.0
    assert m.samples_with_several_holders == 0
    assert m.holder_samples > 16 / 0.5
    # every request is accounted for, each failure exactly once
    assert m.requests == int(RATE * 16) == len(r.records)
    assert m.failures == sum(1 for x in r.records if not x.ok) == sum(
        m.failures_by_kind.values())
    assert m.ok + m.failures == m.requests
    assert r.breaches == []


def test_cloud_scenario_public_nodes_keep_serving(deployed_fleet: Any) -> None:
    inv = _inv(deployed_fleet)
    private = [n.name for n in inv.nodes if n.cloud == "private"]
    assert private and len(private) < len(inv.nodes)
    # half the fleet carries all the load: on the shared 2-core lab machine a request may
    # queue for seconds, which is slow, not failed (the agent's own timeout is 30 s)
    r = _drill(deployed_fleet, "cloud", cloud="private", rate=RATE / 2, timeout=15.0)
    m = r.metrics
    assert set(r.plan.targets) == set(private) and r.restored
    during = [x for x in r.records if r.phases.fault + 0.5 <= x.t < r.phases.restore]
    assert during and all(x.ok for x in during), _failures(during)
    assert m.failures == 0, m.failures_by_kind


def test_rollback_returns_previous_release_while_serving(deployed_fleet: Any) -> None:
    from ofactl.rollback import facts_cmd, parse_facts, previous_release, rollback

    inv = _inv(deployed_fleet)
    base = inv.agent.base_dir
    # an older release on every node: a copy of the current one under an earlier id
    state = {}
    for n in inv.nodes:
        f = parse_facts(deployed_fleet.exec(n.name, facts_cmd(base), timeout=10).stdout)
        state[n.name] = f
        older = "20000101000000-00000000"  # sorts before any real release id
        deployed_fleet.exec(n.name, f"test -e {base}/releases/{older} || "
                            f"cp -a {base}/releases/{f.current} {base}/releases/{older}",
                            timeout=30, check=True)
    current = {f.current for f in state.values()}
    assert len(current) == 1
    [original] = current
    expected = {previous_release(parse_facts(deployed_fleet.exec(n.name, facts_cmd(base),
                                                                 timeout=10).stdout))
                for n in inv.nodes}
    assert len(expected) == 1 and None not in expected
    [older] = expected
    with Load(inv) as load:
        plans, result = rollback(inv, ssh_factory())
        records = load.finish()
    assert result.ok, result.to_dict()
    assert {p.to_release for p in plans} == {older}
    for n in inv.nodes:
        link = deployed_fleet.exec(n.name, ["readlink", f"{base}/current"], timeout=10)
        assert link.stdout.strip() == f"releases/{older}"
    assert _failures(records) == []
    # and forward again with --to, also without a failed request
    with Load(inv) as load:
        _, result = rollback(inv, ssh_factory(), to=original)
        records = load.finish()
    assert result.ok and _failures(records) == []
    for n in inv.nodes:
        link = deployed_fleet.exec(n.name, ["readlink", f"{base}/current"], timeout=10)
        assert link.stdout.strip() == f"releases/{original}"
        # the model each release ran with is recorded for the next rollback
        rec = deployed_fleet.exec(n.name, ["cat", f"{base}/releases/{original}/ofactl-model"],
                                  timeout=10)
        assert rec.stdout.strip() == state[n.name].model
