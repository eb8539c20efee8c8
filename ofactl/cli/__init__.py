"""The Typer application: the only layer that prints and exits."""

from __future__ import annotations

import importlib
from typing import Annotated

import typer

from ofactl import __version__
from ofactl.cli.apps import inventory_app, lab_app, lock_app, model_app
from ofactl.cli.common import set_verbose

app = typer.Typer(
    name="ofactl",
    help="Operate a hybrid-cloud fleet serving OFA visual entailment "
    "(inventory, render, deploy, status, rollouts, failover drills, lab).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Each area owns one module; see docs/contracts.md.
_COMMAND_MODULES = ("inventory_cmd", "agent_cmd", "lab_cmd", "deploy_cmd", "rollout_cmd")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ofactl {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="More detail; tracebacks on errors.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """ofactl: deploy, observe and drill an OFA visual-entailment fleet."""
    set_verbose(verbose)


app.add_typer(inventory_app, name="inventory")
app.add_typer(model_app, name="model")
app.add_typer(lab_app, name="lab")
app.add_typer(lock_app, name="lock")

for _name in _COMMAND_MODULES:
    importlib.import_module(f"ofactl.cli.{_name}").register(app)


def main() -> None:
    """Console-script entry point."""
    app()
