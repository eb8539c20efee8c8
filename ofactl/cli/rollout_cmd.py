"""`ofactl restart --rolling`, `ofactl rollback`, `ofactl failover-test`."""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ofactl.cli.common import (
    InventoryOpt,
    JsonOpt,
    console,
    err_console,
    handle_errors,
    inventory_path,
    print_json,
)
from ofactl.errors import OperationError, UsageError
from ofactl.hooks import finish_hooks, note_hooks_skipped, pre_hook

BatchOpt = Annotated[str, typer.Option("--batch", help="Nodes per batch: N or P% (e.g. 25%).")]
CanaryOpt = Annotated[int, typer.Option("--canary", help="Restart this many nodes alone first.")]
MaxFailOpt = Annotated[int, typer.Option("--max-fail", help="Stop once more nodes failed.")]
PauseOpt = Annotated[float, typer.Option("--pause", help="Seconds to wait between batches.")]
MinReadyOpt = Annotated[
    str | None,
    typer.Option("--min-ready-per-cloud",
                 help="Never drain a cloud below this many ready nodes: N or private=2,public=1 "
                 "(default 1)."),
]
NodesOpt = Annotated[str | None, typer.Option("--nodes", help="Node name globs (comma-separated).")]
CloudOpt = Annotated[str | None, typer.Option("--cloud", help="Only nodes of this cloud.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Show the plan; change nothing.")]
AcceptKeysOpt = Annotated[
    bool, typer.Option("--accept-new-host-keys",
                       help="Trust and record host keys not yet in known_hosts.")]


def _load(inventory: Path | None) -> Any:
    from ofactl.inventory import load_inventory

    return load_inventory(inventory_path(inventory))


def _factory(accept_new: bool) -> Any:
    from ofactl.transport import ssh_factory

    return ssh_factory(accept_new_host_keys=accept_new)


def _selected(inv: Any, nodes: str | None, cloud: str | None) -> list[str]:
    names = [h.name for h in inv.select(nodes=nodes, cloud=cloud, role="node")]
    if not names:
        raise UsageError("no node matches the selection",
                         hint="check --nodes/--cloud against `ofactl inventory show`")
    return names


def _progress(quiet: bool) -> Any:
    """An on_event callback printing one line per step (to stderr, so --json stays clean)."""
    t0 = time.monotonic()

    def cb(kind: str, data: dict[str, Any]) -> None:
        if quiet and kind not in ("node_failed",):
            return
        stamp = f"[dim]{time.monotonic() - t0:6.1f}s[/]"
        if kind == "plan":
            return
        if kind == "batch":
            what = "canary" if data["canary"] else f"batch {data['index'] + 1}/{data['of']}"
            err_console.print(f"{stamp} [bold]{what}[/]: {', '.join(data['nodes'])}")
        elif kind == "drain":
            err_console.print(f"{stamp}   drain on every LB: {', '.join(data['nodes'])}")
        elif kind == "restart":
            err_console.print(f"{stamp}   restart {data['node']}")
        elif kind == "wait_ready":
            err_console.print(f"{stamp}   wait for {data['node']}: ready + smoke prediction")
        elif kind == "node_ok":
            err_console.print(f"{stamp}   [green]{data['node']} ok[/] ({data['seconds']:.1f} s)")
        elif kind == "node_failed":
            err_console.print(f"{stamp}   [red]{data['node']} failed[/]: {data['error']}")
        elif kind == "undrain":
            kept = data.get("kept_drained") or []
            err_console.print(f"{stamp}   undrain: {', '.join(data['nodes']) or '-'}"
                              + (f" (kept drained: {', '.join(kept)})" if kept else ""))
        elif kind == "pause":
            err_console.print(f"{stamp}   pause {data['seconds']:g} s")
        elif kind == "mark":
            err_console.print(f"{stamp}   {data['scenario']}: {data['what']} "
                              f"(t={data['t']:.1f} s)")
        elif kind == "settle":
            err_console.print(f"{stamp} waiting for a settled fleet before {data['scenario']}")
        elif kind == "scenario":
            err_console.print(f"{stamp} [bold]{data['scenario']}[/]: {data['description']}")

    return cb


def _plan_table(plan: Any) -> Table:
    t = Table(title="rolling restart plan", title_justify="left")
    t.add_column("batch", justify="right")
    t.add_column("nodes")
    t.add_column("")
    for b in plan.batches:
        t.add_row(str(b.index + 1), ", ".join(b.nodes), "canary" if b.canary else "")
    return t


def _dry_run_steps(inv: Any, plan: Any) -> list[str]:
    from ofactl import commands
    from ofactl.rollops import lb_conns_cmd

    lines = []
    lbs = [lb.name for lb in inv.lbs]
    for b in plan.batches:
        lines.append(f"batch {b.index + 1}: {', '.join(b.nodes)}")
        lines.append(f"  {', '.join(lbs) or '(no LB)'}: render nginx.conf with "
                     f"{', '.join(b.nodes)} down -> nginx -t -> systemctl reload nginx")
        for n in b.nodes:
            node = inv.node(n)
            lines.append(f"  {n}: wait for inflight 0 on /v1/info; on each LB: "
                         f"{shlex.join(lb_conns_cmd(node.address, node.agent.port))} is empty")
            lines.append(f"  {n}: {shlex.join(commands.systemctl('restart', 'ofa-agent'))}")
            lines.append(f"  {n}: wait for /v2/health/ready 200, then POST /v1/predict on "
                         f"127.0.0.1:{node.agent.port}")
        lines.append(f"  {', '.join(lbs) or '(no LB)'}: render nginx.conf without them -> "
                     "nginx -t -> reload")
    return lines


def _result_table(result: Any) -> Table:
    t = Table(title="rolling restart", title_justify="left")
    for c in ("node", "batch", "result", "seconds", "detail"):
        t.add_column(c)
    for o in result.outcomes:
        t.add_row(o.node, str(o.batch + 1), "[green]ok[/]" if o.ok else "[red]failed[/]",
                  f"{o.seconds:.1f}", o.error or "; ".join(o.warnings))
    for n in result.skipped:
        t.add_row(n, "", "[yellow]skipped[/]", "", "")
    return t


def _print_evidence(result: Any) -> None:
    for o in result.failed:
        err_console.print(f"[bold red]{o.node}[/]: {o.error}")
        if o.evidence.get("ready"):
            err_console.print(f"  readiness: {o.evidence['ready']}")
        if o.evidence.get("journal"):
            err_console.print("  journalctl -u ofa-agent -n 30:")
            for line in o.evidence["journal"].splitlines()[-30:]:
                err_console.print(f"    {line}", highlight=False, markup=False)


@contextmanager
def _fleet_lock(inv: Any, factory: Any, command: str) -> Iterator[Any]:
    """Hold the fleet lock for the block; release it and close its connection after."""
    from ofactl.lock import FleetLock, lock_host

    t = factory(lock_host(inv))
    try:
        lock = FleetLock.acquire(t, command=command, fleet=inv.fleet)
    except BaseException:
        t.close()
        raise
    try:
        yield lock
    finally:
        lock.release()
        lock.t.close()


def register(app: typer.Typer) -> None:
    """Attach restart, rollback and failover-test to the root app."""

    @app.command("restart")
    @handle_errors
    def restart_cmd(
        rolling: Annotated[bool, typer.Option("--rolling", help="Restart batch by batch, "
                                              "drained through the load balancers.")] = False,
        batch: BatchOpt = "1",
        canary: CanaryOpt = 0,
        max_fail: MaxFailOpt = 0,
        pause: PauseOpt = 0.0,
        min_ready: MinReadyOpt = None,
        nodes: NodesOpt = None,
        cloud: CloudOpt = None,
        yes: YesOpt = False,
        dry_run: DryRunOpt = False,
        accept_new_host_keys: AcceptKeysOpt = False,
        inventory: InventoryOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Restart agents without dropping a request: drain, wait, restart, check, undrain."""
        from ofactl.rolling import plan_for_inventory, restart_nodes

        if not rolling:
            raise UsageError("restart: only rolling restarts are supported",
                             hint="ofactl restart --rolling [--batch N|P%] [--canary 1]")
        inv = _load(inventory)
        names = _selected(inv, nodes, cloud)
        factory = _factory(accept_new_host_keys)
        if dry_run:
            note_hooks_skipped(inv, "restart")
            plan = plan_for_inventory(inv, names, batch=batch, canary=canary,
                                      min_ready=min_ready, max_fail=max_fail, pause_s=pause)
            if json_out:
                print_json({"dry_run": True, "plan": plan.to_dict(),
                            "steps": _dry_run_steps(inv, plan)})
            else:
                console.print(_plan_table(plan))
                for line in _dry_run_steps(inv, plan):
                    console.print(line, highlight=False, markup=False)
            return
        if not yes and not typer.confirm(f"Restart {len(names)} node(s) of {inv.fleet} one "
                                         f"batch at a time?", err=True):
            raise typer.Exit(1)
        pre = pre_hook(inv, "restart", names)  # a failure stops here, nothing changed
        with _fleet_lock(inv, factory, "restart --rolling"):
            result = restart_nodes(inv, factory, names, batch=batch, canary=canary,
                                   min_ready=min_ready, max_fail=max_fail, pause_s=pause,
                                   on_event=_progress(json_out))
        hook_runs = finish_hooks(inv, "restart", names, result.ok,
                                 result.stopped or f"{len(names)} node(s) restarted", pre)
        if json_out:
            print_json({**result.to_dict(), **({"hooks": hook_runs} if hook_runs else {})})
        else:
            console.print(_result_table(result))
            if result.left_drained:
                console.print(f"[yellow]left drained:[/] {', '.join(result.left_drained)}")
        if not result.ok:
            _print_evidence(result)
            raise OperationError(
                f"rolling restart stopped: {result.stopped or 'a node failed'}",
                hint="fix the node, then `ofactl restart --rolling --nodes NAME` "
                "(it stays drained until then)")

    @app.command("rollback")
    @handle_errors
    def rollback_cmd(
        to: Annotated[str | None, typer.Option("--to", help="Release id to go back to "
                                               "(default: the previous one).")] = None,
        batch: BatchOpt = "1",
        canary: CanaryOpt = 0,
        max_fail: MaxFailOpt = 0,
        pause: PauseOpt = 0.0,
        min_ready: MinReadyOpt = None,
        nodes: NodesOpt = None,
        cloud: CloudOpt = None,
        yes: YesOpt = False,
        dry_run: DryRunOpt = False,
        accept_new_host_keys: AcceptKeysOpt = False,
        inventory: InventoryOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Put the previous agent release (and its model) back on every node, rolling."""
        from ofactl.rollback import rollback

        inv = _load(inventory)
        names = _selected(inv, nodes, cloud)
        factory = _factory(accept_new_host_keys)
        plans, _ = rollback(inv, factory, to=to, nodes=names, plan_only=True)
        table = Table(title="rollback", title_justify="left")
        for c in ("node", "release", "model", "note"):
            table.add_column(c)
        for p in plans:
            table.add_row(p.node, f"{p.from_release} -> {p.to_release}",
                          p.from_model if p.to_model == p.from_model
                          else f"{p.from_model} -> {p.to_model}", p.note)
        if dry_run:
            note_hooks_skipped(inv, "rollback")
            if json_out:
                print_json({"dry_run": True, "nodes": [p.to_dict() for p in plans]})
            else:
                console.print(table)
            return
        if not json_out:
            console.print(table)
        if not yes and not typer.confirm("Roll back these nodes, one batch at a time?",
                                         err=True):
            raise typer.Exit(1)
        pre = pre_hook(inv, "rollback", names)  # a failure stops here, nothing changed
        with _fleet_lock(inv, factory, "rollback"):
            plans, result = rollback(inv, factory, to=to, nodes=names, batch=batch,
                                     canary=canary, min_ready=min_ready, max_fail=max_fail,
                                     pause_s=pause, on_event=_progress(json_out))
        hook_runs = finish_hooks(inv, "rollback", names, result.ok,
                                 result.stopped or f"{len(names)} node(s) rolled back", pre)
        if json_out:
            print_json({"nodes": [p.to_dict() for p in plans], "result": result.to_dict(),
                        **({"hooks": hook_runs} if hook_runs else {})})
        else:
            console.print(_result_table(result))
        if not result.ok:
            _print_evidence(result)
            raise OperationError(f"rollback stopped: {result.stopped or 'a node failed'}",
                                 hint="the failed node stays drained; see the evidence above")

    @app.command("failover-test")
    @handle_errors
    def failover_test_cmd(
        scenario: Annotated[str, typer.Option("--scenario",
                                              help="node | lb | cloud | all")] = "all",
        duration: Annotated[float, typer.Option("--duration", help="Seconds of load per "
                                                "scenario.")] = 30.0,
        rate: Annotated[float, typer.Option("--rate", help="Requests per second.")] = 20.0,
        timeout: Annotated[float, typer.Option("--timeout",
                                               help="Per-request timeout, seconds.")] = 2.0,
        max_errors: Annotated[int | None, typer.Option(
            "--max-errors", help="Budget: failed requests allowed per scenario.")] = None,
        max_failover_seconds: Annotated[float | None, typer.Option(
            "--max-failover-seconds", help="Budget: seconds until the VIP moved.")] = None,
        report: Annotated[Path | None, typer.Option(
            "--report", help="Write the JSON report here; the timeline goes next to it "
            "(.svg, and .png when matplotlib is installed).")] = None,
        node_fault: Annotated[str, typer.Option("--node-fault", help="stop | kill")] = "stop",
        lb_fault: Annotated[str, typer.Option("--lb-fault",
                                              help="nginx | keepalived")] = "nginx",
        fault_cloud: Annotated[str, typer.Option("--fault-cloud",
                                                 help="Cloud taken down in the cloud "
                                                 "scenario.")] = "private",
        target: Annotated[str | None, typer.Option(
            "--target", help="Node (node scenario) or LB (lb scenario) to break.")] = None,
        site: Annotated[str | None, typer.Option("--site", help="Which LB pair's VIP "
                                                 "(default: the first).")] = None,
        yes: YesOpt = False,
        dry_run: DryRunOpt = False,
        accept_new_host_keys: AcceptKeysOpt = False,
        inventory: InventoryOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Drill: load through the VIP, break a node / an LB / a cloud, restore, measure."""
        from ofactl.drill import (
            Budget,
            DrillSettings,
            build_payload,
            plan_scenarios,
            run_drill,
            transport_runner,
        )
        from ofactl.drill.report import (
            report_dict,
            summary_table,
            timeline_document,
            write_json,
            write_png,
        )
        from ofactl.drill.runner import current_holder
        from ofactl.drill.scenarios import expand

        names = expand(scenario)
        from ofactl.drill import lb_group
        if rate <= 0 or duration <= 0 or timeout <= 0 or rate * duration > 100_000:
            raise UsageError("failover-test: --rate, --duration and --timeout must be > 0 and "
                             "rate × duration at most 100000 requests")
        inv = _load(inventory)
        lb_group(inv, site)  # a usage error before anything connects
        factory = _factory(accept_new_host_keys)
        fault_kw: dict[str, Any] = {"target": target, "node_fault": node_fault,
                                    "lb_fault": lb_fault, "cloud": fault_cloud}
        if dry_run:
            runner, close = transport_runner(inv, factory)
            try:
                group = inv.lb_groups[0] if inv.lb_groups and site is None else None
                lbs = [m.name for m in (group.members if group else [])]
                holder = current_holder(runner, lbs, group.vip_address) if group else None
            finally:
                close()
            plans = plan_scenarios(inv, names, holder=holder or target, site=site, **fault_kw)
            if json_out:
                print_json({"dry_run": True, "scenarios": [p.to_dict() for p in plans]})
            else:
                for p in plans:
                    console.print(f"[bold]{p.scenario}[/]: {p.description}")
                    for c in p.inject:
                        console.print(f"  inject  {c.host}: {shlex.join(c.argv)}",
                                      highlight=False)
                    for c in p.restore:
                        console.print(f"  restore {c.host}: {shlex.join(c.argv)}",
                                      highlight=False)
            return
        if not yes and not typer.confirm(
                f"Inject faults into {inv.fleet} ({', '.join(names)}) under load?", err=True):
            raise typer.Exit(1)
        budget = Budget(max_errors=max_errors, max_failover_s=max_failover_seconds)
        vip = lb_group(inv, site).vip_address
        settings = DrillSettings(base_url=f"http://{vip}", payload=build_payload(inv),
                                 rate=rate, duration=duration, timeout=timeout)
        with _fleet_lock(inv, factory, "failover-test"):
            results = run_drill(inv, factory, names, settings=settings, budget=budget,
                                site=site, on_event=_progress(json_out), **fault_kw)
        command = "ofactl " + shlex.join(sys.argv[1:])
        data = report_dict(results, command=command,
                           budget={"max_errors": max_errors,
                                   "max_failover_seconds": max_failover_seconds})
        pictures = []
        if report is not None:
            write_json(report, data)
            svg = report.with_suffix(".svg")
            svg.write_text(timeline_document(results))
            pictures.append(str(svg))
            png = report.with_suffix(".png")
            if write_png(png, results):
                pictures.append(str(png))
        if json_out:
            summary = dict(data)
            summary["scenarios"] = [r.to_dict(raw=False) for r in results]
            summary["timeline"] = pictures
            print_json(summary)
        else:
            console.print(summary_table(results))
            for b in data["breaches"]:
                console.print(f"[red]budget:[/] {b}", highlight=False)
            if report is not None:
                console.print(f"report: {report}; timeline: {', '.join(pictures)}")
        if data["breaches"]:
            raise OperationError("failover-test: budget exceeded: " + "; ".join(data["breaches"]),
                                 hint="open the timeline picture to see when it happened")
