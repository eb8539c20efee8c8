"""Thin, bounded wrappers over the machine: subprocesses, cgroups, mounts, processes."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from ofactl.errors import LabError

CGROUP_FS = Path("/sys/fs/cgroup")
# the hierarchies a container's cgroup must exist in (hybrid: v2 "unified" + v1 name=systemd;
# pure v2: the root itself)
_HIERARCHY_CANDIDATES = ("unified", "systemd")

CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def clean_env() -> dict[str, str]:
    """A small, predictable environment for commands run for the lab."""
    return {"PATH": CLEAN_PATH, "LANG": "C.UTF-8", "HOME": "/root", "SYSTEMD_PAGER": "",
            "SYSTEMD_COLORS": "0", "TERM": "dumb"}


def run(
    argv: Sequence[str],
    timeout: float = 10.0,
    check: bool = True,
    input: str | None = None,
    what: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command with a timeout; on failure (check=True) raise LabError with its stderr."""
    try:
        proc = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            env=clean_env(),
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{what or argv[0]}: {' '.join(argv)!r} did not finish in {timeout:g} s"
                       ) from exc
    except FileNotFoundError as exc:
        raise LabError(f"{what or argv[0]}: {argv[0]} not found",
                       hint="sudo apt-get install --no-install-recommends systemd-container "
                       "openssh-server nginx keepalived iproute2") from exc
    if check and proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise LabError(f"{what or argv[0]}: {' '.join(argv)!r} exited {proc.returncode}"
                       + (": " + " | ".join(tail) if tail else ""))
    return proc


# ---------------------------------------------------------------- cgroups

def hierarchies() -> list[Path]:
    """Mounted cgroup hierarchies a container's own cgroup must be created in."""
    if (CGROUP_FS / "cgroup.controllers").exists():  # pure cgroup v2
        return [CGROUP_FS]
    return [CGROUP_FS / h for h in _HIERARCHY_CANDIDATES
            if (CGROUP_FS / h / "cgroup.procs").exists()]


def unified() -> Path | None:
    """The cgroup v2 hierarchy (has cgroup.kill), if mounted."""
    for h in hierarchies():
        if (h / "cgroup.controllers").exists():
            return h
    return None


def cgroup_dirs(rel: str) -> list[Path]:
    """The directories of cgroup `rel` in every hierarchy."""
    return [h / rel for h in hierarchies()]


def make_cgroup(rel: str) -> list[Path]:
    """Create cgroup `rel` in every hierarchy; return the cgroup.procs files to join it."""
    procs = []
    for d in cgroup_dirs(rel):
        d.mkdir(parents=True, exist_ok=True)
        procs.append(d / "cgroup.procs")
    return procs


def cgroup_pids(rel: str) -> set[int]:
    """Every process in cgroup `rel` or below it (any hierarchy)."""
    pids: set[int] = set()
    for d in cgroup_dirs(rel):
        if not d.is_dir():
            continue
        for root, _dirs, files in os.walk(d):
            if "cgroup.procs" in files:
                try:
                    text = (Path(root) / "cgroup.procs").read_text()
                except OSError:
                    continue
                pids.update(int(x) for x in text.split())
    return pids


def kill_cgroup(rel: str, timeout: float = 5.0) -> set[int]:
    """SIGKILL every process in cgroup `rel` (cgroup.kill, else per PID); wait until empty.

    Returns the PIDs still alive after `timeout` (empty on success).
    """
    u = unified()
    deadline = time.monotonic() + timeout
    while True:
        pids = cgroup_pids(rel)
        if not pids:
            return set()
        if u is not None and (u / rel / "cgroup.kill").exists():
            try:
                (u / rel / "cgroup.kill").write_text("1")
            except OSError:
                pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if time.monotonic() > deadline:
            return cgroup_pids(rel)
        time.sleep(0.05)


def remove_cgroup(rel: str) -> list[Path]:
    """rmdir cgroup `rel` and everything below it, leaves first; return what could not go."""
    left: list[Path] = []
    for d in cgroup_dirs(rel):
        if not d.is_dir():
            continue
        for root, _dirs, _files in os.walk(d, topdown=False):
            for _ in range(20):  # a just-emptied cgroup can be busy for a moment
                try:
                    os.rmdir(root)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)
            else:
                left.append(Path(root))
    return left


# ---------------------------------------------------------------- mounts

def mounts_under(prefix: Path) -> list[Path]:
    """Mount points at or below `prefix` in this mount namespace, deepest first."""
    found: list[Path] = []
    pre = str(prefix).rstrip("/")
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        parts = line.split()
        if len(parts) < 5:
            continue
        mp = parts[4].replace("\\040", " ")
        if mp == pre or mp.startswith(pre + "/"):
            found.append(Path(mp))
    found.sort(key=lambda p: len(p.parts), reverse=True)
    return found


def unmount_all(prefix: Path, timeout: float = 5.0) -> list[Path]:
    """Unmount everything at or below `prefix` (lazily when busy); return what stays mounted."""
    deadline = time.monotonic() + timeout
    while True:
        left = mounts_under(prefix)
        if not left:
            return []
        for mp in left:
            proc = run(["umount", str(mp)], timeout=5, check=False)
            if proc.returncode != 0:
                run(["umount", "-l", str(mp)], timeout=5, check=False)
        if time.monotonic() > deadline:
            return mounts_under(prefix)
        time.sleep(0.05)


# ---------------------------------------------------------------- processes

def proc_starttime(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (identifies a PID across reuse)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces/parentheses: split after the last ')'
    rest = stat[stat.rindex(")") + 2:].split()
    return int(rest[19])


def alive(pid: int, starttime: int | None) -> bool:
    """True when `pid` is running and is the same process as recorded."""
    if pid <= 0:
        return False
    st = proc_starttime(pid)
    if st is None:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
        state = state[state.rindex(")") + 2:].split()[0]
    except OSError:
        return False
    if state == "Z":
        return False
    return starttime is None or st == starttime


def container_init(rel: str) -> int | None:
    """PID (root namespace) of the container's init: the process in cgroup `rel` whose PID
    inside its own namespace is 1."""
    for pid in sorted(cgroup_pids(rel)):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("NSpid:"):
                ids = line.split()[1:]
                if len(ids) >= 2 and ids[-1] == "1":
                    return pid
    return None
