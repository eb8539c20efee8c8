"""Rolling restarts: a pure planner (batches, canary, capacity guard) and the executor of a plan.

The planner decides which nodes restart together; it never touches the network. The executor
runs a plan through a `RollingOps` (one implementation talks to the fleet through the transport,
`ofactl.rollops.FleetOps`; tests use a fake). Per batch: drain the batch on every load balancer
(upstream rendered with the nodes `down`, validated, reloaded), wait until the agents report no
in-flight work and nginx holds no connection to them, restart, wait for readiness plus a smoke
prediction on the node itself, undrain. A failed node stays drained; the others go back.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from ofactl.errors import OperationError, UsageError

DEFAULT_MIN_READY_PER_CLOUD = 1


# --------------------------------------------------------------------------------------------
# planner (pure)


@dataclass(frozen=True)
class PlanNode:
    """What the planner needs to know about a node."""

    name: str
    cloud: str
    ready: bool = True


@dataclass(frozen=True)
class Batch:
    """Nodes restarted together; `canary` marks the first, single-node batch."""

    index: int
    nodes: tuple[str, ...]
    canary: bool = False


@dataclass(frozen=True)
class RollingPlan:
    """The order of a rolling restart plus the knobs the executor honours."""

    batches: tuple[Batch, ...]
    clouds: Mapping[str, str]  # node -> cloud
    min_ready: Mapping[str, int]  # cloud -> minimum ready nodes kept serving
    max_fail: int = 0
    pause_s: float = 0.0

    @property
    def nodes(self) -> tuple[str, ...]:
        """Every node of the plan in restart order."""
        return tuple(n for b in self.batches for n in b.nodes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (for --json and --dry-run)."""
        return {
            "batches": [
                {"index": b.index, "nodes": list(b.nodes), "canary": b.canary}
                for b in self.batches
            ],
            "min_ready_per_cloud": dict(self.min_ready),
            "max_fail": self.max_fail,
            "pause_s": self.pause_s,
        }


def parse_batch(spec: str | int, total: int) -> int:
    """`--batch N` or `--batch P%` -> a batch size between 1 and `total`."""
    text = str(spec).strip()
    try:
        if text.endswith("%"):
            pct = float(text[:-1])
            if not 0 < pct <= 100:
                raise ValueError
            return max(1, min(total, math.floor(total * pct / 100)))
        size = int(text)
        if size < 1:
            raise ValueError
        return min(size, max(total, 1))
    except ValueError:
        raise UsageError(
            f"--batch: must be a whole number ≥ 1 or a percentage like 25%, got {text!r}",
            hint="e.g. --batch 2 or --batch 50%",
        ) from None


def parse_min_ready(spec: str | int | None, clouds: Iterable[str],
                    default: int = DEFAULT_MIN_READY_PER_CLOUD) -> dict[str, int]:
    """`--min-ready-per-cloud 1` or `private=2,public=1` -> {cloud: minimum}."""
    names = sorted(set(clouds))
    out = dict.fromkeys(names, default)
    if spec is None or str(spec).strip() == "":
        return out
    text = str(spec).strip()
    try:
        if "=" not in text:
            value = int(text)
            if value < 0:
                raise ValueError
            return dict.fromkeys(names, value)
        for part in text.split(","):
            key, _, val = part.partition("=")
            key = key.strip()
            if key not in out:
                raise UsageError(
                    f"--min-ready-per-cloud: unknown cloud {key!r}, "
                    f"expected one of {', '.join(names)}"
                )
            value = int(val)
            if value < 0:
                raise ValueError
            out[key] = value
    except ValueError:
        raise UsageError(
            f"--min-ready-per-cloud: must be a whole number ≥ 0 or cloud=N pairs, got {text!r}",
            hint="e.g. --min-ready-per-cloud 1 or --min-ready-per-cloud private=2,public=1",
        ) from None
    return out


def plan_rolling(
    nodes: Sequence[PlanNode],
    *,
    batch: str | int = 1,
    canary: int = 0,
    min_ready: Mapping[str, int] | int = DEFAULT_MIN_READY_PER_CLOUD,
    max_fail: int = 0,
    pause_s: float = 0.0,
) -> RollingPlan:
    """Split nodes into batches so that no batch drains a cloud below its minimum of ready nodes.

    Order is kept where the guard allows it; a node that would break the guard in this batch
    moves to a later one. A node that cannot be drained even alone is an error (with a hint).
    """
    if not nodes:
        raise UsageError("restart: no nodes selected", hint="check --nodes / --cloud")
    if canary < 0 or max_fail < 0 or pause_s < 0:
        raise UsageError("restart: --canary, --max-fail and --pause must be ≥ 0")
    clouds = {n.name: n.cloud for n in nodes}
    names = [n.name for n in nodes]
    if len(set(names)) != len(names):
        raise UsageError(f"restart: node listed twice in {names}")
    if isinstance(min_ready, int):
        mins = dict.fromkeys(clouds.values(), min_ready)
    else:
        mins = {c: int(min_ready.get(c, DEFAULT_MIN_READY_PER_CLOUD)) for c in clouds.values()}
    ready_count: dict[str, int] = {}
    for n in nodes:
        ready_count.setdefault(n.cloud, 0)
        ready_count[n.cloud] += 1 if n.ready else 0
    ready = {n.name: n.ready for n in nodes}

    # A single ready node must be drainable on its own, or the plan can never finish.
    for n in nodes:
        if n.ready and ready_count[n.cloud] - 1 < mins[n.cloud]:
            raise UsageError(
                f"{n.name}: draining it would leave {ready_count[n.cloud] - 1} ready node(s) in "
                f"cloud {n.cloud}, below the minimum of {mins[n.cloud]}",
                hint=f"lower --min-ready-per-cloud (e.g. {n.cloud}={ready_count[n.cloud] - 1}) "
                "or add nodes to that cloud first",
            )

    size = parse_batch(batch, len(nodes))
    pending = list(names)
    batches: list[Batch] = []
    if canary:
        first = pending[: min(canary, len(pending))]
        pending = pending[len(first) :]
        batches.append(Batch(index=0, nodes=tuple(first), canary=True))
    while pending:
        taken: list[str] = []
        drained: dict[str, int] = {}
        for name in list(pending):
            if len(taken) >= size:
                break
            cloud = clouds[name]
            cost = 1 if ready[name] else 0
            # a node that is not ready costs no capacity: it may always go
            if cost and ready_count[cloud] - drained.get(cloud, 0) - cost < mins[cloud]:
                continue
            taken.append(name)
            drained[cloud] = drained.get(cloud, 0) + cost
        # the single-node check above guarantees progress
        assert taken, "capacity guard admitted no node"
        for name in taken:
            pending.remove(name)
        batches.append(Batch(index=len(batches), nodes=tuple(taken)))
    return RollingPlan(
        batches=tuple(batches),
        clouds=clouds,
        min_ready=mins,
        max_fail=max_fail,
        pause_s=pause_s,
    )


def guard_violations(
    batch_nodes: Iterable[str],
    *,
    clouds: Mapping[str, str],
    ready: Mapping[str, bool],
    min_ready: Mapping[str, int],
) -> list[str]:
    """Clouds (with counts) that would fall below their minimum if `batch_nodes` were drained."""
    batch = set(batch_nodes)
    problems = []
    for cloud in sorted(set(clouds.values())):
        members = [n for n, c in clouds.items() if c == cloud]
        left = sum(1 for n in members if ready.get(n, False) and n not in batch)
        cost = sum(1 for n in members if n in batch and ready.get(n, False))
        if cost and left < min_ready.get(cloud, DEFAULT_MIN_READY_PER_CLOUD):
            problems.append(
                f"cloud {cloud}: {left} ready node(s) would remain, minimum is "
                f"{min_ready.get(cloud, DEFAULT_MIN_READY_PER_CLOUD)}"
            )
    return problems


# --------------------------------------------------------------------------------------------
# executor


class RollingOps(Protocol):
    """The fleet operations a rolling restart needs (real: ofactl.rollops.FleetOps)."""

    def ready_nodes(self, nodes: Sequence[str]) -> dict[str, bool]:
        """Which nodes answer ready right now."""
        ...

    def set_drained(self, drained: frozenset[str]) -> None:
        """Render every LB's upstream with exactly `drained` down; validate; reload."""
        ...

    def wait_idle(self, nodes: Sequence[str], timeout_s: float) -> dict[str, str]:
        """Wait until no in-flight work and no LB connection; {node: what was still busy}."""
        ...

    def restart(self, node: str) -> None:
        """Restart the agent on one node (raises OperationError)."""
        ...

    def wait_ready(self, node: str, timeout_s: float) -> None:
        """Wait for readiness (raises OperationError with the last answer)."""
        ...

    def smoke(self, node: str) -> None:
        """One prediction on the node directly (raises OperationError)."""
        ...

    def evidence(self, node: str) -> dict[str, str]:
        """Journal tail and readiness answer for a failed node."""
        ...


@dataclass
class NodeOutcome:
    """What happened to one node."""

    node: str
    batch: int
    ok: bool
    seconds: float
    error: str | None = None
    evidence: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass
class RollingResult:
    """The outcome of a rolling restart."""

    outcomes: list[NodeOutcome] = field(default_factory=list)
    stopped: str | None = None  # why the rollout stopped early, if it did
    left_drained: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[NodeOutcome]:
        """Outcomes that failed."""
        return [o for o in self.outcomes if not o.ok]

    @property
    def ok(self) -> bool:
        """True when every planned node restarted and passed its checks."""
        return not self.failed and self.stopped is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "stopped": self.stopped,
            "left_drained": self.left_drained,
            "skipped": self.skipped,
            "nodes": [
                {
                    "node": o.node,
                    "batch": o.batch,
                    "ok": o.ok,
                    "seconds": round(o.seconds, 3),
                    "error": o.error,
                    "warnings": o.warnings,
                    "evidence": o.evidence,
                }
                for o in self.outcomes
            ],
        }


Event = Callable[[str, dict[str, Any]], None]


def _noop(kind: str, data: dict[str, Any]) -> None:
    return None


def execute_plan(
    plan: RollingPlan,
    ops: RollingOps,
    *,
    drain_timeout_s: float = 20.0,
    ready_timeout_s: float = 300.0,
    before_restart: Callable[[str], None] | None = None,
    verify: Callable[[str], None] | None = None,
    on_event: Event = _noop,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> RollingResult:
    """Run a plan batch by batch; stop when more than `plan.max_fail` nodes have failed.

    The fleet keeps serving throughout: only the current batch (and nodes that already failed)
    are ever drained, and every healthy node is undrained before returning, also on errors.
    `before_restart(node)` runs just before the restart (rollback switches links there);
    `verify(node)` runs after the smoke prediction (rollback checks the release there).
    """
    start = clock()
    result = RollingResult()
    failed: set[str] = set()
    drained_now: frozenset[str] = frozenset()
    # the live guard counts every node of each cloud, not only the ones being restarted
    all_nodes = list(dict.fromkeys([*plan.clouds, *plan.nodes]))
    try:
        for bi, batch in enumerate(plan.batches):
            # live capacity guard: earlier failures lower the ready count
            ready = ops.ready_nodes(all_nodes)
            for n in failed:
                ready[n] = False
            problems = guard_violations(
                batch.nodes, clouds=plan.clouds, ready=ready, min_ready=plan.min_ready
            )
            if problems:
                result.stopped = (
                    f"batch {batch.index} ({', '.join(batch.nodes)}) not started: "
                    + "; ".join(problems)
                )
                result.skipped = [n for b in plan.batches[bi:] for n in b.nodes]
                break
            on_event("batch", {"index": batch.index, "nodes": list(batch.nodes),
                               "canary": batch.canary, "of": len(plan.batches)})
            t_batch = clock()
            drained_now = frozenset(failed | set(batch.nodes))
            on_event("drain", {"nodes": sorted(batch.nodes)})
            ops.set_drained(drained_now)
            busy = ops.wait_idle(list(batch.nodes), drain_timeout_s)
            def one(node: str, busy: dict[str, str] = busy, index: int = batch.index
                    ) -> NodeOutcome:
                t0 = clock()
                warnings = (
                    [f"still busy after {drain_timeout_s:g} s: {busy[node]}"]
                    if node in busy else []
                )
                try:
                    if before_restart is not None:
                        before_restart(node)
                    on_event("restart", {"node": node})
                    ops.restart(node)
                    on_event("wait_ready", {"node": node})
                    ops.wait_ready(node, ready_timeout_s)
                    ops.smoke(node)
                    if verify is not None:
                        verify(node)
                    on_event("node_ok", {"node": node, "seconds": clock() - t0})
                    return NodeOutcome(node, index, True, clock() - t0, warnings=warnings)
                except OperationError as err:
                    try:
                        evidence = ops.evidence(node)
                    except OperationError as ev_err:
                        evidence = {"error": str(ev_err)}
                    on_event("node_failed", {"node": node, "error": str(err),
                                             "evidence": evidence})
                    return NodeOutcome(node, index, False, clock() - t0, error=str(err),
                                       evidence=evidence, warnings=warnings)

            # the nodes of a batch restart together (each host has its own transport)
            if len(batch.nodes) == 1:
                outcomes = [one(batch.nodes[0])]
            else:
                with ThreadPoolExecutor(max_workers=len(batch.nodes)) as pool:
                    outcomes = list(pool.map(one, batch.nodes))
            failed.update(o.node for o in outcomes if not o.ok)
            result.outcomes.extend(outcomes)
            # undrain the healthy ones; failed nodes stay out of the upstream
            drained_now = frozenset(failed)
            on_event("undrain", {"nodes": sorted(set(batch.nodes) - failed),
                                 "kept_drained": sorted(failed)})
            ops.set_drained(drained_now)
            on_event("batch_done", {"index": batch.index, "seconds": clock() - t_batch})
            if len(failed) > plan.max_fail:
                result.stopped = (
                    f"{len(failed)} node(s) failed ({', '.join(sorted(failed))}), "
                    f"more than --max-fail {plan.max_fail}"
                )
                result.skipped = [n for b in plan.batches[bi + 1 :] for n in b.nodes]
                break
            if plan.pause_s and bi + 1 < len(plan.batches):
                on_event("pause", {"seconds": plan.pause_s})
                sleep(plan.pause_s)
    except BaseException:
        # never leave a healthy node drained: put back everything except known failures
        if drained_now != frozenset(failed):
            try:
                ops.set_drained(frozenset(failed))
            except Exception:  # noqa: BLE001 - the original error matters more
                pass
        raise
    result.left_drained = sorted(failed)
    result.seconds = clock() - start
    return result


# --------------------------------------------------------------------------------------------
# entry point for the CLI and for `deploy`


def plan_for_inventory(
    inv: Any,
    nodes: Sequence[str],
    *,
    ready: Mapping[str, bool] | None = None,
    batch: str | int = 1,
    canary: int = 0,
    min_ready: str | int | Mapping[str, int] | None = None,
    max_fail: int = 0,
    pause_s: float = 0.0,
) -> RollingPlan:
    """Plan a rolling restart of `nodes` (names, inventory order kept) of an inventory.

    The capacity guard counts every node of each cloud in the inventory, not only the selected
    ones: restarting one node of a cloud with three ready nodes is fine at minimum 2.
    """
    selected = set(nodes)
    unknown = selected - {n.name for n in inv.nodes}
    if unknown:
        raise UsageError(f"restart: unknown node(s) {', '.join(sorted(unknown))}",
                         hint="ofactl inventory show lists the nodes")
    ready = ready or {}
    all_clouds = [n.cloud for n in inv.nodes]
    if isinstance(min_ready, Mapping):
        mins = {c: int(min_ready.get(c, DEFAULT_MIN_READY_PER_CLOUD)) for c in all_clouds}
    else:
        mins = parse_min_ready(min_ready, all_clouds)
    plan_nodes = [PlanNode(n.name, n.cloud, ready.get(n.name, True))
                  for n in inv.nodes if n.name in selected]
    # unselected nodes still count for the guard: plan with them as phantom ready capacity
    others = [n for n in inv.nodes if n.name not in selected]
    extra: dict[str, int] = {}
    for n in others:
        if ready.get(n.name, True):
            extra[n.cloud] = extra.get(n.cloud, 0) + 1
    adjusted = {c: max(0, m - extra.get(c, 0)) for c, m in mins.items()}
    plan = plan_rolling(plan_nodes, batch=batch, canary=canary, min_ready=adjusted,
                        max_fail=max_fail, pause_s=pause_s)
    # the executor's live guard sees every node, so give it the real minimums and clouds
    return RollingPlan(
        batches=plan.batches,
        clouds={n.name: n.cloud for n in inv.nodes},
        min_ready=mins,
        max_fail=plan.max_fail,
        pause_s=plan.pause_s,
    )


def restart_nodes(
    inv: Any,
    transport: Callable[[Any], Any],
    nodes: Sequence[str] | None = None,
    *,
    batch: str | int = 1,
    canary: int = 0,
    min_ready: str | int | Mapping[str, int] | None = None,
    max_fail: int = 0,
    pause_s: float = 0.0,
    before_restart: Callable[[str], None] | None = None,
    verify: Callable[[str], None] | None = None,
    on_event: Event = _noop,
    ops: RollingOps | None = None,
) -> RollingResult:
    """Rolling restart of `nodes` (default: every node) through the LBs; for the CLI and deploy.

    `transport` is a factory inventory-host -> Transport (`ofactl.transport.ssh_factory(...)`).
    Raises nothing for node failures: look at `result.ok` / `result.failed` (failed nodes are
    left drained, the rest serve). The caller holds the fleet lock.
    """
    from ofactl.rollops import FleetOps  # I/O lives there; this module stays importable pure

    names = [n.name for n in inv.nodes] if nodes is None else list(nodes)
    fleet_ops: Any = ops if ops is not None else FleetOps(inv, transport)
    try:
        ready = fleet_ops.ready_nodes([n.name for n in inv.nodes])
        plan = plan_for_inventory(inv, names, ready=ready, batch=batch, canary=canary,
                                  min_ready=min_ready, max_fail=max_fail, pause_s=pause_s)
        on_event("plan", plan.to_dict())
        drain_s = float(max((n.agent.drain_timeout_s for n in inv.nodes), default=20))
        ready_s = float(max((n.agent.ready_timeout_s for n in inv.nodes), default=300))
        return execute_plan(plan, fleet_ops, drain_timeout_s=drain_s, ready_timeout_s=ready_s,
                            before_restart=before_restart, verify=verify, on_event=on_event)
    finally:
        if ops is None:
            fleet_ops.close()
