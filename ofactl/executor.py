"""Run a function per host in parallel (with a cap) and collect per-host results with timings.

    results = run_parallel(hosts, fn, parallel=8, on_event=cb)

`fn(host)` returns a `HostOutcome` (or any value, kept in `.data`); an exception becomes a
failed `HostResult` (its message kept), never a crash of the whole run. `on_event(host_name,
event, detail)` is called from worker threads with event in {"start", "done", "failed"} and
by steps through `Progress.step()`.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ofactl.errors import OfactlError

H = TypeVar("H")
EventCb = Callable[[str, str, str], None]


@dataclass
class HostOutcome:
    """What a step function reports: the changes it made (empty = unchanged) plus notes."""

    changes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def change(self, what: str) -> None:
        """Record one change (a short phrase: 'release 2026...-ab12cd34 uploaded')."""
        self.changes.append(what)

    def note(self, what: str) -> None:
        """Record an unchanged check worth showing ('model unchanged')."""
        self.notes.append(what)


@dataclass
class HostResult:
    """The per-host line of a recap."""

    host: str
    ok: bool
    changes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str = ""
    hint: str = ""
    duration_s: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False

    @property
    def status(self) -> str:
        """failed | changed | unchanged | skipped."""
        if self.skipped:
            return "skipped"
        if not self.ok:
            return "failed"
        return "changed" if self.changes else "unchanged"

    def to_json(self) -> dict[str, Any]:
        """JSON form for --json output."""
        return {"host": self.host, "status": self.status, "ok": self.ok,
                "changes": self.changes, "notes": self.notes, "error": self.error or None,
                "hint": self.hint or None, "duration_s": round(self.duration_s, 3),
                **({"data": self.data} if self.data else {})}


def _name(h: Any) -> str:
    return str(getattr(h, "name", h))


def run_one(host: H, fn: Callable[[H], Any], on_event: EventCb | None = None) -> HostResult:
    """Run fn(host), timing it and turning exceptions into a failed HostResult."""
    name = _name(host)
    if on_event:
        on_event(name, "start", "")
    t0 = time.monotonic()
    try:
        out = fn(host)
    except OfactlError as e:
        r = HostResult(name, False, error=e.message, hint=e.hint or "",
                       duration_s=time.monotonic() - t0)
        oc = getattr(e, "outcome", None)
        if isinstance(oc, HostOutcome):
            r.changes, r.data = list(oc.changes), dict(oc.data)
    except Exception as e:  # noqa: BLE001 - one host's bug must not sink the others
        r = HostResult(name, False, error=f"{name}: {type(e).__name__}: {e}",
                       hint="rerun with --verbose; this is a bug in ofactl",
                       duration_s=time.monotonic() - t0,
                       data={"traceback": traceback.format_exc()})
    else:
        r = HostResult(name, True, duration_s=time.monotonic() - t0)
        if isinstance(out, HostOutcome):
            r.changes, r.notes, r.data = out.changes, out.notes, out.data
        elif out is not None:
            r.data = {"value": out}
    if on_event:
        on_event(name, "failed" if not r.ok else "done", r.error or r.status)
    return r


def run_parallel(hosts: Iterable[H], fn: Callable[[H], Any], parallel: int = 8,
                 on_event: EventCb | None = None) -> list[HostResult]:
    """fn on every host, at most `parallel` at a time; results in the hosts' order."""
    items: Sequence[H] = list(hosts)
    if not items:
        return []
    workers = max(1, min(parallel, len(items)))
    if workers == 1:
        return [run_one(h, fn, on_event) for h in items]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ofactl") as pool:
        futs = [pool.submit(run_one, h, fn, on_event) for h in items]
        return [f.result() for f in futs]


class Progress:
    """Thread-safe step reporting for one host, forwarded to an on_event callback."""

    def __init__(self, host: str, on_event: EventCb | None) -> None:
        self.host = host
        self._cb = on_event
        self._lock = threading.Lock()

    def step(self, detail: str) -> None:
        """Tell the UI what this host is doing now."""
        if self._cb:
            with self._lock:
                self._cb(self.host, "step", detail)
