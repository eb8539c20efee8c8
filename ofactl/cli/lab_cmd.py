"""`ofactl lab ...`: a real fleet on this machine (network namespaces + systemd-nspawn)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ofactl.cli.apps import lab_app
from ofactl.cli.common import JsonOpt, console, err_console, handle_errors, print_json
from ofactl.errors import UsageError
from ofactl.lab import api
from ofactl.lab.plan import DEFAULT_NAME

NameOpt = Annotated[str, typer.Option("--name", help="Lab name (fleet name, paths).")]


def _progress(msg: str) -> None:
    err_console.print(f"[dim]lab:[/] {msg}", highlight=False)


def _hosts_table(info: api.LabInfo) -> Table:
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for col in ("host", "role", "address", "site", "cloud", "weight/prio", "systemd", "sshd",
                "link"):
        table.add_column(col)
    for hs in info.hosts:
        h = hs.host
        table.add_row(
            h.name, h.role, h.address, h.site, h.cloud,
            str(h.weight if h.role == "node" else h.priority),
            ("[green]" if hs.system in ("running", "degraded") else "[red]") + hs.system,
            "[green]up" if hs.ssh else "[red]down",
            "[green]up" if hs.link else "[red]down",
        )
    return table


def _print_info(info: api.LabInfo) -> None:
    p = info.plan
    console.print(_hosts_table(info))
    console.print(f"inventory:   {p.inventory_path}")
    console.print(f"ssh key:     {p.key_file}")
    console.print(f"known_hosts: {p.known_hosts}")
    console.print(f"VIP:         {api.VIP} (lb pair {', '.join(h.name for h in p.lbs) or '-'})")
    console.print(f"runtime:     {p.runtime} (visible inside every host)")
    console.print(f"next:        ofactl deploy -i {p.inventory_path}")


@lab_app.command("up")
@handle_errors
def up_cmd(
    nodes: Annotated[int, typer.Option("--nodes", help="Model-serving nodes (split across the "
                                       "private and the public site).")] = 4,
    lbs: Annotated[int, typer.Option("--lbs", help="Load balancers (a keepalived pair: 2).")] = 2,
    name: NameOpt = DEFAULT_NAME,
    model: Annotated[Path | None, typer.Option("--model", help="Model dir to put in the "
                                               "inventory as model.local_dir.")] = None,
    runtime: Annotated[str | None, typer.Option("--runtime", envvar="OFACTL_LAB_RUNTIME",
                                                help="Agent runtime venv the inventory names "
                                                "(default: this Python's prefix).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create the lab (or report the running one: nothing changes)."""
    if model is not None and not model.is_dir():
        raise UsageError(f"--model: {model} is not a directory",
                         hint="ofactl model tiny builds a small model dir")
    info = api.up(name=name, nodes=nodes, lbs=lbs, model_dir=str(model) if model else None,
                  runtime=runtime, progress=_progress)
    if json_out:
        print_json(info.to_json())
        return
    if info.changed:
        console.print(f"[green]lab {info.plan.name} is up[/] in {info.elapsed_s:.1f} s: "
                      f"{len(info.plan.lbs)} LBs + {len(info.plan.nodes)} nodes")
    else:
        console.print(f"lab {info.plan.name} is already running; nothing changed")
    _print_info(info)


@lab_app.command("status")
@handle_errors
def status_cmd(json_out: JsonOpt = False) -> None:
    """Show the lab's hosts and their health (exit 1 when a host is unhealthy, 2 when no lab)."""
    info = api.status()
    if info is None:
        if json_out:
            print_json({"running": False, "leftovers": api.leftovers()})
        else:
            console.print("no lab on this machine (ofactl lab up creates one)")
            left = api.leftovers()
            if left:
                console.print("[yellow]leftovers:[/] " + ", ".join(left) +
                              " (ofactl lab down removes them)")
        raise typer.Exit(2)
    if json_out:
        print_json({"running": True, **info.to_json()})
    else:
        state = "[green]healthy" if info.healthy else "[red]degraded"
        console.print(f"lab {info.plan.name}: {info.phase}, {state}[/]")
        _print_info(info)
    if not info.healthy:
        raise typer.Exit(1)


@lab_app.command("down")
@handle_errors
def down_cmd(json_out: JsonOpt = False) -> None:
    """Remove the lab: containers, namespaces, veths, bridge, mounts, cgroups, state."""
    report = api.down(progress=_progress)
    if json_out:
        print_json(report.to_json())
        return
    what = ", ".join(report.labs) if report.labs else "nothing recorded (swept leftovers)"
    console.print(f"lab down: removed {what} in {report.elapsed_s:.1f} s; nothing left")


@lab_app.command("exec", context_settings={"allow_interspersed_args": False})
@handle_errors
def exec_cmd(
    host: Annotated[str, typer.Argument(help="Lab host (lb1, node1, ...).")],
    cmd: Annotated[list[str], typer.Argument(help="Command to run inside the host (after --).")],
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds before it is killed.")]
    = 60.0,
) -> None:
    """Run a command inside a host, out-of-band (not through SSH)."""
    proc = api.exec_in(host, list(cmd), timeout=timeout)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    raise typer.Exit(proc.returncode)


@lab_app.command("fault")
@handle_errors
def fault_cmd(
    host: Annotated[str, typer.Argument(help="Lab host (lb1, node1, ...).")],
    action: Annotated[str, typer.Argument(
        help="stop|start|restart|kill SERVICE, or link-down|link-up|crash|boot|poweroff.")],
    service: Annotated[str | None, typer.Argument(help="Unit for service actions.")] = None,
    signal: Annotated[str, typer.Option("--signal", help="Signal for `kill`.")] = "SIGKILL",
    json_out: JsonOpt = False,
) -> None:
    """Inject a fault into a host, out-of-band (drills and tests)."""
    done = api.fault(host, action, service, signal=signal)
    if json_out:
        print_json({"host": host, "action": action, "service": service, "done": done})
    else:
        console.print(done)


def register(app: typer.Typer) -> None:
    """The lab commands live on `lab_app` (attached to the root app in ofactl/cli)."""
