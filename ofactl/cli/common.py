"""Options shared by every command and the one place that turns errors into exit codes."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from ofactl.errors import EXIT_USAGE, OfactlError

console = Console()
err_console = Console(stderr=True)

DEFAULT_INVENTORY = "inventory.yaml"
INVENTORY_ENV = "OFACTL_INVENTORY"

InventoryOpt = Annotated[
    Path | None,
    typer.Option(
        "--inventory",
        "-i",
        envvar=INVENTORY_ENV,
        help=f"Inventory YAML file (default: ${INVENTORY_ENV} or ./{DEFAULT_INVENTORY}).",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
VerboseOpt = Annotated[
    bool, typer.Option("--verbose", "-v", help="More detail; tracebacks on errors.")
]

_state: dict[str, Any] = {"verbose": False}


def set_verbose(flag: bool) -> None:
    """Remember -v from the top-level callback so every command sees it."""
    _state["verbose"] = _state["verbose"] or flag


def is_verbose() -> bool:
    """True when -v/--verbose was given anywhere on the command line."""
    return bool(_state["verbose"])


def inventory_path(path: Path | None) -> Path:
    """The inventory to load: the flag, else the environment variable, else ./inventory.yaml."""
    return path if path is not None else Path(DEFAULT_INVENTORY)


def print_json(data: Any) -> None:
    """Write one JSON document to stdout (never through Rich, so it stays parseable)."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def fail(err: OfactlError) -> typer.Exit:
    """Print an ofactl error as one red line plus a hint; return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {escape(err.message)}", highlight=False, markup=True,
                      soft_wrap=True)
    if err.hint:
        err_console.print(f"[yellow]hint:[/] {escape(err.hint)}", highlight=False, soft_wrap=True)
    return typer.Exit(err.exit_code)


F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(fn: F) -> F:
    """Decorator for command functions: OfactlError -> red line + hint + its exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except OfactlError as err:
            if is_verbose():
                err_console.print_exception()
            raise fail(err) from None
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def env_flag(name: str) -> bool:
    """True when an environment variable is set to a truthy value."""
    return os.environ.get(name, "").lower() in {"1", "true", "yes", "on"}


__all__ = [
    "EXIT_USAGE",
    "InventoryOpt",
    "JsonOpt",
    "VerboseOpt",
    "console",
    "err_console",
    "fail",
    "handle_errors",
    "inventory_path",
    "is_verbose",
    "print_json",
    "set_verbose",
]
