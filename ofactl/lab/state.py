"""The lab's runtime record (/run/ofactl-lab/<name>/state.json): what was created, by whom."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ofactl.errors import LabError
from ofactl.lab.plan import STATE_ROOT, LabHost, LabPlan

STATE_FILE = "state.json"


@dataclass
class HostRecord:
    """A running host: its nspawn process (pid + start time guard against PID reuse)."""

    pid: int = 0
    starttime: int | None = None
    host_key: str = ""


@dataclass
class LabState:
    """The persisted state of one lab."""

    plan: LabPlan
    phase: str = "starting"  # starting | running | stopping
    created_at: float = 0.0
    ready_s: float | None = None
    hosts: dict[str, HostRecord] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Serialisable form."""
        p = self.plan
        return {
            "format": 1,
            "name": p.name,
            "phase": self.phase,
            "created_at": self.created_at,
            "ready_s": self.ready_s,
            "state_dir": str(p.state_dir),
            "control_dir": str(p.control_dir),
            "runtime": p.runtime,
            "model_dir": p.model_dir,
            "hosts": [h.to_dict() for h in p.hosts],
            "records": {k: vars(v) for k, v in self.hosts.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabState:
        """Inverse of to_json."""
        plan = LabPlan(
            name=data["name"],
            hosts=tuple(LabHost(**h) for h in data["hosts"]),
            state_dir=Path(data["state_dir"]),
            control_dir=Path(data["control_dir"]),
            runtime=data["runtime"],
            model_dir=data.get("model_dir"),
        )
        return cls(
            plan=plan,
            phase=data.get("phase", "starting"),
            created_at=data.get("created_at", 0.0),
            ready_s=data.get("ready_s"),
            hosts={k: HostRecord(**v) for k, v in data.get("records", {}).items()},
        )


def save(state: LabState) -> None:
    """Write the state atomically."""
    d = state.plan.state_dir
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state.to_json(), indent=2) + "\n")
    os.replace(tmp, d / STATE_FILE)


def load(name: str, state_root: Path = STATE_ROOT) -> LabState | None:
    """The state of lab `name`, or None when there is none."""
    f = state_root / name / STATE_FILE
    if not f.exists():
        return None
    try:
        return LabState.from_json(json.loads(f.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LabError(f"{f}: unreadable lab state ({exc})",
                       hint=f"ofactl lab down --name {name} removes the lab anyway") from exc


def known_labs(state_root: Path = STATE_ROOT) -> list[str]:
    """Names of the labs with a state directory on this machine."""
    if not state_root.is_dir():
        return []
    return sorted(p.name for p in state_root.iterdir() if p.is_dir() and not p.name.startswith("."))
