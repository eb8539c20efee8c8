"""Hooks: the inventory's local commands around deploy, restart and rollback (as Kamal's).

A `pre_*` hook runs before ofactl changes anything (before the fleet lock; deploy and restart
have not contacted a host yet, rollback has only read each node's releases); a non-zero exit, a
timeout, or a command that cannot start stops the operation with exit 1 and nothing changed.
A `post_*` hook runs after it, told the result in OFACTL_RESULT; its failure is reported as a
warning and never changes the operation's exit code (the fleet has already changed).

Hooks run on the control machine, in the inventory's directory, without a shell, with the
caller's environment plus:

  OFACTL_HOOK       pre_deploy, post_deploy, ...
  OFACTL_COMMAND    deploy | restart | rollback
  OFACTL_FLEET      the inventory's fleet name
  OFACTL_INVENTORY  the inventory file (absolute)
  OFACTL_HOSTS      the selected hosts, comma-separated
  OFACTL_RESULT     post hooks only: ok | failed
  OFACTL_DETAIL     post hooks only: a one-line summary (e.g. "2 host(s) changed")

Their output goes to ofactl's stderr, so `--json` on stdout stays clean.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from ofactl.errors import OperationError


@dataclass(frozen=True)
class HookRun:
    """What one hook did."""

    name: str
    argv: tuple[str, ...]
    rc: int | None  # None: it could not start or timed out
    seconds: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.rc == 0 and self.error is None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "argv": list(self.argv), "rc": self.rc,
                "seconds": round(self.seconds, 3), "ok": self.ok, "error": self.error}


def hook_env(inv: Any, name: str, command: str, hosts: Sequence[str],
             result: str | None = None, detail: str | None = None,
             base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a hook runs with (pure)."""
    env = dict(os.environ if base is None else base)
    env.update({
        "OFACTL_HOOK": name, "OFACTL_COMMAND": command, "OFACTL_FLEET": inv.fleet,
        "OFACTL_INVENTORY": str(inv.path.resolve()), "OFACTL_HOSTS": ",".join(hosts),
    })
    if result is not None:
        env["OFACTL_RESULT"] = result
        env["OFACTL_DETAIL"] = detail or ""
    return env


def run_hook(inv: Any, name: str, command: str, hosts: Sequence[str], *,
             result: str | None = None, detail: str | None = None,
             output: IO[str] | None = None) -> HookRun | None:
    """Run hook `name` if the inventory has one; None when it has not. Never raises."""
    argv = inv.hooks.get(name)
    if argv is None:
        return None
    out = output if output is not None else sys.stderr
    env = hook_env(inv, name, command, hosts, result, detail)
    try:  # stream straight to a real file descriptor; otherwise (tests, IDEs) copy afterwards
        out.flush()
        target: Any = out.fileno()
    except (OSError, ValueError, AttributeError):
        target = subprocess.PIPE
    started = time.monotonic()
    try:
        # its own session, so a timeout kills the hook and everything it started
        proc = subprocess.Popen(  # noqa: S603 - the operator's own command from the inventory
            list(argv), cwd=str(inv.path.resolve().parent), env=env, stdin=subprocess.DEVNULL,
            stdout=target, stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as err:
        return HookRun(name, argv, None, time.monotonic() - started,
                       f"cannot start {argv[0]}: {err.strerror or err}")
    try:
        captured, _ = proc.communicate(timeout=inv.hooks.timeout_s)
    except KeyboardInterrupt:  # Ctrl-C: the hook's session does not get the terminal's SIGINT
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return HookRun(name, argv, None, time.monotonic() - started,
                       f"timed out after {inv.hooks.timeout_s} s (hooks.timeout_s) and was killed")
    if captured:
        out.write(captured.decode("utf-8", "replace"))
        out.flush()
    run = HookRun(name, argv, proc.returncode, time.monotonic() - started)
    if proc.returncode != 0:
        run = HookRun(name, argv, proc.returncode, run.seconds,
                      f"exited {proc.returncode}")
    return run


def pre_hook(inv: Any, command: str, hosts: Sequence[str],
             output: IO[str] | None = None) -> HookRun | None:
    """Run pre_<command>; raise OperationError (exit 1, nothing changed) when it fails."""
    name = f"pre_{command}"
    run = run_hook(inv, name, command, hosts, output=output)
    if run is not None and not run.ok:
        raise OperationError(
            f"hook {name} ({' '.join(run.argv)}) {run.error}; {command} stopped before "
            "changing anything",
            hint=f"fix what the hook checks and rerun, or remove hooks.{name} from "
                 f"{inv.path}")
    return run


def post_hook(inv: Any, command: str, hosts: Sequence[str], ok: bool, detail: str,
              output: IO[str] | None = None) -> HookRun | None:
    """Run post_<command> with the result; its failure is returned, never raised."""
    return run_hook(inv, f"post_{command}", command, hosts, result="ok" if ok else "failed",
                    detail=detail, output=output)


def finish_hooks(inv: Any, command: str, hosts: Sequence[str], ok: bool, detail: str,
                 pre: HookRun | None) -> list[dict[str, Any]]:
    """After the operation: run post_<command>, warn when it failed, and return the JSON of
    every hook that ran (pre and post) for the command's --json output."""
    post = post_hook(inv, command, hosts, ok, detail)
    warn_failed_post_hook(post)
    return [r.to_json() for r in (pre, post) if r is not None]


def warn_failed_post_hook(run: HookRun | None, output: IO[str] | None = None) -> None:
    """Tell the operator a post hook failed (the operation's exit code does not change)."""
    if run is not None and not run.ok:
        out = output if output is not None else sys.stderr
        print(f"warning: hook {run.name} ({' '.join(run.argv)}) {run.error}; the operation's "
              "result stands", file=out, flush=True)


def note_hooks_skipped(inv: Any, command: str, output: IO[str] | None = None) -> None:
    """In a dry run: say which hooks a real run would call (they are not run)."""
    names = [n for n in (f"pre_{command}", f"post_{command}") if inv.hooks.get(n)]
    if names:
        out = output if output is not None else sys.stderr
        listed = "; ".join(f"{n}: {' '.join(inv.hooks.get(n))}" for n in names)
        print(f"dry run: hooks not run ({listed})", file=out, flush=True)
