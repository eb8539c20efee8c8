"""`ofactl inventory check|show` and `ofactl render`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ofactl.cli.apps import inventory_app
from ofactl.cli.common import (
    InventoryOpt,
    JsonOpt,
    console,
    handle_errors,
    inventory_path,
    print_json,
)
from ofactl.errors import InventoryError, OperationError, UsageError
from ofactl.inventory import REDACTED, Inventory, load_inventory
from ofactl.render import RenderedFile, render_all, render_host


def _summary(inv: Inventory) -> dict[str, Any]:
    clouds: dict[str, int] = {}
    for n in inv.nodes:
        clouds[n.cloud] = clouds.get(n.cloud, 0) + 1
    return {
        "ok": True, "path": str(inv.path), "fleet": inv.fleet,
        "sites": len(inv.sites), "nodes": len(inv.nodes), "nodes_by_cloud": clouds,
        "lb_groups": len(inv.lb_groups), "lbs": len(inv.lbs),
        "monitoring_host": inv.monitoring.host if inv.monitoring else None,
    }


@inventory_app.command("check")
@handle_errors
def check_cmd(
    inventory: InventoryOpt = None,
    json_out: JsonOpt = False,
    secrets: Annotated[bool, typer.Option(
        "--secrets", help="Also resolve every secret reference (values are never shown).")
    ] = False,
) -> None:
    """Validate the inventory (every problem at once) and summarise it.

    With --json a failed check also prints {"ok": false, "file", "problems": [{line, path,
    problem, hint}], "hint"} on stdout (the error still goes to stderr, exit 2).
    """
    path = inventory_path(inventory)
    try:
        inv = load_inventory(path)
    except InventoryError as err:
        if json_out:
            print_json({"ok": False, "file": str(path),
                        "problems": getattr(err, "located", None)
                        or [{"line": None, "path": None, "problem": err.message,
                             "hint": err.hint}],
                        "hint": err.hint})
        raise
    if secrets:
        inv.check_secrets()
    s = _summary(inv)
    s["secrets_checked"] = secrets
    if json_out:
        print_json(s)
        return
    by_cloud = ", ".join(f"{v} {k}" for k, v in sorted(s["nodes_by_cloud"].items()))
    console.print(
        f"[green]ok[/] {inv.path}: fleet {inv.fleet}: {s['nodes']} nodes ({by_cloud}), "
        f"{s['lb_groups']} LB group(s) with {s['lbs']} LB host(s) in {s['sites']} site(s)",
        highlight=False, soft_wrap=True)


def _secret_text(ref: dict[str, str]) -> str:
    kind = "env" if "env" in ref else "file"
    return f"{{{kind}: {ref[kind]}}} = {REDACTED}"


@inventory_app.command("show")
@handle_errors
def show_cmd(inventory: InventoryOpt = None, json_out: JsonOpt = False) -> None:
    """Show the resolved inventory (defaults merged, secrets redacted).

    Key files are not required to exist here (`inventory check` reports them).
    """
    inv = load_inventory(inventory_path(inventory), check_files=False)
    data = inv.as_dict()
    if json_out:
        print_json(data)
        return
    console.print(f"[bold]fleet {inv.fleet}[/]  ({inv.path})  model {inv.model.id}@"
                  f"{inv.model.revision} source={inv.model.source}", highlight=False)
    t = Table(title="nodes", title_justify="left")
    for col in ("name", "site", "cloud", "address", "weight", "accel", "device", "port",
                "ssh", "labels"):
        t.add_column(col)
    for n in inv.nodes:
        ssh = f"{n.ssh.user}:{n.ssh.port}" + (f" via {n.ssh.jump_host}" if n.ssh.jump_host
                                             else "") + (" sudo" if n.ssh.sudo else "")
        t.add_row(n.name, n.site, n.cloud, n.address, str(n.weight), n.accelerator,
                  f"{n.agent.device}/{n.agent.dtype}", str(n.agent.port), ssh,
                  ",".join(f"{k}={v}" for k, v in n.labels.items()))
    console.print(t)
    if inv.lb_groups:
        lt = Table(title="load balancers", title_justify="left")
        for col in ("site", "vip", "iface", "vrid", "mode", "preempt", "upstream", "members",
                    "notify"):
            lt.add_column(col)
        for g in data["lb_groups"]:
            lt.add_row(g["site"], g["vip"], g["interface"], str(g["virtual_router_id"]),
                       g["mode"], "yes" if g["preempt"] else "no (nopreempt)",
                       f"{g['upstream']} ({len(g['upstream_nodes'])} nodes)",
                       ", ".join(f"{m['name']} {m['address']} p{m['priority']}"
                                 for m in g["members"]),
                       ", ".join(f"{k}={v}" for k, v in g["notify"].items()))
        console.print(lt)
    at = Table(title="agent", title_justify="left", show_header=False)
    at.add_column("key")
    at.add_column("value")
    for k, v in data["agent"].items():
        at.add_row(k, _secret_text(v) if k == "token" else str(v))
    for g in data["lb_groups"]:
        at.add_row(f"lb {g['site']} auth_pass", _secret_text(g["auth_pass"]))
    if inv.monitoring:
        at.add_row("monitoring", f"Prometheus on {inv.monitoring.host}, scrape every "
                   f"{inv.monitoring.scrape_interval}")
    console.print(at)


def _write(out: Path, host: str, f: RenderedFile) -> Path:
    target = out / host / f.dest.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(f.content)
        os.chmod(tmp, f.mode)
        os.replace(tmp, target)
    except OSError as err:
        raise OperationError(f"{target}: cannot write: {err.strerror}",
                             hint="choose another --out directory") from None
    return target


def _row(host: str, f: RenderedFile, path: Path | None) -> dict[str, Any]:
    return {"host": host, "dest": f.dest, "path": str(path) if path else None,
            "mode": f"{f.mode:04o}", "owner": f.owner, "group": f.group, "sha256": f.sha256,
            "secret": f.secret, "service": f.service}


def render_cmd(
    inventory: InventoryOpt = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Write files to DIR/<host>/<path on host> (with their modes).")] = None,
    host: Annotated[str | None, typer.Option(
        "--host", help="Only this host (without --out: print its files).")] = None,
    drain: Annotated[str | None, typer.Option(
        "--drain", help="Comma-separated nodes to render as 'down' in nginx.")] = None,
    with_secrets: Annotated[bool, typer.Option(
        "--with-secrets", help="Resolve secrets into the written files (needs --out).")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Render every managed config file (nginx, keepalived, systemd, agent env, Prometheus)."""
    if with_secrets and out is None:
        raise UsageError("--with-secrets needs --out DIR",
                         hint="secrets are never printed; write them to files instead")
    inv = load_inventory(inventory_path(inventory), check_files=False)
    drained = frozenset(x.strip() for x in (drain or "").split(",") if x.strip())
    if host is not None:
        files = {inv.host(host).name: render_host(inv, host, drained=drained,
                                                  secrets=with_secrets)}
    else:
        files = render_all(inv, drained=drained, secrets=with_secrets)
    rows: list[dict[str, Any]] = []
    for h, fs in files.items():
        for f in fs:
            path = _write(out, h, f) if out is not None else None
            rows.append(_row(h, f, path))
    if json_out:
        print_json({"inventory": str(inv.path), "out": str(out) if out else None,
                    "secrets": with_secrets, "drained": sorted(drained), "files": rows})
        return
    if out is None and host is not None:
        for f in next(iter(files.values())):
            console.rule(f"{f.dest}  mode {f.mode:04o} {f.owner}:{f.group}  "
                         f"service {f.service or '-'}", style="dim")
            shown = REDACTED + "\n" if f.secret and with_secrets else f.content
            console.out(shown, end="", highlight=False)
        return
    t = Table(title=f"fleet {inv.fleet}: {len(rows)} files" + (f" -> {out}" if out else ""),
              title_justify="left")
    for col in ("host", "dest", "mode", "owner", "service", "sha256"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["host"], r["dest"] + (" (secret)" if r["secret"] else ""), r["mode"],
                  f"{r['owner']}:{r['group']}", r["service"] or "-", r["sha256"][:12])
    console.print(t)
    if out is not None and not with_secrets:
        console.print(f"secrets rendered as {REDACTED} (use --with-secrets to resolve them)",
                      highlight=False)


def register(app: typer.Typer) -> None:
    """Attach `render` to the root app (`inventory check|show` live on inventory_app)."""
    app.command("render")(handle_errors(render_cmd))
