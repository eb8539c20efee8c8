"""Drill metrics: pure arithmetic over request records and VIP-holder samples."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

OK = "ok"
# outcome kinds besides "ok": "http_<status>", "connect_refused", "connect_error", "timeout",
# "reset", "error"


@dataclass(frozen=True)
class RequestRecord:
    """One request of the load: when it was sent (s since drill start), latency, outcome."""

    t: float
    latency: float | None
    kind: str

    @property
    def ok(self) -> bool:
        """True for a 200 answer."""
        return self.kind == OK

    @property
    def done(self) -> float:
        """When the answer (or the error) came, in seconds since drill start."""
        return self.t + (self.latency or 0.0)


@dataclass(frozen=True)
class HolderSample:
    """Which LBs held the VIP at time t (seconds since drill start); None = host unreachable."""

    t: float
    holders: tuple[str, ...]
    unknown: tuple[str, ...] = ()


@dataclass(frozen=True)
class Phases:
    """Fault injected at `fault` s, restored at `restore` s, load ended at `end` s."""

    fault: float
    restore: float
    end: float


@dataclass
class ScenarioMetrics:
    """Everything a drill reports about one scenario."""

    requests: int
    ok: int
    failures: int
    failures_by_kind: dict[str, int]
    longest_gap_s: float
    latency_ms: dict[str, dict[str, float | None]]
    vip_moved_s: float | None
    vip_holder_before: str | None
    vip_holder_during: str | None
    holder_samples: int
    samples_without_holder: int
    samples_with_several_holders: int
    recover_s: float | None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def exactly_one_holder(self) -> bool:
        """True when every sample saw exactly one VIP holder."""
        return (
            self.holder_samples > 0
            and self.samples_without_holder == 0
            and self.samples_with_several_holders == 0
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "requests": self.requests,
            "ok": self.ok,
            "failures": self.failures,
            "failures_by_kind": dict(self.failures_by_kind),
            "longest_gap_s": round(self.longest_gap_s, 3),
            "latency_ms": self.latency_ms,
            "vip_moved_s": None if self.vip_moved_s is None else round(self.vip_moved_s, 3),
            "vip_holder_before": self.vip_holder_before,
            "vip_holder_during": self.vip_holder_during,
            "holder_samples": self.holder_samples,
            "samples_without_holder": self.samples_without_holder,
            "samples_with_several_holders": self.samples_with_several_holders,
            "exactly_one_holder": self.exactly_one_holder,
            "recover_s": None if self.recover_s is None else round(self.recover_s, 3),
            **self.extra,
        }


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile (pct in 0..100) of values; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def longest_gap(records: Iterable[RequestRecord], start: float, end: float) -> float:
    """Longest stretch in [start, end] in which no request completed successfully."""
    marks = sorted(r.done for r in records if r.ok and start <= r.done <= end)
    points = [start, *marks, end]
    return max((b - a for a, b in zip(points, points[1:], strict=False)), default=end - start)


def phase_of(t: float, phases: Phases) -> str:
    """'before', 'during' or 'after' the fault for a request sent at t."""
    if t < phases.fault:
        return "before"
    if t < phases.restore:
        return "during"
    return "after"


def latency_by_phase(records: Iterable[RequestRecord],
                     phases: Phases) -> dict[str, dict[str, float | None]]:
    """p50/p99 (ms) of successful requests before, during and after the fault."""
    buckets: dict[str, list[float]] = {"before": [], "during": [], "after": []}
    for r in records:
        if r.ok and r.latency is not None:
            buckets[phase_of(r.t, phases)].append(r.latency * 1000)
    out: dict[str, dict[str, float | None]] = {}
    for name, vals in buckets.items():
        p50, p99 = percentile(vals, 50), percentile(vals, 99)
        out[name] = {
            "n": float(len(vals)),
            "p50": None if p50 is None else round(p50, 1),
            "p99": None if p99 is None else round(p99, 1),
        }
    return out


def holder_before(samples: Sequence[HolderSample], fault: float) -> str | None:
    """The single VIP holder seen last before the fault, if there was exactly one."""
    before = [s for s in samples if s.t < fault and len(s.holders) == 1]
    return before[-1].holders[0] if before else None


def vip_moved(samples: Sequence[HolderSample], fault: float,
              original: str | None) -> tuple[float | None, str | None]:
    """Seconds from the fault until exactly one other LB held the VIP, and which one."""
    if original is None:
        return None, None
    for s in samples:
        if s.t >= fault and len(s.holders) == 1 and s.holders[0] != original:
            return s.t - fault, s.holders[0]
    return None, None


def compute(
    records: Sequence[RequestRecord],
    samples: Sequence[HolderSample],
    phases: Phases,
    *,
    recovered_at: float | None,
    extra: Mapping[str, Any] | None = None,
) -> ScenarioMetrics:
    """All metrics of one scenario from its raw records, samples and phase marks."""
    kinds = Counter(r.kind for r in records if not r.ok)
    original = holder_before(samples, phases.fault)
    moved_s, new_holder = vip_moved(samples, phases.fault, original)
    end = max([phases.end, *(r.done for r in records)]) if records else phases.end
    return ScenarioMetrics(
        requests=len(records),
        ok=sum(1 for r in records if r.ok),
        failures=sum(kinds.values()),
        failures_by_kind=dict(sorted(kinds.items())),
        longest_gap_s=longest_gap(records, 0.0, end) if records else 0.0,
        latency_ms=latency_by_phase(records, phases),
        vip_moved_s=moved_s,
        vip_holder_before=original,
        vip_holder_during=new_holder,
        holder_samples=len(samples),
        samples_without_holder=sum(1 for s in samples if not s.holders and not s.unknown),
        samples_with_several_holders=sum(1 for s in samples if len(s.holders) > 1),
        recover_s=None if recovered_at is None else max(0.0, recovered_at - phases.restore),
        extra=dict(extra or {}),
    )


@dataclass(frozen=True)
class Budget:
    """Limits a drill must stay within; None = not checked."""

    max_errors: int | None = None
    max_failover_s: float | None = None


def breaches(scenario: str, m: ScenarioMetrics, budget: Budget, *,
             expects_vip_move: bool) -> list[str]:
    """Budget violations of one scenario, as sentences."""
    out = []
    if budget.max_errors is not None and m.failures > budget.max_errors:
        out.append(f"{scenario}: {m.failures} failed request(s), budget is {budget.max_errors}")
    if expects_vip_move and budget.max_failover_s is not None:
        if m.vip_moved_s is None:
            out.append(f"{scenario}: the VIP never moved off {m.vip_holder_before or '?'}")
        elif m.vip_moved_s > budget.max_failover_s:
            out.append(f"{scenario}: the VIP moved after {m.vip_moved_s:.2f} s, "
                       f"budget is {budget.max_failover_s:g} s")
    if m.samples_with_several_holders:
        out.append(f"{scenario}: {m.samples_with_several_holders} sample(s) saw two or more "
                   "VIP holders (split brain)")
    return out
