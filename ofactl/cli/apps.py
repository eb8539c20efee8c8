"""Sub-command groups shared by several command modules."""

from __future__ import annotations

import typer

inventory_app = typer.Typer(help="Check and show the inventory.", no_args_is_help=True)
model_app = typer.Typer(help="Build, pull, and verify model snapshots.", no_args_is_help=True)
lab_app = typer.Typer(help="A real fleet on this machine (netns + systemd-nspawn).",
                      no_args_is_help=True)
lock_app = typer.Typer(help="Inspect or release the fleet lock.", no_args_is_help=True)
