"""deploy, status, model pull/verify, lock status/release: wiring only (plus printing)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.table import Table

from ofactl.cli.apps import lock_app, model_app
from ofactl.cli.common import (
    InventoryOpt,
    JsonOpt,
    console,
    err_console,
    handle_errors,
    inventory_path,
    print_json,
)
from ofactl.cli.rollout_cmd import BatchOpt, CanaryOpt, MaxFailOpt  # shared with restart
from ofactl.errors import OperationError, UsageError
from ofactl.hooks import finish_hooks, note_hooks_skipped, pre_hook

NodesOpt = Annotated[str | None, typer.Option("--nodes",
                                              help="Host name glob(s), comma-separated.")]
CloudOpt = Annotated[str | None, typer.Option("--cloud", help="private | public")]
RoleOpt = Annotated[str | None, typer.Option("--role", help="node | lb")]
ParallelOpt = Annotated[int, typer.Option("--parallel", "-p", min=1, max=256,
                                          help="Hosts worked on at once.")]
AcceptOpt = Annotated[bool, typer.Option(
    "--accept-new-host-keys", help="Trust and record SSH host keys not yet in known_hosts "
    "(first contact only; a changed key is always refused).")]
SSHConfigOpt = Annotated[Path | None, typer.Option("--ssh-config",
                                                   help="OpenSSH client config to honour.")]

STATUS_STYLE = {"changed": "yellow", "unchanged": "green", "failed": "bold red",
                "skipped": "dim", "running": "cyan", "waiting": "dim"}


def _load(inventory: Path | None) -> Any:
    from ofactl.inventory import load_inventory

    return load_inventory(inventory_path(inventory))


class _LiveHosts:
    """A Rich live table of hosts and what each is doing (stderr; silent with --json)."""

    def __init__(self, names: list[str], enabled: bool, plain: bool = False) -> None:
        self.rows = {n: ("waiting", "") for n in names}
        self.t0 = {n: 0.0 for n in names}
        self.lock = threading.Lock()
        self.enabled = enabled
        self.plain = plain and not enabled  # no TTY: one stderr line per event instead
        self.live: Live | None = None

    def table(self) -> Table:
        t = Table(box=None, pad_edge=False, show_header=False)
        now = time.monotonic()
        for n, (state, detail) in self.rows.items():
            el = f"{now - self.t0[n]:5.1f}s" if self.t0[n] and state == "running" else ""
            t.add_row(n, f"[{STATUS_STYLE.get(state, '')}]{state}[/]", el, detail[:90])
        return t

    def event(self, host: str, ev: str, detail: str) -> None:
        with self.lock:
            if ev == "start":
                self.t0[host] = time.monotonic()
                self.rows[host] = ("running", detail)
            elif ev == "step":
                self.rows[host] = ("running", detail)
            elif ev in ("done", "failed"):
                self.rows[host] = (detail if ev == "done" else "failed",
                                   "" if ev == "done" else detail)
            if self.live is not None:
                self.live.update(self.table())
            elif self.plain and ev != "start":
                err_console.print(f"{host}: {detail or ev}", highlight=False, markup=False,
                                  soft_wrap=True)

    def __enter__(self) -> _LiveHosts:
        if self.enabled:
            self.live = Live(self.table(), console=err_console, refresh_per_second=8,
                             transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)
            self.live = None


def _print_preflight(rows: list[dict[str, Any]]) -> None:
    t = Table(title="preflight", title_justify="left")
    for c in ("host", "ok", "os", "python", "disk free", "systemd", "gpu", "problems"):
        t.add_column(c)
    for r in rows:
        t.add_row(r["host"], "[green]yes[/]" if r["ok"] else "[red]no[/]", r["os"], r["python"],
                  f"{r['disk_free_mb']} MB" if r["disk_free_mb"] is not None else "-",
                  r["systemd"], r["gpu"], "; ".join(r["problems"]))
    console.print(t)


def _print_recap(report: Any) -> None:
    t = Table(title=f"recap ({report.duration_s:.1f} s)" + ("  [dim](dry run)[/]"
                                                           if report.dry_run else ""),
              title_justify="left")
    for c in ("host", "status", "time", "changes"):
        t.add_column(c)
    for r in report.results:
        detail = "; ".join(r.changes) if r.ok else r.error
        if r.ok and not r.changes:
            detail = "[dim]" + ("; ".join(r.notes[:3]) or "nothing to do") + "[/]"
        st = r.status
        t.add_row(r.host, f"[{STATUS_STYLE[st]}]{st}[/]", f"{r.duration_s:.1f}s", detail)
    console.print(t)
    s = report.to_json()["summary"]
    console.print(f"changed {s['changed']}  unchanged {s['unchanged']}  failed {s['failed']}"
                  + (f"  skipped {s['skipped']}" if s["skipped"] else ""), highlight=False)
    for r in report.results:
        if not r.ok and r.hint:
            err_console.print(f"[yellow]hint:[/] {r.hint}", highlight=False)
    if report.stopped:
        err_console.print(f"[bold red]stopped:[/] {report.stopped}", highlight=False)


def _print_dry(entries: list[Any]) -> None:
    for e in entries:
        if e.kind == "run":
            console.print(f"[cyan]{e.host}[/] $ {e.text}", highlight=False, markup=True,
                          soft_wrap=True)
        else:
            console.print(f"[cyan]{e.host}[/] write {e.text}", highlight=False)
            for line in e.diff.splitlines():
                style = ("green" if line.startswith("+") else "red" if line.startswith("-")
                         else "dim")
                console.print(f"    [{style}]{_esc(line)}[/]", highlight=False, soft_wrap=True)


def _esc(s: str) -> str:
    from rich.markup import escape

    return escape(s)


def deploy(
    inventory: InventoryOpt = None,
    nodes: NodesOpt = None,
    cloud: CloudOpt = None,
    role: RoleOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print every command and a diff of "
                                          "every file; change nothing.")] = False,
    parallel: ParallelOpt = 8,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before applying.")] = False,
    json_out: JsonOpt = False,
    accept_new_host_keys: AcceptOpt = False,
    ssh_config: SSHConfigOpt = None,
    ready_timeout: Annotated[float | None, typer.Option(
        "--ready-timeout", help="Per-node readiness budget in s (default: agent.ready_timeout_s)"
    )] = None,
    wheelhouse: Annotated[Path | None, typer.Option(
        "--wheelhouse", help="Local wheel dir for runtime_source: wheelhouse.")] = None,
    model_dir: Annotated[Path | None, typer.Option(
        "--model-dir", help="Local snapshot to push (default: model.local_dir).")] = None,
    batch: BatchOpt = "1",
    canary: CanaryOpt = 0,
    max_fail: MaxFailOpt = 0,
    no_rolling: Annotated[bool, typer.Option(
        "--no-rolling", help="Restart changed agents in place, without draining them on the "
        "LBs (faster; requests to those nodes fail while they restart).")] = False,
) -> None:
    """Deploy the agent, model, units and LB configs to the selected hosts (idempotent)."""
    from ofactl.deploy import (
        DeployContext,
        agent_source,
        build_release,
        load_local_model,
        run_deploy,
        runtime_fingerprint,
        select_hosts,
    )
    from ofactl.rolling import parse_batch
    from ofactl.transport import ssh_factory

    inv = _load(inventory)
    hosts = select_hosts(inv, nodes, cloud, role)
    parse_batch(batch, max(len(inv.nodes), 1))  # bad rollout flags: refused before any change
    if canary < 0 or max_fail < 0:
        raise UsageError(f"--canary and --max-fail must be ≥ 0, got {canary} and {max_fail}",
                         hint="e.g. --canary 1 --max-fail 0")
    has_nodes = any(getattr(h, "role", "node") == "node" for h in hosts)
    model = None
    if has_nodes and inv.model.source == "push":
        model = load_local_model(model_dir or Path(inv.model.local_dir))
    ctx = DeployContext(inv, release=build_release(agent_source()) if has_nodes else None,
                        model=model, runtime_fp=runtime_fingerprint(), wheelhouse=wheelhouse,
                        hub_model=(inv.model.id, inv.model.revision)
                        if has_nodes and inv.model.source == "hub" else None,
                        ready_timeout_s=ready_timeout, rolling=not no_rolling, batch=batch,
                        canary=canary, max_fail=max_fail)
    if not (yes or dry_run or json_out) and console.is_terminal:
        names = ", ".join(h.name for h in hosts)
        typer.confirm(f"deploy to {len(hosts)} host(s) of {inv.fleet} ({names})?", abort=True)
    live = _LiveHosts([h.name for h in hosts], enabled=not json_out and err_console.is_terminal,
                      plain=not json_out)
    ctx.on_event = live.event
    factory = ssh_factory(accept_new_host_keys=accept_new_host_keys,
                          ssh_config=str(ssh_config) if ssh_config else None, dry_run=dry_run)
    host_names = [h.name for h in hosts]
    pre = None
    if dry_run:
        note_hooks_skipped(inv, "deploy")
    else:
        pre = pre_hook(inv, "deploy", host_names)  # a failure stops here, nothing changed
    with live:
        report = run_deploy(ctx, hosts, factory, parallel=parallel,
                            command="deploy " + " ".join(
                                x for x in (f"--nodes {nodes}" if nodes else "",
                                            f"--cloud {cloud}" if cloud else "",
                                            f"--role {role}" if role else "") if x))
    hook_runs = [] if dry_run else finish_hooks(
        inv, "deploy", host_names, report.ok,
        f"{report.changed} host(s) changed" if report.ok else report.stopped or "a host failed",
        pre)
    if json_out:
        data = report.to_json()
        if hook_runs:
            data["hooks"] = hook_runs
        print_json(data)
    else:
        if report.stopped and report.preflight and not all(r["ok"] for r in report.preflight):
            _print_preflight(report.preflight)
        if dry_run:
            _print_dry(report.dry_entries)
        _print_recap(report)
        if report.ok and not dry_run:
            msg = ("nothing changed" if report.changed == 0 else
                   f"{report.changed} host(s) changed")
            console.print(f"[green]deployed[/] release {report.release or '-'}, model "
                          f"{report.model or '-'}: {msg}", highlight=False)
    if not report.ok:
        raise typer.Exit(1)


# ------------------------------------------------------------------------------ status


def _fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f}"


def _status_tables(st: Any) -> Table:
    from ofactl.status import VERDICT_NAMES

    grid = Table.grid()
    t = Table(title="nodes", title_justify="left")
    for c in ("node", "ssh", "unit", "ready", "device", "model", "release", "p50 ms", "p99 ms",
              "inflight", "flags"):
        t.add_column(c)
    for n in st.nodes:
        ssh = "-" if n.ssh is None else ("[green]ok[/]" if n.ssh else "[red]no[/]")
        dev = n.device or "-"
        if n.gpu_total_bytes:
            dev += f" {(n.gpu_used_bytes or 0) / 2**30:.1f}/{n.gpu_total_bytes / 2**30:.0f} GiB"
        t.add_row(n.name, ssh, n.unit or "-", "[green]yes[/]" if n.ready
                  else f"[red]no[/] {n.ready_reason}", dev,
                  (n.model_digest[:12] or "-"), n.release or "-", _fmt_ms(n.p50_s),
                  _fmt_ms(n.p99_s), "-" if n.inflight is None else f"{n.inflight:g}",
                  "[red]" + _esc("; ".join(n.flags)) + "[/]" if n.flags else "")
    grid.add_row(t)
    if st.lbs:
        lt = Table(title="load balancers", title_justify="left")
        for c in ("lb", "ssh", "nginx", "keepalived", "vrrp", "VIP", "config", "flags"):
            lt.add_column(c)
        for b in st.lbs:
            lt.add_row(b.name, "[green]ok[/]" if b.ssh else "[red]no[/]", b.nginx or "-",
                       b.keepalived or "-", b.vrrp or "-",
                       f"[bold]{b.vip}[/]" if b.holds_vip else "",
                       "[red]drift[/]" if b.drift else "in sync",
                       "[red]" + _esc("; ".join(b.flags)) + "[/]" if b.flags else "")
        grid.add_row(lt)
    style = {0: "green", 1: "yellow", 2: "bold red"}[st.verdict]
    vips = "  ".join(f"VIP {v}: {', '.join(h) or 'NONE'}" for v, h in st.vips.items())
    grid.add_row(f"[{style}]{VERDICT_NAMES[st.verdict]}[/]  {vips}  ({st.duration_s:.2f} s)")
    for r in st.reasons[:20]:
        grid.add_row(f"  [dim]-[/] {_esc(r)}")
    return grid


def status(
    inventory: InventoryOpt = None,
    nodes: NodesOpt = None,
    cloud: CloudOpt = None,
    json_out: JsonOpt = False,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between refreshes.")
                        ] = 2.0,
    no_ssh: Annotated[bool, typer.Option("--no-ssh", help="HTTP probes only (no SSH).")
                      ] = False,
    accept_new_host_keys: AcceptOpt = False,
    ssh_config: SSHConfigOpt = None,
    http_timeout: Annotated[float, typer.Option("--http-timeout")] = 3.0,
) -> None:
    """One view of the fleet; exit 0 healthy, 1 degraded, 2 down."""
    from ofactl.status import collect
    from ofactl.transport import ssh_factory

    inv = _load(inventory)
    sel_nodes = [h for h in inv.select(nodes=nodes, cloud=cloud, role="node")]
    sel_lbs = [] if (nodes or cloud) else list(inv.lbs)
    expected = ""
    try:
        from ofactl.manifest import read_manifest

        if inv.model.source == "push":
            expected = read_manifest(Path(inv.model.local_dir)).digest
    except (ValueError, OSError):
        expected = ""
    factory = None if no_ssh else ssh_factory(
        accept_new_host_keys=accept_new_host_keys,
        ssh_config=str(ssh_config) if ssh_config else None)

    def once() -> Any:
        return collect(inv, factory, nodes=sel_nodes, lbs=sel_lbs, expected_digest=expected,
                       http_timeout=http_timeout)

    if watch and not json_out:
        st = once()
        try:
            with Live(_status_tables(st), console=console, refresh_per_second=2) as live:
                for _ in range(1_000_000):  # bounded; Ctrl-C is the normal way out
                    time.sleep(interval)
                    st = once()
                    live.update(_status_tables(st))
        except KeyboardInterrupt:
            pass
        raise typer.Exit(st.verdict)
    st = once()
    if json_out:
        print_json(st.to_json())
    else:
        console.print(_status_tables(st))
    raise typer.Exit(st.verdict)


# ------------------------------------------------------------------------------ model


@model_app.command("pull")
@handle_errors
def model_pull(
    inventory: InventoryOpt = None,
    from_dir: Annotated[Path | None, typer.Option(
        "--from", help="Import a local model dir (e.g. `ofactl model tiny`'s output).")] = None,
    offline: Annotated[bool, typer.Option(
        "--offline", help="Only the local ModelScope cache (local_files_only).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace model.local_dir.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Fill model.local_dir (hub snapshot at the pinned revision, or --from DIR) + manifest."""
    from ofactl.modelstore import import_dir, pull_from_hub

    inv = _load(inventory)
    dest = Path(inv.model.local_dir)
    if from_dir is not None:
        r = import_dir(from_dir, dest, model_id=inv.model.id, revision=inv.model.revision,
                       force=force)
    else:
        with err_console.status(f"snapshot_download {inv.model.id}@{inv.model.revision} ..."):
            r = pull_from_hub(inv.model.id, inv.model.revision, dest, offline=offline)
    if json_out:
        print_json(r.to_json())
        return
    console.print(f"[green]model[/] {r.model_id}@{r.revision} in {r.path} ({r.source}): "
                  f"{r.files} files, {r.size_bytes / 1e6:.1f} MB, digest {r.digest[:12]}, "
                  f"{r.seconds:.1f} s", highlight=False)


@model_app.command("verify")
@handle_errors
def model_verify(
    inventory: InventoryOpt = None,
    nodes: NodesOpt = None,
    cloud: CloudOpt = None,
    parallel: ParallelOpt = 16,
    json_out: JsonOpt = False,
    accept_new_host_keys: AcceptOpt = False,
) -> None:
    """Re-hash the live model snapshot on every selected node against its manifest."""
    from ofactl.executor import run_parallel
    from ofactl.manifest import read_manifest
    from ofactl.modelstore import verify_outcome
    from ofactl.transport import ssh_factory

    inv = _load(inventory)
    sel = inv.select(nodes=nodes, cloud=cloud, role="node")
    if not sel:
        raise UsageError("no node matches the selection", hint="ofactl inventory show")
    try:
        expected = read_manifest(Path(inv.model.local_dir)).digest
    except ValueError:
        expected = ""
    make = ssh_factory(accept_new_host_keys=accept_new_host_keys)

    def one(n: Any) -> Any:
        t = make(n)
        try:
            return verify_outcome(t, n, expected)
        finally:
            t.close()

    results = run_parallel(sel, one, parallel)
    if json_out:
        print_json({"ok": all(r.ok for r in results), "expected_digest": expected or None,
                    "nodes": [r.to_json() for r in results]})
    else:
        t = Table(title="model verify", title_justify="left")
        for c in ("node", "result", "digest", "time", "problems"):
            t.add_column(c)
        for r in results:
            t.add_row(r.host, "[green]intact[/]" if r.ok else "[red]FAILED[/]",
                      str(r.data.get("digest", ""))[:12], f"{r.duration_s:.1f}s",
                      "" if r.ok else _esc(r.error))
        console.print(t)
    if not all(r.ok for r in results):
        raise typer.Exit(1)


# ------------------------------------------------------------------------------ lock


@lock_app.command("status")
@handle_errors
def lock_status(inventory: InventoryOpt = None, json_out: JsonOpt = False,
                accept_new_host_keys: AcceptOpt = False) -> None:
    """Who holds the fleet lock (if anyone)."""
    from ofactl.lock import LOCK_DIR, lock_host, read_audit, read_lock
    from ofactl.transport import ssh_factory

    inv = _load(inventory)
    h = lock_host(inv)
    t = ssh_factory(accept_new_host_keys=accept_new_host_keys)(h)
    try:
        info = read_lock(t)
        recent = read_audit(t, 5)
    finally:
        t.close()
    if json_out:
        print_json({"host": h.name, "path": LOCK_DIR, "held": info is not None,
                    "holder": info.__dict__ if info else None,
                    "stale": (info.stale_reason() or None) if info else None,
                    "recent": recent})
        return
    for e in recent:
        console.print(f"[dim]{e.get('time', '?')} {e.get('owner', '?')}@"
                      f"{e.get('control_host', '?')} {e.get('command', '?')}: "
                      f"{'ok' if e.get('ok') else 'FAILED'}, changed "
                      f"{len(e.get('changed', []))}, failed {len(e.get('failed', []))}[/]",
                      highlight=False)
    if info is None:
        console.print(f"fleet lock on {h.name}: [green]free[/]")
    else:
        stale = info.stale_reason()
        console.print(f"fleet lock on {h.name}: [yellow]held[/] by {info.describe()}"
                      + (f" [red](stale: {stale})[/]" if stale else ""), highlight=False)


@lock_app.command("release")
@handle_errors
def lock_release(inventory: InventoryOpt = None,
                 force: Annotated[bool, typer.Option(
                     "--force", help="Release even a live lock (another deploy may be running)."
                 )] = False,
                 accept_new_host_keys: AcceptOpt = False) -> None:
    """Remove the fleet lock (a live lock only with --force)."""
    from ofactl.lock import force_release, lock_host, read_lock
    from ofactl.transport import ssh_factory

    inv = _load(inventory)
    h = lock_host(inv)
    t = ssh_factory(accept_new_host_keys=accept_new_host_keys)(h)
    try:
        info = read_lock(t)
        if info is None:
            console.print(f"fleet lock on {h.name}: already free")
            return
        if not force and not info.stale_reason():
            raise OperationError(f"{h.name}: the lock is live: {info.describe()}",
                                 hint="wait for it, or use --force if that run is dead")
        force_release(t)
    finally:
        t.close()
    console.print(f"released the fleet lock on {h.name} (was {info.describe()})",
                  highlight=False)


def register(app: typer.Typer) -> None:
    """Attach deploy and status to the root app (model/lock commands hang off shared apps)."""
    app.command("deploy")(handle_errors(deploy))
    app.command("status")(handle_errors(status))
