"""`ofactl status`: one concurrent look at the whole fleet and a verdict.

Per node: SSH reachable + unit state + release/model links (one SSH probe), and over HTTP from
this machine: ready, /v1/info (device, model digest, release, state), /metrics (p50/p99 from the
request-duration histogram, in-flight). Per LB: nginx/keepalived active, config drift against
what ofactl renders (sha256), and VIP holder from `ip -o -4 addr show`. All probes run at once
(threads for SSH, one asyncio loop for HTTP), so 50 nodes take about as long as one.

Verdict: 0 healthy, 1 degraded (anything flagged), 2 down (a VIP with no holder, or no node
ready). `assess()` is pure and tested on fixed inputs.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ofactl import commands, facts
from ofactl.errors import OfactlError
from ofactl.transport import Transport

HEALTHY, DEGRADED, DOWN = 0, 1, 2
VERDICT_NAMES = {HEALTHY: "healthy", DEGRADED: "degraded", DOWN: "down"}
AGENT_UNIT = "ofa-agent"


@dataclass
class NodeStatus:
    """What status found on one node."""

    name: str
    address: str = ""
    cloud: str = ""
    ssh: bool | None = None  # None = not probed (--no-ssh)
    ssh_error: str = ""
    unit: str = ""
    ready: bool = False
    ready_reason: str = ""
    device: str = ""
    expected_device: str = ""
    release: str = ""
    model_digest: str = ""
    model_revision: str = ""
    state: str = ""
    p50_s: float | None = None
    p99_s: float | None = None
    inflight: float | None = None
    gpu_used_bytes: float | None = None
    gpu_total_bytes: float | None = None
    flags: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """--json form."""
        return dict(self.__dict__)


@dataclass
class LBStatus:
    """What status found on one load balancer."""

    name: str
    site: str = ""
    vip: str = ""
    ssh: bool = False
    ssh_error: str = ""
    nginx: str = ""
    keepalived: str = ""
    vrrp: str = ""  # MASTER (holds the VIP) | BACKUP | -
    holds_vip: bool = False
    drift: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """--json form."""
        return dict(self.__dict__)


@dataclass
class FleetStatus:
    """The whole picture plus the verdict."""

    nodes: list[NodeStatus]
    lbs: list[LBStatus]
    vips: dict[str, list[str]]  # vip -> holders
    verdict: int = HEALTHY
    reasons: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    expected_digest: str = ""

    def to_json(self) -> dict[str, Any]:
        """--json form."""
        return {"verdict": VERDICT_NAMES[self.verdict], "exit_code": self.verdict,
                "reasons": self.reasons, "duration_s": round(self.duration_s, 3),
                "expected_digest": self.expected_digest or None,
                "vips": self.vips, "nodes": [n.to_json() for n in self.nodes],
                "lbs": [b.to_json() for b in self.lbs]}


# ------------------------------------------------------------------------------ probes


def node_ssh_probe_cmd(base_dir: str) -> str:
    """Unit state and release/model link targets in one round trip."""
    b = commands.q(base_dir)
    return (f"systemctl is-active {AGENT_UNIT} 2>/dev/null; echo; "
            f"readlink {b}/current 2>/dev/null; echo; readlink {b}/model 2>/dev/null; echo")


def parse_node_ssh(text: str) -> tuple[str, str, str]:
    """-> (unit state, current target, model target)."""
    parts = [p.strip() for p in text.split("\n\n")]
    parts += [""] * 3
    unit = parts[0].splitlines()[0] if parts[0] else ""
    return unit, parts[1], parts[2]


def lb_ssh_probe_cmd(files: Sequence[str]) -> str:
    """nginx/keepalived state, sha256 of managed files, addresses."""
    fl = " ".join(commands.q(f) for f in files)
    return ("echo '@@ofactl units'; for u in nginx keepalived; do "
            "echo \"$u $(systemctl is-active $u 2>/dev/null) x\"; done; "
            f"echo '@@ofactl files'; sha256sum -- {fl} 2>/dev/null || true; "
            "echo '@@ofactl addr'; ip -o -4 addr show 2>/dev/null; echo '@@ofactl end'")


async def http_get(host: str, port: int, path: str, timeout: float) -> tuple[int, str]:
    """A minimal HTTP/1.1 GET (Connection: close) -> (status, body); (0, error name) when
    nothing usable answered within timeout. Plain asyncio streams: at 200 nodes httpx's
    per-request CPU cost dominated the status time on a 2-CPU control machine."""

    async def go() -> tuple[int, str]:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            hh = f"[{host}]" if ":" in host else host
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {hh}:{port}\r\n"
                         "Connection: close\r\nAccept: */*\r\n\r\n".encode())
            data = await reader.read(8 << 20)
            while chunk := await reader.read(8 << 20):
                data += chunk
        finally:
            writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        code = int(lines[0].split()[1])
        if any(h.lower().replace(b" ", b"") == b"transfer-encoding:chunked" for h in lines[1:]):
            out, rest = b"", body
            while rest:
                size, _, rest = rest.partition(b"\r\n")
                n = int(size.split(b";")[0] or b"0", 16)
                if n == 0:
                    break
                out, rest = out + rest[:n], rest[n + 2:]
            body = out
        return code, body.decode("utf-8", "replace")

    try:
        return await asyncio.wait_for(go(), timeout)
    except Exception as e:  # noqa: BLE001 - any failure = no answer
        return 0, type(e).__name__


async def _http_probe(address: str, port: int, timeout: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    (rc, rb), (mc, mb) = await asyncio.gather(http_get(address, port, "/v2/health/ready",
                                                       timeout),
                                              http_get(address, port, "/metrics", timeout))
    out["ready"] = (rc, rb)
    m = facts.parse_agent_metrics(mb) if mc == 200 else None
    out["metrics"] = m
    if m is not None and m.model_info.get("digest"):
        # model_info{model_id,revision,digest,device,dtype,release} carries what /v1/info
        # would: one request fewer per node
        mi = m.model_info
        out["info"] = {"device": mi.get("device", ""), "release": mi.get("release", ""),
                       "model": {"digest": mi.get("digest", ""),
                                 "revision": mi.get("revision", "")}}
    else:
        ic, ib = await http_get(address, port, "/v1/info", timeout)
        out["info"] = facts.parse_info(ib) if ic == 200 else {}
    return out


def http_probe_all(targets: Sequence[tuple[str, str, int]], timeout: float = 3.0,
                   concurrency: int = 256) -> dict[str, dict[str, Any]]:
    """GET ready + metrics (+ info when metrics lack model_info) of every (name, address,
    port), all at once (at most `concurrency` nodes in flight)."""

    async def main() -> dict[str, dict[str, Any]]:
        sem = asyncio.Semaphore(concurrency)

        async def one(name: str, address: str, port: int) -> tuple[str, dict[str, Any]]:
            async with sem:
                return name, await _http_probe(address, port, timeout)

        pairs = await asyncio.gather(*(one(n, a, p) for n, a, p in targets))
        return dict(pairs)

    return asyncio.run(main())


def _clean(v: Any) -> str:
    """A label value, with the 'None' a not-yet-loaded agent exports treated as empty."""
    return "" if v is None or str(v) in ("None", "none", "") else str(v)


def probe_node_ssh(t: Transport, node: Any, ns: NodeStatus) -> None:
    """Fill ns from one SSH probe (errors are recorded, not raised)."""
    try:
        res = t.run(node_ssh_probe_cmd(node.agent.base_dir), timeout=10, readonly=True,
                    check=False)
        ns.ssh = True
        ns.unit, cur, _model = parse_node_ssh(res.stdout)
        if not ns.release and cur:
            ns.release = cur.rsplit("/", 1)[-1]
    except OfactlError as e:
        ns.ssh, ns.ssh_error = False, e.message
    finally:
        t.close()


def expected_lb_hashes(inv: Any, lb: Any, render_host: Callable[..., list[Any]] | None
                       ) -> dict[str, str]:
    """dest -> sha256 of what ofactl would render (secret files skipped when unresolvable)."""
    fn: Callable[..., list[Any]]
    if render_host is not None:
        fn = render_host
    else:
        from ofactl.render import render_host as fn
    try:
        files = fn(inv, lb.name, secrets=True)
        skip_secret = False
    except OfactlError:
        files = fn(inv, lb.name, secrets=False)
        skip_secret = True
    out = {}
    for rf in files:
        if skip_secret and getattr(rf, "secret", False):
            continue
        c = rf.content if isinstance(rf.content, bytes) else str(rf.content).encode()
        out[rf.dest] = getattr(rf, "sha256", None) or hashlib.sha256(c).hexdigest()
    return out


def probe_lb(t: Transport, inv: Any, lb: Any, render_host: Callable[..., list[Any]] | None
             ) -> LBStatus:
    """One SSH probe of an LB: services, config drift, VIP."""
    group = lb.group
    st = LBStatus(lb.name, site=lb.site, vip=str(group.vip))
    try:
        want = expected_lb_hashes(inv, lb, render_host)
        res = t.run(lb_ssh_probe_cmd(sorted(want)), timeout=10, readonly=True, check=False)
        st.ssh = True
        text = res.stdout
        f = facts.parse_host_facts(text)
        st.nginx = f.units.get("nginx", ("?", ""))[0]
        st.keepalived = f.units.get("keepalived", ("?", ""))[0]
        addr = text.split("@@ofactl addr", 1)[-1].split("@@ofactl end", 1)[0]
        st.holds_vip = facts.holds_vip(addr, str(group.vip))
        st.vrrp = "MASTER" if st.holds_vip else ("BACKUP" if st.keepalived == "active" else "-")
        st.drift = [dest for dest, sha in sorted(want.items())
                    if f.file_sha256.get(dest) != sha]
    except OfactlError as e:
        st.ssh_error = e.message
    finally:
        t.close()
    return st


# ------------------------------------------------------------------------------ verdict


def assess(nodes: list[NodeStatus], lbs: list[LBStatus], vip_groups: dict[str, list[str]],
           expected_digest: str = "") -> tuple[int, list[str], dict[str, list[str]]]:
    """Flag odd nodes/LBs in place and return (verdict, reasons, vip -> holders).

    vip_groups maps each VIP to the names of its LB members."""
    reasons: list[str] = []
    digests = Counter(n.model_digest for n in nodes if n.model_digest)
    releases = Counter(n.release for n in nodes if n.release)
    common_digest = expected_digest or (digests.most_common(1)[0][0] if digests else "")
    common_release = releases.most_common(1)[0][0] if releases else ""
    for n in nodes:
        if n.ssh is False:
            n.flags.append("ssh unreachable")
        if n.ssh and n.unit != "active":
            n.flags.append(f"unit {n.unit or 'unknown'}")
        if not n.ready:
            n.flags.append(f"not ready ({n.ready_reason or 'no answer'})")
        if n.model_digest and common_digest and n.model_digest != common_digest:
            n.flags.append(f"model digest {n.model_digest[:12]} differs "
                           f"(fleet: {common_digest[:12]})")
        if n.release and len(releases) > 1 and n.release != common_release:
            n.flags.append(f"release {n.release} differs (fleet: {common_release})")
        if n.expected_device == "cuda" and n.device and n.device != "cuda":
            n.flags.append(f"device {n.device}, expected cuda")
        for fl in n.flags:
            reasons.append(f"{n.name}: {fl}")
    by_name = {b.name: b for b in lbs}
    holders: dict[str, list[str]] = {}
    verdict = HEALTHY
    for vip, members in vip_groups.items():
        hs = [m for m in members if m in by_name and by_name[m].holds_vip]
        holders[vip] = hs
        if not hs:
            reasons.append(f"VIP {vip}: no holder (outage)")
            verdict = DOWN
        elif len(hs) > 1:
            reasons.append(f"VIP {vip}: {len(hs)} holders ({', '.join(hs)}): split-brain")
            for m in hs:
                by_name[m].flags.append("split-brain: holds the VIP with another LB")
    for b in lbs:
        if not b.ssh:
            b.flags.append("ssh unreachable")
        else:
            if b.nginx != "active":
                b.flags.append(f"nginx {b.nginx or 'unknown'}")
            if b.keepalived != "active":
                b.flags.append(f"keepalived {b.keepalived or 'unknown'}")
            if b.drift:
                b.flags.append("config drift: " + ", ".join(b.drift))
        for fl in b.flags:
            if "split-brain" not in fl:
                reasons.append(f"{b.name}: {fl}")
    if nodes and not any(n.ready for n in nodes):
        reasons.append("no node is ready")
        verdict = DOWN
    if verdict == HEALTHY and reasons:
        verdict = DEGRADED
    return verdict, reasons, holders


# ------------------------------------------------------------------------------ the whole run


def collect(inv: Any, transports: Callable[[Any], Transport] | None, *,
            nodes: Sequence[Any] | None = None, lbs: Sequence[Any] | None = None,
            expected_digest: str = "", http_timeout: float = 3.0, parallel: int = 32,
            render_host: Callable[..., list[Any]] | None = None) -> FleetStatus:
    """Probe everything concurrently and assess. transports=None skips SSH (HTTP only)."""
    t0 = time.monotonic()
    nodes = list(inv.nodes if nodes is None else nodes)
    lbs = list(inv.lbs if lbs is None else lbs)
    ns = {n.name: NodeStatus(n.name, address=str(n.address), cloud=getattr(n, "cloud", ""),
                             expected_device=getattr(n.agent, "device", ""))
          for n in nodes}
    lb_out: dict[str, LBStatus] = {}
    pool = ThreadPoolExecutor(max_workers=max(1, min(parallel, len(nodes) + len(lbs))))
    futs = []
    if transports is not None:
        for n in nodes:
            futs.append(pool.submit(probe_node_ssh, transports(n), n, ns[n.name]))
        make = transports

        def lb_job(b: Any) -> None:
            lb_out[b.name] = probe_lb(make(b), inv, b, render_host)

        for b in lbs:
            futs.append(pool.submit(lb_job, b))
    http = http_probe_all([(n.name, str(n.address), int(n.agent.port)) for n in nodes],
                          timeout=http_timeout)
    for f in futs:
        f.result()
    pool.shutdown()
    for name, h in http.items():
        s = ns[name]
        code, body = h["ready"]
        s.ready = code == 200
        s.ready_reason = "" if s.ready else facts.ready_reason(code, body if code else "")
        info = h["info"]
        if info:
            s.device = _clean(info.get("device"))
            s.release = _clean(info.get("release")) or s.release
            model = info.get("model") or {}
            s.model_digest = _clean(model.get("digest"))
            s.model_revision = _clean(model.get("revision"))
            s.state = _clean(info.get("state"))
        m = h["metrics"]
        if m is not None:
            s.p50_s, s.p99_s, s.inflight = m.p50_s, m.p99_s, m.inflight
            s.gpu_used_bytes, s.gpu_total_bytes = m.gpu_used_bytes, m.gpu_total_bytes
    lbl = [lb_out.get(b.name) or LBStatus(b.name, site=b.site, vip=str(b.group.vip),
                                          ssh_error="not probed") for b in lbs]
    groups: dict[str, list[str]] = {}
    for b in lbs:
        groups.setdefault(str(b.group.vip), []).append(b.name)
    if transports is None:
        groups = {}
    nl = [ns[n.name] for n in nodes]
    verdict, reasons, holders = assess(nl, lbl if transports is not None else [], groups,
                                       expected_digest)
    return FleetStatus(nl, lbl if transports is not None else [], holders, verdict, reasons,
                       time.monotonic() - t0, expected_digest)
