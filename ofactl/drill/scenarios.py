"""Drill scenarios: a pure planner from scenario name + fleet facts to fault/restore commands."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ofactl.errors import UsageError

SCENARIOS = ("node", "lb", "cloud")
NODE_FAULTS = ("stop", "kill")
LB_FAULTS = ("nginx", "keepalived")
AGENT_UNIT = "ofa-agent"

Argv = tuple[str, ...]


@dataclass(frozen=True)
class HostCommand:
    """One command on one host."""

    host: str
    argv: Argv


@dataclass(frozen=True)
class Check:
    """A health check that must pass before the scenario counts as recovered."""

    host: str
    argv: Argv
    what: str


@dataclass(frozen=True)
class FaultPlan:
    """What a scenario breaks, how it puts it back, and how to tell it is back."""

    scenario: str
    description: str
    targets: tuple[str, ...]
    inject: tuple[HostCommand, ...]
    restore: tuple[HostCommand, ...]
    checks: tuple[Check, ...]
    expects_vip_move: bool = False

    def to_dict(self) -> dict[str, object]:
        """JSON-friendly form (for --dry-run)."""
        return {
            "scenario": self.scenario,
            "description": self.description,
            "targets": list(self.targets),
            "inject": [{"host": c.host, "argv": list(c.argv)} for c in self.inject],
            "restore": [{"host": c.host, "argv": list(c.argv)} for c in self.restore],
            "checks": [{"host": c.host, "argv": list(c.argv), "what": c.what}
                       for c in self.checks],
            "expects_vip_move": self.expects_vip_move,
        }


def ready_check(node: str, port: int) -> Check:
    """The agent on `node` answers ready on its own port."""
    return Check(node, ("curl", "-fsS", "--max-time", "2",
                        f"http://127.0.0.1:{port}/v2/health/ready"), "agent ready")


def active_check(host: str, unit: str) -> Check:
    """`unit` is active on `host`."""
    return Check(host, ("systemctl", "is-active", "--quiet", unit), f"{unit} active")


def expand(scenario: str) -> tuple[str, ...]:
    """'all' -> every scenario; otherwise the scenario itself (validated)."""
    if scenario == "all":
        return SCENARIOS
    if scenario not in SCENARIOS:
        raise UsageError(
            f"--scenario: expected one of node, lb, cloud, all, got {scenario!r}"
        )
    return (scenario,)


def plan_fault(
    scenario: str,
    *,
    nodes: Mapping[str, str],
    vip_holder: str | None,
    agent_port: int = 8000,
    target: str | None = None,
    node_fault: str = "stop",
    lb_fault: str = "nginx",
    cloud: str = "private",
) -> FaultPlan:
    """Plan one scenario. `nodes` maps node name -> cloud (inventory order)."""
    if scenario == "node":
        if node_fault not in NODE_FAULTS:
            raise UsageError(f"--node-fault: expected stop or kill, got {node_fault!r}")
        name = target or next(iter(nodes), None)
        if name is None or name not in nodes:
            raise UsageError(f"--target: {name!r} is not a node of the inventory")
        inject: Argv = (
            ("systemctl", "stop", AGENT_UNIT) if node_fault == "stop"
            else ("systemctl", "kill", "--signal=SIGKILL", AGENT_UNIT)
        )
        return FaultPlan(
            scenario="node",
            description=f"agent {'stopped' if node_fault == 'stop' else 'killed'} on {name}",
            targets=(name,),
            inject=(HostCommand(name, inject),),
            restore=(HostCommand(name, ("systemctl", "start", AGENT_UNIT)),),
            checks=(ready_check(name, agent_port),),
        )
    if scenario == "lb":
        if lb_fault not in LB_FAULTS:
            raise UsageError(f"--lb-fault: expected nginx or keepalived, got {lb_fault!r}")
        holder = target or vip_holder
        if holder is None:
            raise UsageError(
                "lb scenario: no load balancer holds the VIP right now",
                hint="ofactl status, then start keepalived on the load balancers",
            )
        checks = [active_check(holder, lb_fault)]
        if lb_fault == "nginx":
            checks.append(Check(holder, ("curl", "-fsS", "--max-time", "1",
                                         "http://127.0.0.1:81/ofactl-health"), "nginx health"))
        return FaultPlan(
            scenario="lb",
            description=f"{lb_fault} stopped on the VIP holder {holder}",
            targets=(holder,),
            inject=(HostCommand(holder, ("systemctl", "stop", lb_fault)),),
            restore=(HostCommand(holder, ("systemctl", "start", lb_fault)),),
            checks=tuple(checks),
            expects_vip_move=True,
        )
    if scenario == "cloud":
        members = tuple(n for n, c in nodes.items() if c == cloud)
        if not members:
            raise UsageError(f"--cloud: no node in cloud {cloud!r}")
        if len(members) == len(nodes):
            raise UsageError(
                f"cloud scenario: every node is in cloud {cloud!r}, nothing would serve",
                hint="the cloud scenario needs nodes in at least two clouds",
            )
        return FaultPlan(
            scenario="cloud",
            description=f"every node of cloud {cloud} down ({', '.join(members)})",
            targets=members,
            inject=tuple(HostCommand(n, ("systemctl", "stop", AGENT_UNIT)) for n in members),
            restore=tuple(HostCommand(n, ("systemctl", "start", AGENT_UNIT)) for n in members),
            checks=tuple(ready_check(n, agent_port) for n in members),
        )
    raise UsageError(f"--scenario: expected one of node, lb, cloud, all, got {scenario!r}")


def parse_vip_holders(outputs: Mapping[str, str | None], vip: str) -> tuple[
        tuple[str, ...], tuple[str, ...]]:
    """From `ip -o -4 addr show` output per LB: (holders of `vip`, LBs that gave no answer)."""
    address = vip.split("/")[0]
    holders: list[str] = []
    unknown: list[str] = []
    for host, out in outputs.items():
        if out is None:
            unknown.append(host)
            continue
        for line in out.splitlines():
            words = line.split()
            if "inet" in words:
                idx = words.index("inet")
                if idx + 1 < len(words) and words[idx + 1].split("/")[0] == address:
                    holders.append(host)
                    break
    return tuple(holders), tuple(unknown)


def vip_probe_argv() -> Argv:
    """The command whose output parse_vip_holders reads."""
    return ("ip", "-o", "-4", "addr", "show")


def default_phases(duration: float) -> tuple[float, float]:
    """Fault at 25 % of the load, restore at 60 %: a baseline, a fault window, an aftermath."""
    return round(duration * 0.25, 3), round(duration * 0.6, 3)

