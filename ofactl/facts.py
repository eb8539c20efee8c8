"""Read-only probes: each is a command builder plus a pure parser, tested on captured output.

`host_facts_cmd(...)` gathers everything deploy needs to decide in ONE round trip (OS, Python,
disk, systemd, GPU, runtime fingerprint, release/model links, hashes of managed files, service
states); `parse_host_facts(text)` turns its output into `HostFacts`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ofactl.commands import q

_MARK = "@@ofactl "


def host_facts_cmd(*, base_dir: str, runtime: str | None, files: Sequence[str],
                   units: Sequence[str]) -> str:
    """A shell script printing `@@ofactl <section>` blocks; changes nothing."""
    b = q(base_dir)
    parts = [
        f"echo '{_MARK}os'; (. /etc/os-release 2>/dev/null && echo \"$ID $VERSION_ID\"); uname -m",
        f"echo '{_MARK}python'; python3 -c 'import sys; print(*sys.version_info[:3], sep=\".\")'"
        " 2>/dev/null",
        f"echo '{_MARK}disk'; d={b}; while [ ! -e \"$d\" ]; do d=$(dirname \"$d\"); done; "
        "df -Pk \"$d\" | tail -n 1",
        f"echo '{_MARK}systemd'; cat /proc/1/comm 2>/dev/null; "
        "systemctl --version 2>/dev/null | head -n 1",
        f"echo '{_MARK}gpu'; nvidia-smi --query-gpu=name,driver_version,memory.total "
        "--format=csv,noheader 2>/dev/null || true",
    ]
    if runtime:
        r = q(runtime)
        parts.append(f"echo '{_MARK}runtime'; test -x {r}/bin/python && echo python-ok; "
                     f"ls -1a {r} 2>/dev/null | grep '^\\.ofa-runtime-' || true")
    parts += [
        f"echo '{_MARK}links'; for l in current model; do "
        f"echo \"$l=$(readlink {b}/$l 2>/dev/null)\"; done",
        f"echo '{_MARK}releases'; ls -1 {b}/releases 2>/dev/null || true",
        f"echo '{_MARK}models'; ls -1 {b}/models 2>/dev/null || true",
    ]
    if files:
        parts.append(f"echo '{_MARK}files'; sha256sum -- {' '.join(q(f) for f in files)} "
                     "2>/dev/null || true")
    if units:
        parts.append(
            f"echo '{_MARK}units'; for u in {' '.join(q(u) for u in units)}; do "
            "echo \"$u $(systemctl is-active $u 2>/dev/null) "
            "$(systemctl is-enabled $u 2>/dev/null || echo missing)\"; done")
    parts.append(f"echo '{_MARK}end'")
    return "; ".join(parts)


@dataclass(frozen=True)
class HostFacts:
    """What a host looks like right now (parsed from host_facts_cmd output)."""

    os: str = ""
    arch: str = ""
    python: str = ""
    disk_free_mb: int = 0
    pid1: str = ""
    systemd: str = ""
    gpus: tuple[str, ...] = ()
    runtime_python: bool = False
    runtime_fingerprints: tuple[str, ...] = ()
    current: str = ""  # readlink of {base}/current ("" when absent)
    model: str = ""
    releases: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    file_sha256: dict[str, str] = field(default_factory=dict)
    units: dict[str, tuple[str, str]] = field(default_factory=dict)  # unit -> (active, enabled)

    def unit_active(self, unit: str) -> bool:
        """True when systemd reports the unit active."""
        return self.units.get(unit, ("", ""))[0] == "active"

    def unit_enabled(self, unit: str) -> bool:
        """True when the unit is enabled."""
        return self.units.get(unit, ("", ""))[1] == "enabled"


def _sections(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    cur: list[str] | None = None
    for line in text.splitlines():
        if line.startswith(_MARK):
            cur = out.setdefault(line[len(_MARK):].strip(), [])
        elif cur is not None and line.strip():
            cur.append(line.rstrip())
    return out


def parse_host_facts(text: str) -> HostFacts:
    """Parse host_facts_cmd output; missing sections give empty values."""
    s = _sections(text)
    os_lines = s.get("os", [])
    disk_free = 0
    for line in s.get("disk", [])[-1:]:
        cols = line.split()
        if len(cols) >= 4 and cols[3].isdigit():
            disk_free = int(cols[3]) // 1024
    sysd = s.get("systemd", [])
    links = dict(line.partition("=")[::2] for line in s.get("links", []))
    files: dict[str, str] = {}
    for line in s.get("files", []):
        m = re.match(r"^\\?([0-9a-f]{64})\s+\*?(.+)$", line)
        if m:
            files[m.group(2)] = m.group(1)
    units: dict[str, tuple[str, str]] = {}
    for line in s.get("units", []):
        cols = line.split()
        if cols:
            units[cols[0]] = (cols[1] if len(cols) > 1 else "", cols[2] if len(cols) > 2 else "")
    rt = s.get("runtime", [])
    return HostFacts(
        os=os_lines[0] if len(os_lines) > 1 else "",
        arch=os_lines[-1] if os_lines else "",
        python=(s.get("python") or [""])[0],
        disk_free_mb=disk_free,
        pid1=sysd[0] if sysd else "",
        systemd=next((x for x in sysd if x.startswith("systemd ")), ""),
        gpus=tuple(s.get("gpu", [])),
        runtime_python="python-ok" in rt,
        runtime_fingerprints=tuple(x.removeprefix(".ofa-runtime-") for x in rt
                                   if x.startswith(".ofa-runtime-")),
        current=links.get("current", ""),
        model=links.get("model", ""),
        releases=tuple(sorted(s.get("releases", []))),
        models=tuple(sorted(s.get("models", []))),
        file_sha256=files,
        units=units,
    )


def preflight_problems(f: HostFacts, *, need_gpu: bool, min_disk_mb: int = 1024,
                       min_python: tuple[int, int] = (3, 9)) -> list[str]:
    """What makes a host unfit to deploy to (empty list = fit)."""
    problems = []
    if not f.os:
        problems.append("cannot read /etc/os-release")
    if not f.python:
        problems.append("no python3")
    else:
        try:
            major, minor = (int(x) for x in f.python.split(".")[:2])
            if (major, minor) < min_python:
                problems.append(f"python3 {f.python} < {min_python[0]}.{min_python[1]}")
        except ValueError:
            problems.append(f"odd python3 version {f.python!r}")
    if f.disk_free_mb < min_disk_mb:
        problems.append(f"only {f.disk_free_mb} MB free (need {min_disk_mb})")
    if f.pid1 != "systemd" or not f.systemd:
        problems.append(f"systemd is not PID 1 (PID 1 is {f.pid1 or 'unknown'})")
    if need_gpu and not f.gpus:
        problems.append("inventory expects a GPU but nvidia-smi finds none")
    return problems


# ---------------------------------------------------------------- files / trees


def parse_sha256sum(text: str) -> dict[str, str]:
    """`sha256sum` output -> {path: sha256}, './' prefixes stripped."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^\\?([0-9a-f]{64})\s+\*?(.+)$", line)
        if m:
            path = m.group(2)
            out[path[2:] if path.startswith("./") else path] = m.group(1)
    return out


# ---------------------------------------------------------------- HTTP via curl on the host


def parse_curl_status(text: str) -> tuple[int, str]:
    """commands.curl_status output -> (http_code, body); code 0 when nothing answered."""
    body, _, code = text.rstrip("\n").rpartition("\n")
    if not code.isdigit():
        return 0, text
    return int(code), body


def ready_reason(code: int, body: str) -> str:
    """A short reason from a /v2/health/ready answer (e.g. '503 draining')."""
    if code == 0:
        return "no answer"
    try:
        data = json.loads(body)
        if isinstance(data, dict) and data.get("reason"):
            return f"{code} {data['reason']}"
    except ValueError:
        pass
    return str(code)


# ---------------------------------------------------------------- VIP / addresses


def parse_ip_addr(text: str) -> list[tuple[str, str]]:
    """`ip -o -4 addr show` -> [(interface, 'a.b.c.d/len')]."""
    out = []
    for line in text.splitlines():
        m = re.match(r"^\d+:\s+(\S+)\s+inet\s+(\S+)", line)
        if m:
            out.append((m.group(1).split("@")[0], m.group(2)))
    return out


def holds_vip(text: str, vip: str) -> bool:
    """True when the `ip -o addr` output shows the VIP (address part compared)."""
    want = vip.split("/")[0]
    return any(addr.split("/")[0] == want for _, addr in parse_ip_addr(text))


# ---------------------------------------------------------------- Prometheus metrics

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus text exposition -> [(name, labels, value)] (comments skipped)."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = dict(_LABEL.findall(m.group(2) or ""))
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        out.append((m.group(1), labels, value))
    return out


def histogram_quantile(q_: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """Prometheus-style quantile from cumulative (le, count) buckets; None when empty."""
    bs = sorted(buckets)
    if not bs or bs[-1][1] <= 0:
        return None
    total = bs[-1][1]
    rank = q_ * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in bs:
        if c >= rank:
            if math.isinf(le):
                return prev_le
            if c == prev_c:
                return le
            return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)
        prev_le, prev_c = le, c
    return bs[-1][0]


@dataclass(frozen=True)
class AgentMetrics:
    """The parts of an agent's /metrics that status shows."""

    p50_s: float | None
    p99_s: float | None
    inflight: float | None
    requests: float
    model_info: dict[str, str]
    gpu_used_bytes: float | None = None
    gpu_total_bytes: float | None = None


def parse_agent_metrics(text: str, prefix: str = "ofa_agent_") -> AgentMetrics:
    """Agent /metrics text -> latency quantiles (all outcomes summed), in-flight, model_info."""
    buckets: dict[float, float] = {}
    inflight = None
    requests = 0.0
    info: dict[str, str] = {}
    gpu: dict[str, float] = {}
    for name, labels, value in parse_prometheus(text):
        if name == prefix + "request_duration_seconds_bucket":
            le = labels.get("le", "+Inf")
            key = math.inf if le in ("+Inf", "Inf") else float(le)
            buckets[key] = buckets.get(key, 0.0) + value
        elif name == prefix + "inflight":
            inflight = value
        elif name == prefix + "requests_total":
            requests += value
        elif name == prefix + "model_info" and value == 1:
            info = labels
        elif name in (prefix + "gpu_memory_used_bytes", prefix + "gpu_memory_total_bytes"):
            gkey = name.removeprefix(prefix)
            gpu[gkey] = gpu.get(gkey, 0.0) + value
    items = list(buckets.items())
    return AgentMetrics(histogram_quantile(0.5, items), histogram_quantile(0.99, items),
                        inflight, requests, info, gpu.get("gpu_memory_used_bytes"),
                        gpu.get("gpu_memory_total_bytes"))


def parse_info(body: str) -> dict[str, Any]:
    """Agent /v1/info JSON -> dict (empty when unparseable)."""
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
