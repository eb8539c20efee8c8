"""Inventory hooks: validation, the environment they get, and how deploy/restart use them."""

from __future__ import annotations

import io
import json
import os
import stat
import time
from pathlib import Path

import pytest
import yaml
from test_deploy_cli import _inventory
from typer.testing import CliRunner

from ofactl.cli import app
from ofactl.errors import InventoryError, OperationError
from ofactl.hooks import hook_env, post_hook, pre_hook, run_hook
from ofactl.inventory import load_inventory


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _with_hooks(tmp: Path, hooks: dict, source: str = "hub") -> Path:
    inv = _inventory(tmp, [1])  # port 1 and a fake key: any SSH attempt fails at once
    doc = yaml.safe_load(inv.read_text())
    doc["model"]["source"] = source
    doc["hooks"] = hooks
    inv.write_text(yaml.safe_dump(doc, sort_keys=False))
    return inv


def test_hooks_are_validated(tmp_path: Path) -> None:
    _script(tmp_path / "ok.sh", "exit 0\n")
    (tmp_path / "plain.sh").write_text("echo not executable\n")
    inv = _with_hooks(tmp_path, {"pre_deploy": "./plain.sh", "post_deply": "x",
                                 "pre_restart": "'unbalanced", "post_restart": " ",
                                 "timeout_s": 0, "pre_rollback": "./ok.sh --flag 'a b'"})
    with pytest.raises(InventoryError) as info:
        load_inventory(inv)
    msg = info.value.message
    assert f"hooks.pre_deploy: {tmp_path / 'plain.sh'} is not an executable file" in msg
    assert "hooks.post_deply: unknown key" in msg
    assert "hooks.pre_restart: cannot split \"'unbalanced\": No closing quotation" in msg
    assert "hooks.post_restart: got ' ', expected a command line" in msg
    assert "hooks.timeout_s: got 0, expected an integer from 1 to 3600" in msg
    assert "hooks.pre_rollback" not in msg
    inv = _with_hooks(tmp_path, {"pre_rollback": "./ok.sh --flag 'a b'", "post_deploy": "true"})
    loaded = load_inventory(inv)
    assert loaded.hooks.get("pre_rollback") == (str(tmp_path / "ok.sh"), "--flag", "a b")
    assert loaded.hooks.get("post_deploy") == ("true",)  # a bare name is looked up in PATH
    assert loaded.hooks.get("pre_deploy") is None and loaded.hooks.timeout_s == 60


def test_hook_env_and_results(tmp_path: Path) -> None:
    out = tmp_path / "env.json"
    _script(tmp_path / "dump.sh",
            f"python3 -c 'import json,os; json.dump({{k: v for k, v in os.environ.items() "
            f"if k.startswith(\"OFACTL_\")}}, open(\"{out}\", \"w\"))'\necho hook says hi\n")
    _script(tmp_path / "fail.sh", "echo broken >&2; exit 3\n")
    _script(tmp_path / "slow.sh", f"sleep 30 & echo $! > {tmp_path / 'child'}; wait\n")
    inv = load_inventory(_with_hooks(tmp_path, {
        "post_deploy": "./dump.sh", "pre_deploy": "./fail.sh", "pre_restart": "./slow.sh",
        "pre_rollback": "no-such-hook-command", "timeout_s": 1}, source="hub"))
    sink = io.StringIO()
    run = post_hook(inv, "deploy", ["n0"], False, "preflight failed", output=sink)
    assert run is not None and run.ok and run.rc == 0
    env = json.loads(out.read_text())
    assert env == {"OFACTL_HOOK": "post_deploy", "OFACTL_COMMAND": "deploy",
                   "OFACTL_FLEET": "t", "OFACTL_INVENTORY": str(inv.path.resolve()),
                   "OFACTL_HOSTS": "n0", "OFACTL_RESULT": "failed",
                   "OFACTL_DETAIL": "preflight failed"}
    with pytest.raises(OperationError) as err:
        pre_hook(inv, "deploy", ["n0"], output=sink)
    assert str(err.value.message).startswith(f"hook pre_deploy ({tmp_path / 'fail.sh'}) exited 3;")
    assert err.value.message.endswith("deploy stopped before changing anything")
    slow = run_hook(inv, "pre_restart", "restart", ["n0"], output=sink)
    assert slow is not None and slow.rc is None
    assert slow.error == "timed out after 1 s (hooks.timeout_s) and was killed"
    child = int((tmp_path / "child").read_text())
    for _ in range(50):  # the hook's own children die with it (killed as a process group)
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(child, 9)
        pytest.fail("the hook's child process outlived the timeout")
    missing = run_hook(inv, "pre_rollback", "rollback", ["n0"], output=sink)
    assert missing is not None and missing.error.startswith("cannot start no-such-hook-command")
    assert run_hook(inv, "post_restart", "restart", []) is None  # not configured
    assert "OFACTL_RESULT" not in hook_env(inv, "pre_deploy", "deploy", ["a", "b"], base={})


def test_deploy_stops_on_a_failing_pre_hook_before_any_host(tmp_path: Path) -> None:
    _script(tmp_path / "gate.sh", "echo 'change freeze until 18:00' >&2; exit 1\n")
    inv = _with_hooks(tmp_path, {"pre_deploy": "./gate.sh"})
    r = CliRunner().invoke(app, ["deploy", "-i", str(inv), "--yes"])
    assert r.exit_code == 1, r.output
    assert "change freeze until 18:00" in r.stderr
    assert "hook pre_deploy" in r.stderr and "stopped before changing anything" in r.stderr
    assert "preflight" not in r.output.lower()  # no host was contacted
    # a dry run runs no hook and says so
    r = CliRunner().invoke(app, ["deploy", "-i", str(inv), "--dry-run"])
    assert "dry run: hooks not run (pre_deploy:" in r.stderr
    assert "change freeze" not in r.stderr


def test_post_hook_hears_a_failed_deploy_and_does_not_change_its_exit(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    _script(tmp_path / "post.sh", f'echo "$OFACTL_RESULT $OFACTL_HOSTS" > {seen}; exit 7\n')
    inv = _with_hooks(tmp_path, {"post_deploy": "./post.sh"})
    r = CliRunner().invoke(app, ["deploy", "-i", str(inv), "--yes", "--json"])
    assert r.exit_code == 1, r.output  # preflight fails: the fake key, port 1
    assert seen.read_text().strip() == "failed n0"
    assert "warning: hook post_deploy" in r.stderr and "exited 7" in r.stderr
    report = json.loads(r.stdout)
    assert [(h["name"], h["rc"], h["ok"]) for h in report["hooks"]] == [
        ("post_deploy", 7, False)]


def test_restart_stops_on_a_failing_pre_hook(tmp_path: Path) -> None:
    _script(tmp_path / "gate.sh", "exit 2\n")
    inv = _with_hooks(tmp_path, {"pre_restart": "./gate.sh"})
    r = CliRunner().invoke(app, ["restart", "--rolling", "-i", str(inv), "--yes"])
    assert r.exit_code == 1, r.output
    assert "hook pre_restart" in r.stderr and "exited 2; restart stopped before changing" in (
        r.stderr)
    r = CliRunner().invoke(app, ["restart", "--rolling", "-i", str(inv), "--dry-run"])
    assert "dry run: hooks not run (pre_restart:" in r.stderr, r.output
