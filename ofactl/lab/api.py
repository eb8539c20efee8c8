"""Python API of the lab: up, down, status, exec in a host, fault injection (tests, drills, CLI).

One lab runs on a machine at a time (bridge `ofalab0`, 10.213.0.0/24). Everything it creates is
found again without its state file: namespaces and veths by their prefix, processes by the lab's
own cgroup, mounts below /run/ofactl-lab/. Nothing here prints.
"""

from __future__ import annotations

import fcntl
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ofactl.errors import LabError, UsageError
from ofactl.lab import hosts as hostmod
from ofactl.lab import net, system
from ofactl.lab import state as statemod
from ofactl.lab.inventory import ensure_key, write_inventory, write_known_hosts
from ofactl.lab.plan import (
    BRIDGE,
    CGROUP_ROOT,
    DEFAULT_NAME,
    STATE_ROOT,
    VIP,
    LabHost,
    LabPlan,
    make_plan,
)
from ofactl.lab.state import HostRecord, LabState

INSTALL_HINT = ("sudo apt-get install --no-install-recommends systemd-container openssh-server "
                "nginx keepalived iproute2 util-linux")
REQUIRED_TOOLS = {
    "systemd-nspawn": "systemd-container",
    "nsenter": "util-linux",
    "ip": "iproute2",
    "mount": "mount",
    "ssh-keygen": "openssh-client",
    "sshd": "openssh-server",
    "nginx": "nginx",
    "keepalived": "keepalived",
}
TOOL_DIRS = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
READY_TIMEOUT_S = 40.0
STOP_GRACE_S = 6.0
LOCK_TIMEOUT_S = 120.0

Progress = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


# ---------------------------------------------------------------- preflight

def _tool_present(tool: str) -> bool:
    return any(Path(d, tool).exists() for d in TOOL_DIRS) or shutil.which(tool) is not None


def preflight_problems() -> list[str]:
    """Why a lab cannot run on this machine (empty when it can)."""
    problems: list[str] = []
    if platform.system() != "Linux":
        return [f"the lab needs Linux (network namespaces, systemd-nspawn); this is "
                f"{platform.system()}"]
    if os.geteuid() != 0:
        problems.append("the lab needs root (network namespaces, mounts, cgroups)")
    missing = [f"{tool} ({pkg})" for tool, pkg in REQUIRED_TOOLS.items()
               if not _tool_present(tool)]
    if missing:
        problems.append("missing: " + ", ".join(missing))
    if not system.hierarchies():
        problems.append("no cgroup hierarchy under /sys/fs/cgroup (cgroup2 or name=systemd)")
    try:
        if "overlay" not in Path("/proc/filesystems").read_text():
            problems.append("the kernel has no overlay filesystem (modprobe overlay)")
    except OSError:
        pass
    return problems


def _require_root(what: str) -> None:
    if platform.system() != "Linux" or os.geteuid() != 0:
        raise LabError(f"lab {what}: needs root on Linux",
                       hint=f"run as root: sudo ofactl lab {what}")


def fix_for(problems: list[str]) -> str:
    """The next step for the problems preflight_problems() found."""
    hint = INSTALL_HINT
    if any("root" in p for p in problems):
        hint = "run as root: sudo ofactl lab up" + (
            f"; install the tools: {INSTALL_HINT}" if any("missing" in p for p in problems)
            else "")
    return hint


def preflight() -> None:
    """Raise LabError with the fix when the lab cannot run here."""
    problems = preflight_problems()
    if problems:
        raise LabError("lab: cannot run here: " + "; ".join(problems), hint=fix_for(problems))


# ---------------------------------------------------------------- locking

@contextmanager
def _lock(timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """One lab operation at a time on this machine (bounded wait)."""
    STATE_ROOT.mkdir(parents=True, exist_ok=True)
    fd = os.open(STATE_ROOT.parent / "ofactl-lab.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LabError(f"lab: another lab operation held the lock for {timeout:g} s",
                                   hint="wait for it, or check `ofactl lab status`") from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)


# ---------------------------------------------------------------- results


SESSION_LOCK = Path("/run/ofactl-lab.session.lock")


def take_session_lock(wait_s: float) -> int:
    """Wait (bounded) until no other test session or benchmark uses the lab; return the flock'd
    fd (closing it releases). LabError when the lab stayed busy for wait_s."""
    fd = os.open(SESSION_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise LabError(f"{SESSION_LOCK}: another lab user held it for {wait_s:g} s",
                               hint="wait for the other test session or benchmark") from None
            time.sleep(0.5)

@dataclass
class HostStatus:
    """What `status` found for one host."""

    host: LabHost
    running: bool
    init_pid: int | None
    system: str
    ssh: bool
    link: bool | None

    @property
    def healthy(self) -> bool:
        """Container up, systemd running (or degraded), sshd answering, link up."""
        return (self.running and self.ssh and bool(self.link)
                and self.system in ("running", "degraded"))

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {**self.host.to_dict(), "running": self.running, "init_pid": self.init_pid,
                "system": self.system, "ssh": self.ssh, "link": self.link,
                "healthy": self.healthy}


@dataclass
class LabInfo:
    """A lab as `up`/`status` report it."""

    plan: LabPlan
    phase: str
    changed: bool = False
    elapsed_s: float | None = None
    hosts: list[HostStatus] = field(default_factory=list)
    note: str = ""

    @property
    def healthy(self) -> bool:
        """Every host healthy."""
        return bool(self.hosts) and all(h.healthy for h in self.hosts)

    def to_json(self) -> dict[str, Any]:
        """JSON form (`lab up --json`, `lab status --json`)."""
        p = self.plan
        return {
            "name": p.name,
            "phase": self.phase,
            "changed": self.changed,
            "healthy": self.healthy,
            "elapsed_s": self.elapsed_s,
            "note": self.note,
            "inventory": str(p.inventory_path),
            "key_file": str(p.key_file),
            "known_hosts": str(p.known_hosts),
            "state_dir": str(p.state_dir),
            "control_dir": str(p.control_dir),
            "runtime": p.runtime,
            "bridge": BRIDGE,
            "vip": VIP,
            "hosts": [h.to_json() for h in self.hosts] or [h.to_dict() for h in p.hosts],
        }


@dataclass
class DownReport:
    """What `down` removed and what (if anything) it could not."""

    labs: list[str]
    elapsed_s: float
    leftovers: list[str]

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {"labs": self.labs, "elapsed_s": self.elapsed_s, "leftovers": self.leftovers}


# ---------------------------------------------------------------- inspection

def _running_state() -> LabState | None:
    for name in statemod.known_labs():
        st = statemod.load(name)
        if st is not None:
            return st
    return None


def _host_status(st: LabState, host: LabHost) -> HostStatus:
    rec = st.hosts.get(host.name, HostRecord())
    running = system.alive(rec.pid, rec.starttime)
    init = system.container_init(hostmod.cgroup_rel(st.plan.name, host.name)) if running else None
    sysstate = hostmod.system_state(init) if init else "down"
    return HostStatus(host=host, running=running, init_pid=init, system=sysstate,
                      ssh=hostmod.ssh_banner(host.address, 0.5) if running else False,
                      link=net.link_is_up(host))


def _statuses(st: LabState) -> list[HostStatus]:
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda h: _host_status(st, h), st.plan.hosts))


def status(name: str | None = None) -> LabInfo | None:
    """The lab (by name, else the one on this machine) and every host's health; None if none."""
    st = statemod.load(name) if name else _running_state()
    if st is None:
        return None
    return LabInfo(plan=st.plan, phase=st.phase, hosts=_statuses(st),
                   elapsed_s=st.ready_s)


def leftovers() -> list[str]:
    """Anything of a lab on this machine: namespaces, links, mounts, cgroups, processes, state."""
    out: list[str] = [f"netns {n}" for n in net.lab_netns()]
    out += [f"link {link}" for link in net.lab_links()]
    out += [f"mount {m}" for m in system.mounts_under(STATE_ROOT)]
    out += [f"mount {m}" for m in system.mounts_under(net.NETNS_DIR)
            if m.name.startswith("ofalab-")]
    for d in system.cgroup_dirs(CGROUP_ROOT):
        if d.exists():
            out.append(f"cgroup {d}")
    out += [f"process {p}" for p in sorted(system.cgroup_pids(CGROUP_ROOT))]
    if STATE_ROOT.exists() and any(STATE_ROOT.iterdir()):
        out.append(f"state {STATE_ROOT}")
    return out


# ---------------------------------------------------------------- up

def _wait_ready(st: LabState, hosts: list[LabHost], timeout: float,
                progress: Progress, settled: bool = True) -> None:
    """Wait until every host is healthy; with settled=False a host whose systemd is still
    "starting" (e.g. a deployed agent warming up after a boot) counts once sshd answers."""
    deadline = time.monotonic() + timeout
    pending = {h.name: h for h in hosts}
    last: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=8) as pool:
        while pending:
            results = list(pool.map(lambda h: _host_status(st, h), pending.values()))
            for hs in results:
                last[hs.host.name] = (f"container {'up' if hs.running else 'not running'}, "
                                      f"systemd {hs.system}, sshd "
                                      f"{'answering' if hs.ssh else 'not answering'}")
                if hs.healthy or (not settled and hs.running and hs.ssh and bool(hs.link)
                                  and hs.system in ("starting", "initializing")):
                    del pending[hs.host.name]
                    progress(f"{hs.host.name} ready ({hs.host.address})")
                elif not hs.running:
                    raise LabError(f"{hs.host.name}: the container exited during boot"
                                   + _console_tail(st.plan, hs.host.name),
                                   hint=f"see {st.plan.host_dir(hs.host.name)}/console.log")
            if not pending:
                return
            if time.monotonic() > deadline:
                detail = "; ".join(f"{n}: {last.get(n, 'no answer')}" for n in pending)
                raise LabError(f"lab {st.plan.name}: not ready after {timeout:g} s ({detail})",
                               hint=f"console logs: {st.plan.state_dir}/hosts/*/console.log")
            time.sleep(0.1)


def _console_tail(plan: LabPlan, host: str, lines: int = 5) -> str:
    try:
        text = (plan.host_dir(host) / "console.log").read_text(errors="replace")
    except OSError:
        return ""
    tail = [ln for ln in text.strip().splitlines() if ln.strip()][-lines:]
    return (": " + " | ".join(tail)) if tail else ""


def up(
    name: str = DEFAULT_NAME,
    nodes: int = 4,
    lbs: int = 2,
    model_dir: str | None = None,
    runtime: str | None = None,
    progress: Progress = _quiet,
    ready_timeout: float = READY_TIMEOUT_S,
) -> LabInfo:
    """Create the lab, or report the running one unchanged (idempotent)."""
    preflight()
    plan = make_plan(name, nodes, lbs, runtime or sys.prefix,
                     str(Path(model_dir).resolve()) if model_dir else None)
    with _lock():
        existing = _running_state()
        if existing is not None:
            return _report_existing(existing, plan)
        left = leftovers()
        if left:
            raise LabError("lab: leftovers of an earlier lab are on this machine: "
                           + ", ".join(left[:6]) + (" ..." if len(left) > 6 else ""),
                           hint="ofactl lab down")
        t0 = time.monotonic()
        st = LabState(plan=plan, phase="starting", created_at=time.time())
        statemod.save(st)  # first: a killed `lab up` is found again by `lab down`
        try:
            _build(st, progress, ready_timeout)
        except BaseException:
            progress("lab up failed: removing what was created")
            _teardown()
            raise
        st.phase = "running"
        st.ready_s = round(time.monotonic() - t0, 2)
        statemod.save(st)
        info = LabInfo(plan=plan, phase="running", changed=True, elapsed_s=st.ready_s,
                       hosts=_statuses(st))
        return info


def _report_existing(st: LabState, wanted: LabPlan) -> LabInfo:
    info = LabInfo(plan=st.plan, phase=st.phase, changed=False, hosts=_statuses(st),
                   elapsed_s=st.ready_s)
    if st.phase != "running" or not info.healthy:
        bad = [h.host.name for h in info.hosts if not h.healthy]
        raise LabError(f"lab {st.plan.name}: exists but is {st.phase}"
                       + (f" with unhealthy hosts: {', '.join(bad)}" if bad else ""),
                       hint="ofactl lab down, then ofactl lab up (or `ofactl lab fault HOST "
                       "boot` for a crashed host)")
    same = (st.plan.name == wanted.name
            and [h.name for h in st.plan.hosts] == [h.name for h in wanted.hosts])
    if not same:
        raise LabError(
            f"lab {st.plan.name}: already running with {len(st.plan.lbs)} LBs + "
            f"{len(st.plan.nodes)} nodes (asked for '{wanted.name}' with {len(wanted.lbs)} LBs "
            f"+ {len(wanted.nodes)} nodes); one lab runs per machine",
            hint="ofactl lab down, then lab up with the new shape")
    info.note = "already running; nothing changed"
    return info


def _build(st: LabState, progress: Progress, ready_timeout: float) -> None:
    plan = st.plan
    pubkey = ensure_key(plan)
    net.create_bridge()
    for h in plan.hosts:
        net.create_host_net(h)
    progress(f"network: bridge {BRIDGE} + {len(plan.hosts)} namespaces")
    host_keys: dict[str, str] = {}
    for h in plan.hosts:
        hostmod.mount_overlay(plan, h)
        host_keys[h.name] = hostmod.prepare(plan, h, pubkey)
        st.hosts[h.name] = HostRecord(host_key=host_keys[h.name])
    write_known_hosts(plan, host_keys)
    progress("hosts prepared (overlay of /, machine-id, host keys, masked units)")
    for h in plan.hosts:
        pid, started = hostmod.start(plan, h)
        st.hosts[h.name].pid, st.hosts[h.name].starttime = pid, started
    statemod.save(st)
    progress(f"booting {len(plan.hosts)} hosts")
    _wait_ready(st, list(plan.hosts), ready_timeout, progress)
    write_inventory(plan)


# ---------------------------------------------------------------- down

def down(progress: Progress = _quiet) -> DownReport:
    """Remove every lab on this machine (also after a crash or a killed `lab up`)."""
    _require_root("down")
    t0 = time.monotonic()
    with _lock():
        labs = statemod.known_labs()
        _teardown(progress)
        left = leftovers()
    report = DownReport(labs=labs, elapsed_s=round(time.monotonic() - t0, 2), leftovers=left)
    if left:
        raise LabError("lab down: could not remove " + ", ".join(left),
                       hint="run `ofactl lab down` again; if it stays, reboot the machine")
    return report


def _teardown(progress: Progress = _quiet) -> None:
    states: list[LabState] = []
    for name in statemod.known_labs():
        try:
            st = statemod.load(name)
        except LabError:
            st = None
        if st is not None:
            states.append(st)
            st.phase = "stopping"
            try:
                statemod.save(st)
            except OSError:
                pass
    # orderly shutdown first (SIGTERM to nspawn -> poweroff inside), bounded
    procs = [(r.pid, r.starttime) for st in states for r in st.hosts.values() if r.pid]
    for pid, started in procs:
        hostmod.stop(pid, started)
    if procs:
        hostmod.wait_gone(procs, STOP_GRACE_S)
    # then whatever is still in the lab's cgroups, by cgroup (never by name)
    stuck = system.kill_cgroup(CGROUP_ROOT, timeout=5)
    progress("containers stopped" + (f" ({len(stuck)} processes would not die)" if stuck else ""))
    system.remove_cgroup(CGROUP_ROOT)
    system.unmount_all(STATE_ROOT, timeout=5)
    net.remove_all()
    progress("network removed")
    if not system.mounts_under(STATE_ROOT) and STATE_ROOT.exists():
        for d in STATE_ROOT.iterdir():
            if d.is_dir() and not d.is_symlink():
                shutil.rmtree(d, ignore_errors=True)
            else:
                d.unlink(missing_ok=True)
    for st in states:
        if st.plan.control_dir.is_dir():
            shutil.rmtree(st.plan.control_dir, ignore_errors=True)


# ---------------------------------------------------------------- exec and faults

def _require(name: str | None = None) -> LabState:
    st = statemod.load(name) if name else _running_state()
    if st is None:
        raise LabError("lab: no lab is running on this machine", hint="ofactl lab up")
    return st


def init_pid(host: str, name: str | None = None) -> int:
    """PID of the host's init (systemd) as this machine sees it."""
    st = _require(name)
    st.plan.host(host)
    pid = system.container_init(hostmod.cgroup_rel(st.plan.name, host))
    if pid is None:
        raise LabError(f"{host}: the host is not running",
                       hint=f"ofactl lab fault {host} boot")
    return pid


def exec_in(host: str, argv: list[str], timeout: float = 30.0, input: str | None = None,
            name: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `argv` in a host out-of-band (nsenter into all its namespaces); returncode 124 on
    timeout."""
    if not argv:
        raise UsageError("lab exec: no command given", hint="ofactl lab exec node1 -- hostname")
    return hostmod.in_host(init_pid(host, name), argv, timeout=timeout, input=input)


SERVICE_ACTIONS = ("stop", "start", "restart", "kill")
HOST_ACTIONS = ("link-down", "link-up", "crash", "boot", "poweroff")


def fault(host: str, action: str, service: str | None = None, signal: str = "SIGKILL",
          name: str | None = None, timeout: float = 30.0) -> str:
    """Inject a fault into a host, out-of-band; returns a one-line description of what was done.

    Service faults: stop|start|restart|kill SERVICE (kill = `systemctl kill --signal=SIGKILL`,
    so Restart=on-failure applies). Host faults: link-down|link-up (the host's bridge port),
    crash (link cut, every process SIGKILLed at once), boot (start a stopped or crashed host,
    link restored), poweroff (orderly shutdown).
    """
    st = _require(name)
    h = st.plan.host(host)
    if action in SERVICE_ACTIONS:
        if not service:
            raise UsageError(f"lab fault {host} {action}: which service?",
                             hint=f"ofactl lab fault {host} {action} nginx")
        argv = (["systemctl", "kill", f"--signal={signal}", service] if action == "kill"
                else ["systemctl", action, service])
        proc = hostmod.in_host(init_pid(host, name), argv, timeout=timeout)
        if proc.returncode != 0:
            raise LabError(f"{host}: {' '.join(argv)!r} exited {proc.returncode}: "
                           + (proc.stderr.strip().splitlines() or ["(no output)"])[-1])
        return f"{host}: {' '.join(argv)}"
    if service:
        raise UsageError(f"lab fault {host} {action}: takes no service")
    if action == "link-down":
        net.set_link(h, up=False)
        return f"{host}: link down ({h.veth})"
    if action == "link-up":
        net.set_link(h, up=True)
        return f"{host}: link up ({h.veth})"
    if action == "crash":
        net.set_link(h, up=False)
        left = system.kill_cgroup(hostmod.cgroup_rel(st.plan.name, host), timeout=5)
        if left:
            raise LabError(f"{host}: processes survived the crash: {sorted(left)}")
        return f"{host}: crashed (link cut, every process killed)"
    if action == "poweroff":
        rec = st.hosts.get(host, HostRecord())
        hostmod.in_host(init_pid(host, name), ["systemctl", "--no-block", "poweroff"], timeout=10)
        if not hostmod.wait_gone([(rec.pid, rec.starttime)], timeout):
            raise LabError(f"{host}: still running {timeout:g} s after poweroff")
        return f"{host}: powered off"
    if action == "boot":
        return _boot(st, h, timeout)
    raise UsageError(f"lab fault: unknown action {action!r}",
                     hint="one of: " + ", ".join(SERVICE_ACTIONS + HOST_ACTIONS))


def _boot(st: LabState, h: LabHost, timeout: float) -> str:
    with _lock():
        rec = st.hosts.setdefault(h.name, HostRecord())
        if system.alive(rec.pid, rec.starttime):
            net.set_link(h, up=True)
            return f"{h.name}: already running (link up)"
        rel = hostmod.cgroup_rel(st.plan.name, h.name)
        system.kill_cgroup(rel, timeout=5)
        system.remove_cgroup(rel)
        hostmod.mount_overlay(st.plan, h)
        net.set_link(h, up=True)
        rec.pid, rec.starttime = hostmod.start(st.plan, h)
        statemod.save(st)
        _wait_ready(st, [h], timeout, _quiet, settled=False)
        return f"{h.name}: booted"
