"""The fleet lock: one directory on a designated host (first LB, else first node).

`mkdir` is atomic, so whoever creates `{LOCK_DIR}` holds the lock; `info.json` inside says who
(owner, control host, pid, command, start time, TTL, token). A lock is stale when its TTL passed,
or when it was taken from this same control machine by a process that no longer runs (ofactl was
killed); a stale lock is broken and taken over, and the takeover is reported.

    lock = FleetLock.acquire(transport, command="deploy", ttl_s=3600)
    ...
    lock.release()
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from ofactl import commands
from ofactl.commands import q
from ofactl.errors import OperationError
from ofactl.transport import Transport

LOCK_DIR = "/var/lib/ofactl/fleet.lock"
AUDIT_LOG = "/var/lib/ofactl/audit.jsonl"
INFO = LOCK_DIR + "/info.json"
DEFAULT_TTL_S = 3600
_TIMEOUT = 20.0


def lock_host(inv: Any) -> Any:
    """The host that keeps the lock: the first LB, else the first node."""
    lbs = list(getattr(inv, "lbs", []) or [])
    nodes = list(getattr(inv, "nodes", []) or [])
    if not lbs and not nodes:
        raise OperationError("inventory: no hosts to keep the fleet lock on")
    return lbs[0] if lbs else nodes[0]


@dataclass(frozen=True)
class LockInfo:
    """Who holds the lock."""

    owner: str
    control_host: str
    pid: int
    command: str
    started: float
    ttl_s: int
    token: str
    fleet: str = ""

    def age_s(self, now: float | None = None) -> float:
        """Seconds since it was taken."""
        return (now or time.time()) - self.started

    def stale_reason(self, now: float | None = None) -> str:
        """Why this lock is stale, or '' when it is live."""
        if self.age_s(now) > self.ttl_s:
            return f"older than its TTL ({self.ttl_s} s)"
        if self.control_host == socket.gethostname() and not _pid_alive(self.pid):
            return f"its process {self.pid} on {self.control_host} is gone"
        return ""

    def describe(self) -> str:
        """One line for humans."""
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started))
        return (f"{self.owner} on {self.control_host} (pid {self.pid}) since {when}, "
                f"running '{self.command}'")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def parse_info(raw: bytes | str | None) -> LockInfo | None:
    """info.json -> LockInfo (None when absent or unreadable)."""
    if not raw:
        return None
    try:
        d = json.loads(raw)
        return LockInfo(str(d["owner"]), str(d["control_host"]), int(d["pid"]),
                        str(d["command"]), float(d["started"]), int(d["ttl_s"]),
                        str(d["token"]), str(d.get("fleet", "")))
    except (ValueError, KeyError, TypeError):
        return None


def acquire_cmd(info_json: str) -> str:
    """Create the lock dir atomically and write info; prints 'acquired' or 'held' + info."""
    parent = LOCK_DIR.rsplit("/", 1)[0]
    return (f"mkdir -p {q(parent)} && if mkdir {q(LOCK_DIR)} 2>/dev/null; then "
            f"printf '%s' {q(info_json)} > {q(INFO)} && echo acquired; "
            f"else echo held; cat {q(INFO)} 2>/dev/null; fi")


def release_cmd(token: str | None) -> str:
    """Remove the lock (only when it still carries token, unless token is None)."""
    if token is None:
        return shlex_join(commands.rm_rf(LOCK_DIR))
    return f"if grep -qF {q(token)} {q(INFO)} 2>/dev/null; then rm -rf -- {q(LOCK_DIR)}; fi"


def shlex_join(argv: tuple[str, ...]) -> str:
    """argv -> shell text."""
    import shlex

    return shlex.join(argv)


def read_lock(t: Transport) -> LockInfo | None:
    """The current holder, or None."""
    res = t.run(["cat", INFO], timeout=_TIMEOUT, readonly=True, check=False)
    if res.ok:
        return parse_info(res.out)
    # the dir may exist without info (killed between mkdir and write)
    d = t.run(["test", "-d", LOCK_DIR], timeout=_TIMEOUT, readonly=True, check=False)
    if d.ok:
        return LockInfo("unknown", "unknown", 0, "unknown", 0.0, 0, "")
    return None


class FleetLock:
    """A held lock; release() gives it back (only if it is still ours)."""

    def __init__(self, t: Transport, info: LockInfo, broke: LockInfo | None = None) -> None:
        self.t = t
        self.info = info
        self.broke = broke  # the stale lock taken over, if any

    @classmethod
    def acquire(cls, t: Transport, *, command: str, ttl_s: int = DEFAULT_TTL_S,
                fleet: str = "") -> FleetLock:
        """Take the lock or raise OperationError naming the holder."""
        info = LockInfo(owner=getpass.getuser(), control_host=socket.gethostname(),
                        pid=os.getpid(), command=command, started=time.time(), ttl_s=ttl_s,
                        token=uuid.uuid4().hex, fleet=fleet)
        body = json.dumps(asdict(info), sort_keys=True)
        broke = None
        for _ in range(2):  # second round only after breaking a stale lock
            res = t.run(acquire_cmd(body), timeout=_TIMEOUT, check=True)
            if t.dry_run or res.stdout.startswith("acquired"):
                return cls(t, info, broke)
            held = parse_info(res.stdout.partition("\n")[2]) or LockInfo(
                "unknown", "unknown", 0, "unknown", 0.0, 0, "")
            reason = held.stale_reason()
            if not reason:
                raise OperationError(
                    f"{t.host}: the fleet is locked by {held.describe()}",
                    hint="wait for it to finish, or if it is dead: ofactl lock release")
            t.run(release_cmd(held.token or None), timeout=_TIMEOUT)
            broke = held
        raise OperationError(f"{t.host}: could not take the fleet lock (it keeps being taken)",
                             hint="ofactl lock status")

    def release(self) -> None:
        """Give the lock back (never raises: a failed release leaves a stale lock)."""
        try:
            self.t.run(release_cmd(self.info.token), timeout=_TIMEOUT)
        except OperationError:
            pass


def force_release(t: Transport) -> LockInfo | None:
    """Remove whatever lock is there; return what it was."""
    held = read_lock(t)
    if held is not None:
        t.run(release_cmd(None), timeout=_TIMEOUT)
    return held


def audit_cmd(entry: dict[str, Any]) -> str:
    """Append one JSON line to the fleet's audit log on the lock host."""
    line = json.dumps(entry, sort_keys=True, default=str)
    parent = AUDIT_LOG.rsplit("/", 1)[0]
    return f"mkdir -p {q(parent)} && printf '%s\\n' {q(line)} >> {q(AUDIT_LOG)}"


def audit(t: Transport, entry: dict[str, Any]) -> None:
    """Best effort: a failed audit write never fails the operation it records."""
    base = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "owner": getpass.getuser(), "control_host": socket.gethostname()}
    try:
        t.run(audit_cmd({**base, **entry}), timeout=_TIMEOUT)
    except OperationError:
        pass


def read_audit(t: Transport, last: int = 20) -> list[dict[str, Any]]:
    """The last entries of the audit log (unparseable lines skipped)."""
    res = t.run(["tail", "-n", str(last), AUDIT_LOG], timeout=_TIMEOUT, readonly=True,
                check=False)
    out = []
    for line in res.stdout.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
