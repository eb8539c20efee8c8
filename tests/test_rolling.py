"""Rolling restarts: the planner, the capacity guard and the executor (with a fake fleet)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from ofactl.errors import OperationError, UsageError
from ofactl.rolling import (
    PlanNode,
    RollingPlan,
    execute_plan,
    guard_violations,
    parse_batch,
    parse_min_ready,
    plan_rolling,
)

FLEET = [
    PlanNode("dc1-node1", "private"),
    PlanNode("dc1-node2", "private"),
    PlanNode("dc1-node3", "private"),
    PlanNode("aws-node1", "public"),
    PlanNode("aws-node2", "public"),
]


def batches(plan: RollingPlan) -> list[list[str]]:
    return [list(b.nodes) for b in plan.batches]


@pytest.mark.parametrize(
    ("spec", "total", "size"),
    [("1", 5, 1), (2, 5, 2), ("9", 5, 5), ("50%", 5, 2), ("10%", 5, 1), ("100%", 4, 4)],
)
def test_parse_batch(spec: str | int, total: int, size: int) -> None:
    assert parse_batch(spec, total) == size


@pytest.mark.parametrize("spec", ["0", "-1", "abc", "0%", "150%", "x%"])
def test_parse_batch_rejects(spec: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_batch(spec, 5)
    assert err.value.message == (
        f"--batch: must be a whole number ≥ 1 or a percentage like 25%, got {spec!r}"
    )


def test_parse_min_ready() -> None:
    assert parse_min_ready(None, ["public", "private"]) == {"private": 1, "public": 1}
    assert parse_min_ready("2", ["public", "private"]) == {"private": 2, "public": 2}
    assert parse_min_ready("private=2", ["public", "private"]) == {"private": 2, "public": 1}
    with pytest.raises(UsageError, match="unknown cloud 'edge'"):
        parse_min_ready("edge=1", ["public", "private"])
    with pytest.raises(UsageError, match="got 'x'"):
        parse_min_ready("x", ["public"])


def test_one_by_one_keeps_order() -> None:
    plan = plan_rolling(FLEET)
    assert batches(plan) == [[n.name] for n in FLEET]
    assert plan.nodes == tuple(n.name for n in FLEET)


def test_canary_first_then_batches() -> None:
    plan = plan_rolling(FLEET, batch="2", canary=1)
    assert plan.batches[0].canary and batches(plan)[0] == ["dc1-node1"]
    assert not any(b.canary for b in plan.batches[1:])
    assert sorted(plan.nodes) == sorted(n.name for n in FLEET)


def test_guard_splits_a_batch_that_would_empty_a_cloud() -> None:
    # public has 2 nodes, minimum 1: the two public nodes never share a batch
    plan = plan_rolling(FLEET, batch="100%", min_ready=1)
    for b in batches(plan):
        assert sum(1 for n in b if n.startswith("aws")) <= 1
        assert sum(1 for n in b if n.startswith("dc1")) <= 2
    assert batches(plan) == [
        ["dc1-node1", "dc1-node2", "aws-node1"],
        ["dc1-node3", "aws-node2"],
    ]


def test_guard_counts_unready_nodes_as_free() -> None:
    nodes = [PlanNode("a", "public", ready=False), PlanNode("b", "public"),
             PlanNode("c", "public")]
    plan = plan_rolling(nodes, batch=2, min_ready=1)
    assert batches(plan) == [["a", "b"], ["c"]]


def test_unready_nodes_of_a_cloud_below_minimum_still_restart() -> None:
    nodes = [PlanNode("a", "public", ready=False), PlanNode("b", "public", ready=False),
             PlanNode("c", "private"), PlanNode("d", "private")]
    plan = plan_rolling(nodes, batch=2, min_ready=1)
    assert batches(plan) == [["a", "b"], ["c"], ["d"]]


def test_guard_refuses_a_cloud_that_cannot_lose_a_node() -> None:
    with pytest.raises(UsageError) as err:
        plan_rolling([PlanNode("solo", "public"), PlanNode("x", "private"),
                      PlanNode("y", "private")], min_ready=1)
    assert err.value.message == (
        "solo: draining it would leave 0 ready node(s) in cloud public, below the minimum of 1"
    )
    assert err.value.hint is not None and "public=0" in err.value.hint
    plan = plan_rolling([PlanNode("solo", "public")], min_ready={"public": 0})
    assert batches(plan) == [["solo"]]


def test_guard_violations() -> None:
    clouds = {"a": "public", "b": "public", "c": "private"}
    ready = {"a": True, "b": False, "c": True}
    assert guard_violations(["a"], clouds=clouds, ready=ready,
                            min_ready={"public": 1, "private": 1}) == [
        "cloud public: 0 ready node(s) would remain, minimum is 1"
    ]
    assert guard_violations(["b"], clouds=clouds, ready=ready,
                            min_ready={"public": 1, "private": 1}) == []


def test_empty_selection() -> None:
    with pytest.raises(UsageError, match="no nodes selected"):
        plan_rolling([])


class FakeOps:
    """Records every operation; nodes in `broken` never become ready."""

    def __init__(self, names: Sequence[str], broken: Sequence[str] = ()) -> None:
        self.log: list[tuple[str, object]] = []
        self.broken = set(broken)
        self.ready = dict.fromkeys(names, True)
        self.drained: frozenset[str] = frozenset()

    def ready_nodes(self, nodes: Sequence[str]) -> dict[str, bool]:
        return {n: self.ready[n] for n in nodes}

    def set_drained(self, drained: frozenset[str]) -> None:
        self.drained = drained
        self.log.append(("drained", tuple(sorted(drained))))

    def wait_idle(self, nodes: Sequence[str], timeout_s: float) -> dict[str, str]:
        self.log.append(("idle", tuple(nodes)))
        return {}

    def restart(self, node: str) -> None:
        assert node in self.drained, f"{node} restarted while still in the upstream"
        self.log.append(("restart", node))
        if node in self.broken:
            self.ready[node] = False

    def wait_ready(self, node: str, timeout_s: float) -> None:
        if node in self.broken:
            raise OperationError(f"{node}: not ready after {timeout_s:g} s "
                                 "(last answer: 503 starting)")
        self.log.append(("ready", node))

    def smoke(self, node: str) -> None:
        self.log.append(("smoke", node))

    def evidence(self, node: str) -> dict[str, str]:
        return {"journal": "boom", "ready": "503 starting"}


def test_execute_drains_restarts_and_undrains_in_order() -> None:
    names = [n.name for n in FLEET]
    ops = FakeOps(names)
    plan = plan_rolling(FLEET[:3], batch=2, canary=1)
    result = execute_plan(plan, ops, sleep=lambda s: None)
    assert result.ok and result.left_drained == []
    assert ops.log == [
        ("drained", ("dc1-node1",)), ("idle", ("dc1-node1",)),
        ("restart", "dc1-node1"), ("ready", "dc1-node1"), ("smoke", "dc1-node1"),
        ("drained", ()),
        ("drained", ("dc1-node2", "dc1-node3")), ("idle", ("dc1-node2", "dc1-node3")),
    ] + ops.log[8:14] + [("drained", ())]
    # the two nodes of batch 2 restart in parallel: each in order, interleaved in any way
    for node in ("dc1-node2", "dc1-node3"):
        assert [k for k, v in ops.log[8:14] if v == node] == ["restart", "ready", "smoke"]


def test_execute_stops_and_keeps_failed_node_drained() -> None:
    names = [n.name for n in FLEET]
    ops = FakeOps(names, broken=["dc1-node2"])
    events: list[str] = []
    result = execute_plan(plan_rolling(FLEET), ops, on_event=lambda k, d: events.append(k),
                          sleep=lambda s: None)
    assert not result.ok
    assert result.left_drained == ["dc1-node2"]
    assert ops.drained == frozenset({"dc1-node2"})
    assert result.skipped == ["dc1-node3", "aws-node1", "aws-node2"]
    assert result.stopped == "1 node(s) failed (dc1-node2), more than --max-fail 0"
    failed = result.failed[0]
    assert failed.error == "dc1-node2: not ready after 300 s (last answer: 503 starting)"
    assert failed.evidence == {"journal": "boom", "ready": "503 starting"}
    assert "node_failed" in events


def test_execute_max_fail_continues_and_live_guard_stops() -> None:
    nodes = [PlanNode("a", "private"), PlanNode("b", "private"), PlanNode("c", "private")]
    ops = FakeOps(["a", "b", "c"], broken=["a"])
    result = execute_plan(plan_rolling(nodes, max_fail=1, min_ready=1), ops,
                          sleep=lambda s: None)
    assert [o.ok for o in result.outcomes] == [False, True, True]
    assert result.stopped is None and result.left_drained == ["a"]
    ops2 = FakeOps(["a", "b"], broken=["a"])
    r2 = execute_plan(plan_rolling(nodes[:2], max_fail=1, min_ready=0), ops2,
                      sleep=lambda s: None)
    assert [o.ok for o in r2.outcomes] == [False, True]
    assert r2.left_drained == ["a"]
    # two failures out of three, minimum 1: draining c would empty the cloud
    nodes3 = [PlanNode("a", "private"), PlanNode("b", "private"), PlanNode("c", "private")]
    ops3 = FakeOps(["a", "b", "c"], broken=["a", "b"])
    r3 = execute_plan(plan_rolling(nodes3, max_fail=5, min_ready=1), ops3,
                      sleep=lambda s: None)
    assert r3.stopped == (
        "batch 2 (c) not started: cloud private: 0 ready node(s) would remain, minimum is 1"
    )
    assert r3.skipped == ["c"]


def test_execute_undrains_on_interrupt() -> None:
    ops = FakeOps(["a", "b"])

    def boom(node: str) -> None:
        raise KeyboardInterrupt

    ops.restart = boom  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        execute_plan(plan_rolling([PlanNode("a", "x"), PlanNode("b", "x")]), ops)
    assert ops.drained == frozenset()


def test_live_guard_counts_nodes_outside_the_plan() -> None:
    # restarting only "a": "b" (same cloud, not restarted) keeps the cloud above its minimum
    ops = FakeOps(["a", "b"])
    plan = RollingPlan(batches=(plan_rolling([PlanNode("a", "x")], min_ready=0).batches),
                       clouds={"a": "x", "b": "x"}, min_ready={"x": 1})
    assert execute_plan(plan, ops).ok
    ops.ready["b"] = False
    assert execute_plan(plan, ops).stopped == (
        "batch 0 (a) not started: cloud x: 0 ready node(s) would remain, minimum is 1")


def test_pause_between_batches_only() -> None:
    ops = FakeOps(["a", "b", "c"])
    pauses: list[float] = []
    execute_plan(plan_rolling([PlanNode(n, "x") for n in "abc"], pause_s=2.5), ops,
                 sleep=pauses.append)
    assert pauses == [2.5, 2.5]
