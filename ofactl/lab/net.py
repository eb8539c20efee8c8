"""The lab network: one bridge, one network namespace per host, joined by a veth pair."""

from __future__ import annotations

from pathlib import Path

from ofactl.lab.plan import BRIDGE, BRIDGE_ADDR, NETNS_PREFIX, PREFIX_LEN, VETH_PREFIX, LabHost
from ofactl.lab.system import run

NETNS_DIR = Path("/run/netns")


def link_exists(name: str) -> bool:
    """True when a network link called `name` exists in the root namespace."""
    return Path("/sys/class/net", name).exists()


def netns_exists(name: str) -> bool:
    """True when the named network namespace exists."""
    return (NETNS_DIR / name).exists()


def _no_ipv6(link: str) -> None:
    """Lab links carry only 10.213.0.0/24: no IPv6 link-local addresses on them."""
    knob = Path("/proc/sys/net/ipv6/conf", link, "disable_ipv6")
    if knob.exists():
        knob.write_text("1")


def create_bridge() -> None:
    """The bridge with the control side's address; no forwarding delay, no STP."""
    if not link_exists(BRIDGE):
        run(["ip", "link", "add", BRIDGE, "type", "bridge", "forward_delay", "0", "stp_state",
             "0"], what="bridge")
    _no_ipv6(BRIDGE)
    run(["ip", "addr", "replace", f"{BRIDGE_ADDR}/{PREFIX_LEN}", "dev", BRIDGE], what="bridge")
    run(["ip", "link", "set", BRIDGE, "up"], what="bridge")


def create_host_net(host: LabHost) -> None:
    """A namespace with `eth0` (the host's address, no default route) wired to the bridge."""
    ns = host.netns
    if not netns_exists(ns):
        run(["ip", "netns", "add", ns], what=host.name)
    if Path("/proc/sys/net/ipv6").exists():
        # eth0 is created after this: it inherits "default" (lo keeps ::1, loopback is fine)
        run(["nsenter", f"--net={NETNS_DIR / ns}", "sysctl", "-q", "-w",
             "net.ipv6.conf.default.disable_ipv6=1"], what=host.name)
    if not link_exists(host.veth):
        run(["ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns",
             ns], what=host.name)
    _no_ipv6(host.veth)
    run(["ip", "link", "set", host.veth, "master", BRIDGE, "up"], what=host.name)
    batch = (
        "link set lo up\n"
        f"addr replace {host.address}/{PREFIX_LEN} dev eth0\n"
        "link set eth0 up\n"
    )
    run(["ip", "-n", ns, "-batch", "-"], input=batch, what=host.name)


def set_link(host: LabHost, up: bool) -> None:
    """Cut (or restore) a host's link: its bridge-side veth goes down (carrier lost inside)."""
    run(["ip", "link", "set", host.veth, "up" if up else "down"], what=host.name)


def link_is_up(host: LabHost) -> bool | None:
    """The administrative state of the host's bridge-side veth (None when it does not exist)."""
    try:
        flags = int(Path("/sys/class/net", host.veth, "flags").read_text(), 16)
    except OSError:
        return None
    return bool(flags & 0x1)


def lab_netns() -> list[str]:
    """Every lab network namespace on the machine (ours by prefix)."""
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(NETNS_PREFIX))


def lab_links() -> list[str]:
    """The bridge and every lab veth left in the root namespace."""
    out = []
    for p in Path("/sys/class/net").iterdir():
        if p.name == BRIDGE or p.name.startswith(VETH_PREFIX):
            out.append(p.name)
    return sorted(out)


def remove_all() -> list[str]:
    """Delete every lab namespace, veth and the bridge; return what is still there."""
    for ns in lab_netns():
        run(["ip", "netns", "del", ns], timeout=10, check=False)
    for link in lab_links():
        if link != BRIDGE:
            run(["ip", "link", "del", link], timeout=10, check=False)
    if link_exists(BRIDGE):
        run(["ip", "link", "del", BRIDGE], timeout=10, check=False)
    return lab_netns() + lab_links()
