"""The shape of a lab: host names, addresses, sites and paths (pure, no I/O)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ofactl.errors import UsageError

BRIDGE = "ofalab0"
BRIDGE_ADDR = "10.213.0.1"
PREFIX_LEN = 24
SUBNET = "10.213.0.0/24"
VIP = "10.213.0.100/24"
# where every host sees the machine's agent runtime venv (bound read-only): a fixed path outside
# /tmp, because the agent unit runs with PrivateTmp and a checkout may live under /tmp (as in CI)
HOST_RUNTIME = "/opt/ofa-lab/runtime"
LB_BASE = 10  # lb1 = 10.213.0.10
NODE_BASE = 20  # node1 = 10.213.0.20
MAX_NODES = 60  # node60 = 10.213.0.79, well below the VIP
MAX_LBS = 2
NETNS_PREFIX = "ofalab-"
VETH_PREFIX = "olv-"
CGROUP_ROOT = "ofactl-lab"
STATE_ROOT = Path("/run/ofactl-lab")
DEFAULT_NAME = "ofalab"
PRIVATE_SITE = "onprem"
PUBLIC_SITE = "cloud"
PRIVATE_WEIGHT = 3
PUBLIC_WEIGHT = 2
LB_PRIORITIES = (150, 100)
VIRTUAL_ROUTER_ID = 51

_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,23}$")


@dataclass(frozen=True)
class LabHost:
    """One host of the lab: a network namespace plus an nspawn container."""

    name: str
    role: str  # "lb" | "node"
    address: str
    site: str
    cloud: str
    weight: int = 0  # nodes only
    priority: int = 0  # lbs only

    @property
    def netns(self) -> str:
        """The network namespace name (/run/netns/<netns>)."""
        return NETNS_PREFIX + self.name

    @property
    def veth(self) -> str:
        """The root-namespace end of the host's veth pair (joined to the bridge)."""
        return VETH_PREFIX + self.name

    def to_dict(self) -> dict[str, object]:
        """JSON-friendly form."""
        return asdict(self)


@dataclass(frozen=True)
class LabPlan:
    """Everything `lab up` will create, decided before anything is touched."""

    name: str
    hosts: tuple[LabHost, ...]
    state_dir: Path
    control_dir: Path
    runtime: str
    model_dir: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def lbs(self) -> tuple[LabHost, ...]:
        """Load-balancer hosts, in order."""
        return tuple(h for h in self.hosts if h.role == "lb")

    @property
    def nodes(self) -> tuple[LabHost, ...]:
        """Model-serving hosts, in order."""
        return tuple(h for h in self.hosts if h.role == "node")

    def host(self, name: str) -> LabHost:
        """The host called `name` (UsageError with the known names otherwise)."""
        for h in self.hosts:
            if h.name == name:
                return h
        known = ", ".join(h.name for h in self.hosts)
        raise UsageError(f"lab {self.name}: no host named {name!r}", hint=f"hosts: {known}")

    @property
    def inventory_path(self) -> Path:
        """The lab inventory YAML."""
        return self.control_dir / "inventory.yaml"

    @property
    def key_file(self) -> Path:
        """The lab's private SSH key (ed25519)."""
        return self.control_dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        """known_hosts with every lab host's fresh host key."""
        return self.control_dir / "known_hosts"

    def host_dir(self, host: str) -> Path:
        """Per-host runtime directory (upper/work/root of the overlay, console log)."""
        return self.state_dir / "hosts" / host


def check_name(name: str) -> str:
    """Validate a lab name (used in paths, cgroup names and the fleet name)."""
    if not _NAME_RE.match(name):
        raise UsageError(
            f"--name: must be lowercase letters, digits or '-', starting with a letter, "
            f"at most 24 characters, got {name!r}",
            hint=f"e.g. --name {DEFAULT_NAME}",
        )
    return name


def make_hosts(nodes: int, lbs: int) -> tuple[LabHost, ...]:
    """LBs then nodes; nodes split between the private site (first half) and the public one."""
    if not 1 <= nodes <= MAX_NODES:
        raise UsageError(f"--nodes: must be between 1 and {MAX_NODES}, got {nodes}")
    if not 0 <= lbs <= MAX_LBS:
        raise UsageError(f"--lbs: must be 0, 1 or 2, got {lbs}")
    hosts: list[LabHost] = []
    for i in range(lbs):
        hosts.append(
            LabHost(
                name=f"lb{i + 1}",
                role="lb",
                address=f"10.213.0.{LB_BASE + i}",
                site=PRIVATE_SITE,
                cloud="private",
                priority=LB_PRIORITIES[i],
            )
        )
    n_private = (nodes + 1) // 2
    for i in range(nodes):
        private = i < n_private
        hosts.append(
            LabHost(
                name=f"node{i + 1}",
                role="node",
                address=f"10.213.0.{NODE_BASE + i}",
                site=PRIVATE_SITE if private else PUBLIC_SITE,
                cloud="private" if private else "public",
                weight=PRIVATE_WEIGHT if private else PUBLIC_WEIGHT,
            )
        )
    return tuple(hosts)


def default_control_root() -> Path:
    """~/.ofactl/lab (inventory, key and known_hosts live in ~/.ofactl/lab/<name>/)."""
    return Path.home() / ".ofactl" / "lab"


def make_plan(
    name: str,
    nodes: int,
    lbs: int,
    runtime: str,
    model_dir: str | None = None,
    state_root: Path = STATE_ROOT,
    control_root: Path | None = None,
) -> LabPlan:
    """Decide the lab's shape and paths."""
    check_name(name)
    return LabPlan(
        name=name,
        hosts=make_hosts(nodes, lbs),
        state_dir=state_root / name,
        control_dir=(control_root or default_control_root()) / name,
        runtime=runtime,
        model_dir=model_dir,
    )
