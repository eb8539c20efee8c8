"""The shared fleet fixture: one real lab (2 LBs + 4 nodes) per test session.

Usage (tests of deploy, status, rolling restarts, drills)::

    pytestmark = pytest.mark.lab

    def test_deploy(lab_fleet):
        inv = lab_fleet.inventory_path            # the lab inventory (docs/contracts.md)
        lab_fleet.exec("node1", ["systemctl", "is-active", "ofa-agent"], timeout=10)
        lab_fleet.fault("node1", "kill", "ofa-agent")
        lab_fleet.fault("lb1", "crash"); lab_fleet.heal()

Outside CI the fixture skips (with the reason) when the lab cannot run here (not root, tools
missing); with CI=true it fails instead. Concurrent pytest sessions on one machine take turns
(a session-long lock, bounded wait: $OFACTL_LAB_WAIT_S, default 600 s). With
OFACTL_LAB_REUSE=1 a healthy running lab of the same shape is reused and left running.
agent.runtime in the inventory: $OFACTL_LAB_RUNTIME, else the first of this Python's venv and the
repo's .venv that holds the pinned runtime (.ofa-runtime-*), else this Python's venv.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from ofactl.errors import LabError
from ofactl.lab import api
from ofactl.lab.plan import LabHost

FIXTURE_NODES = 4
FIXTURE_LBS = 2


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes", "on"}


def _unavailable(reason: str) -> None:
    """Fail in CI (a lab that cannot start must not pass silently); skip elsewhere."""
    if _in_ci():
        pytest.fail(f"lab fixture: {reason} (CI=true: the lab must run here)", pytrace=False)
    pytest.skip(f"lab fixture: {reason}")


@dataclass
class LabFleet:
    """A running lab as tests see it."""

    name: str
    inventory_path: Path
    key_file: Path
    known_hosts: Path
    hosts: dict[str, LabHost]
    vip: str = "10.213.0.100"
    vip_cidr: str = api.VIP
    runtime: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def nodes(self) -> list[str]:
        """Node names (node1..)."""
        return [n for n, h in self.hosts.items() if h.role == "node"]

    @property
    def lbs(self) -> list[str]:
        """Load-balancer names (lb1, lb2)."""
        return [n for n, h in self.hosts.items() if h.role == "lb"]

    def address(self, host: str) -> str:
        """The host's lab address."""
        return self.hosts[host].address

    def exec(self, host: str, argv: list[str] | str, timeout: float = 30.0,
             input: str | None = None, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run a command in a host out-of-band (nsenter, not SSH); a str runs under `sh -c`.

        returncode 124 when it timed out; check=True raises AssertionError on non-zero exit.
        """
        args = ["sh", "-c", argv] if isinstance(argv, str) else list(argv)
        proc = api.exec_in(host, args, timeout=timeout, input=input)
        if check and proc.returncode != 0:
            raise AssertionError(f"{host}: {args!r} exited {proc.returncode}: "
                                 f"{proc.stderr.strip()[-500:]}")
        return proc

    def fault(self, host: str, action: str, service: str | None = None,
              signal: str = "SIGKILL", timeout: float = 30.0) -> str:
        """Inject a fault out-of-band (see ofactl.lab.api.fault for the actions)."""
        return api.fault(host, action, service, signal=signal, timeout=timeout)

    def status(self) -> api.LabInfo:
        """Every host's health (container, systemd, sshd, link)."""
        info = api.status()
        assert info is not None, "the lab is gone"
        return info

    def heal(self, timeout: float = 60.0) -> api.LabInfo:
        """Undo host faults: boot stopped/crashed hosts, bring every link up, then wait (bounded)
        until every host is healthy (systemd settled, sshd answering); returns the last status."""
        deadline = time.monotonic() + timeout
        info = self.status()
        for hs in info.hosts:
            if not hs.running:
                api.fault(hs.host.name, "boot", timeout=timeout)
            elif not hs.link:
                api.fault(hs.host.name, "link-up")
        while True:
            info = self.status()
            if info.healthy or time.monotonic() > deadline:
                return info
            time.sleep(0.2)

    def inventory_copy(self, dest: Path, model_dir: str | Path | None = None,
                       **agent: Any) -> Path:
        """A copy of the lab inventory at `dest`, with model.local_dir and agent keys set."""
        doc = yaml.safe_load(self.inventory_path.read_text())
        if model_dir is not None:
            doc["model"]["local_dir"] = str(model_dir)
        doc["agent"].update(agent)
        dest.write_text(yaml.safe_dump(doc, sort_keys=False))
        return dest


def _runtime() -> str:
    """The agent runtime the lab inventory names: $OFACTL_LAB_RUNTIME, else this Python's venv
    when it holds the pinned runtime, else the repo's .venv when that does, else this venv."""
    env = os.environ.get("OFACTL_LAB_RUNTIME")
    if env:
        return env
    here = Path(sys.prefix)
    repo_venv = Path(__file__).resolve().parents[1] / ".venv"
    for venv in (here, repo_venv):
        if list(venv.glob(".ofa-runtime-*")):
            return str(venv)
    return str(here)


def _fleet_from(info: api.LabInfo) -> LabFleet:
    p = info.plan
    return LabFleet(name=p.name, inventory_path=p.inventory_path, key_file=p.key_file,
                    known_hosts=p.known_hosts, hosts={h.name: h for h in p.hosts},
                    runtime=p.runtime)


def _take_session_lock() -> int:
    wait = float(os.environ.get("OFACTL_LAB_WAIT_S", "600"))
    try:
        return api.take_session_lock(wait)
    except LabError:
        _unavailable(f"another test session held the lab for {wait:g} s")
        raise


_SESSION: dict[str, Any] = {"fleet_up": False}


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker of the lab's own create/remove tests."""
    config.addinivalue_line(
        "markers", "lab_lifecycle: creates and removes labs itself (runs before the shared "
        "fleet exists)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Lab lifecycle tests first: they need the machine without the shared fleet."""
    items.sort(key=lambda it: 0 if it.get_closest_marker("lab_lifecycle") else 1)


@pytest.fixture(scope="session")
def lab_machine() -> Iterator[None]:
    """This machine can run a lab, and this session has it to itself (bounded wait)."""
    problems = api.preflight_problems()
    if problems:
        _unavailable("; ".join(problems) + f" (fix: {api.fix_for(problems)})")
    fd = _take_session_lock()
    try:
        yield
    finally:
        os.close(fd)


@pytest.fixture
def bare_machine(lab_machine: None) -> Iterator[None]:
    """No lab before and after the test (for tests that create and remove labs themselves)."""
    if _SESSION["fleet_up"]:
        pytest.skip("the shared lab fleet is up; lifecycle tests run before it (ordering)")
    api.down()
    try:
        yield
    finally:
        api.down()


@pytest.fixture(scope="session")
def lab_fleet(lab_machine: None) -> Iterator[LabFleet]:
    """A real fleet (2 LBs + 4 nodes) for the whole session; removed at the end."""
    reuse = os.environ.get("OFACTL_LAB_REUSE", "") == "1"
    keep = False
    info = api.status() if reuse else None
    if (info is not None and info.healthy and len(info.plan.nodes) == FIXTURE_NODES
            and len(info.plan.lbs) == FIXTURE_LBS):
        keep = True
    else:
        try:
            api.down()
            info = api.up(nodes=FIXTURE_NODES, lbs=FIXTURE_LBS, runtime=_runtime())
        except Exception as exc:  # a lab that cannot start: fail in CI, skip elsewhere
            _unavailable(f"lab up failed: {exc}")
            raise
    assert info is not None
    _SESSION["fleet_up"] = True
    try:
        yield _fleet_from(info)
    finally:
        _SESSION["fleet_up"] = False
        if not keep:
            api.down()
