"""`ofactl failover-test`: bounded load through the VIP while a fault is injected and restored.

    results = run_drill(inv, ssh_factory(), ["node", "lb"], settings=..., budget=...)

Submodules: scenarios (pure planner), metrics (pure maths), load (load generator), runner (one
scenario, always restored), report (table, JSON, SVG/PNG timeline).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from ofactl.drill.load import Payload
from ofactl.drill.metrics import Budget
from ofactl.drill.runner import (
    DrillSettings,
    Runner,
    ScenarioResult,
    current_holder,
    holder_report,
    run_scenario,
    sigterm_as_interrupt,
)
from ofactl.drill.scenarios import FaultPlan, plan_fault, ready_check
from ofactl.errors import OperationError, TransportError, UsageError

__all__ = [
    "Budget",
    "DrillSettings",
    "ScenarioResult",
    "build_payload",
    "plan_scenarios",
    "run_drill",
    "transport_runner",
]


def transport_runner(inv: Any, factory: Callable[[Any], Any]) -> tuple[Runner, Callable[[], None]]:
    """A Runner over the transport (one cached connection per host, serialised per host)."""
    transports: dict[str, Any] = {}
    locks: dict[str, threading.Lock] = {}
    guard = threading.Lock()

    def run(host: str, argv: Sequence[str], timeout: float) -> tuple[int, str]:
        with guard:
            if host not in transports:
                transports[host] = factory(inv.host(host))
                locks[host] = threading.Lock()
        with locks[host]:
            try:
                res = transports[host].run(list(argv), timeout=timeout, check=False)
            except TransportError:
                # a timed-out or broken connection: the next call starts a fresh one
                transports[host].close()
                with guard:
                    transports[host] = factory(inv.host(host))
                raise
        return res.exit_code, res.stdout + res.stderr

    def close() -> None:
        for t in transports.values():
            t.close()
        transports.clear()

    return run, close


def build_payload(inv: Any) -> Payload:
    """The prediction request sent through the VIP (bearer token only when the fleet needs it)."""
    from ofactl.rollops import predict_body

    headers = {}
    if getattr(inv.agent, "require_token", False):
        headers["Authorization"] = f"Bearer {inv.agent.token.resolve()}"
    return Payload(path="/v1/predict", json=dict(predict_body("drill request")),
                   headers=headers)


def lb_group(inv: Any, site: str | None) -> Any:
    if not inv.lb_groups:
        raise UsageError(f"{inv.path}: no load-balancer pair in the inventory",
                         hint="failover-test drives load through a VIP; add sites[].lb")
    if site is None:
        return inv.lb_groups[0]
    for g in inv.lb_groups:
        if g.site == site:
            return g
    raise UsageError(f"--site: no load-balancer pair in site {site!r}")


def plan_scenarios(inv: Any, scenarios: Sequence[str], *, holder: str | None,
                   site: str | None = None, **kw: Any) -> list[FaultPlan]:
    """FaultPlans for the scenarios (pure once `holder` is known)."""
    group = lb_group(inv, site)
    nodes = {n.name: n.cloud for n in inv.upstream_nodes(group)}
    return [plan_fault(s, nodes=nodes, vip_holder=holder, agent_port=inv.agent.port, **kw)
            for s in scenarios]


def wait_settled(inv: Any, runner: Runner, group: Any, *, timeout: float = 60.0,
                 sleep: Callable[[float], None] = time.sleep) -> str:
    """Wait until exactly one LB holds the VIP (the master when preempting) and every node is
    ready; return the holder or raise OperationError saying what is still wrong."""
    lbs = [m.name for m in group.members]
    deadline = time.monotonic() + timeout
    problem = ""
    while True:
        holder = current_holder(runner, lbs, group.vip_address)
        unready = []
        for n in inv.upstream_nodes(group):
            c = ready_check(n.name, n.agent.port)
            try:
                code, _ = runner(c.host, c.argv, 5.0)
            except OperationError:
                code = 1
            if code != 0:
                unready.append(n.name)
        want_master = group.preempt and holder != group.master.name
        if holder is not None and not unready and not want_master:
            return holder
        problem = (f"no single VIP holder (VIP on: "
                   f"{holder_report(runner, lbs, group.vip_address)})" if holder is None else
                   f"VIP on {holder}, not yet back on {group.master.name}" if want_master else
                   f"not ready: {', '.join(unready)}")
        if time.monotonic() >= deadline:
            raise OperationError(f"fleet not settled after {timeout:g} s: {problem}",
                                 hint="ofactl status")
        sleep(0.5)


def run_drill(
    inv: Any,
    factory: Callable[[Any], Any],
    scenarios: Sequence[str],
    *,
    settings: DrillSettings,
    budget: Budget,
    site: str | None = None,
    sampler_factory: Callable[[Any], Any] | None = None,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
    **fault_kw: Any,
) -> list[ScenarioResult]:
    """Run the scenarios one after another, each on a settled fleet; always restored."""
    group = lb_group(inv, site)
    runner, close = transport_runner(inv, factory)
    s_runner, s_close = transport_runner(inv, sampler_factory or factory)
    emit = on_event or (lambda k, d: None)
    results: list[ScenarioResult] = []
    try:
        with sigterm_as_interrupt():
            for name in scenarios:
                emit("settle", {"scenario": name})
                holder = wait_settled(inv, runner, group)
                plan = plan_scenarios(inv, [name], holder=holder, site=site, **fault_kw)[0]
                emit("scenario", {"scenario": name, "description": plan.description})
                result = run_scenario(plan, replace(settings), runner=runner,
                                      lbs=[m.name for m in group.members],
                                      vip=group.vip_address, budget=budget,
                                      sampler_runner=s_runner, on_event=emit)
                results.append(result)
                emit("scenario_done", {"scenario": name, "breaches": result.breaches})
            # leave the fleet as found: wait (bounded) until it has settled again
            try:
                wait_settled(inv, runner, group)
            except OperationError as err:
                if results:
                    results[-1].breaches.append(f"after the drill: {err}")
    finally:
        close()
        s_close()
    return results
