"""Run a failover drill: load through the VIP, sample the VIP holder, inject, restore, measure.

The fleet is always restored: restore commands run in a `finally`, also on Ctrl-C and SIGTERM
(turned into KeyboardInterrupt while a drill runs), and run again if the first try failed.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ofactl.drill.load import LoadGenerator, Payload
from ofactl.drill.metrics import (
    Budget,
    HolderSample,
    Phases,
    RequestRecord,
    ScenarioMetrics,
    breaches,
    compute,
)
from ofactl.drill.scenarios import FaultPlan, parse_vip_holders, vip_probe_argv
from ofactl.errors import OperationError

# run(host, argv, timeout) -> (exit code, stdout); raises OperationError when unreachable
Runner = Callable[[str, Sequence[str], float], tuple[int, str]]
Event = Callable[[str, dict[str, Any]], None]


def _noop(kind: str, data: dict[str, Any]) -> None:
    return None


@dataclass
class ScenarioResult:
    """One scenario: its plan, phase marks, raw data, metrics and budget breaches."""

    plan: FaultPlan
    phases: Phases
    records: list[RequestRecord]
    samples: list[HolderSample]
    metrics: ScenarioMetrics
    breaches: list[str]
    restored: bool
    restore_errors: list[str] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)

    def to_dict(self, *, raw: bool = True) -> dict[str, Any]:
        """JSON-friendly form (raw records and samples included when raw)."""
        out: dict[str, Any] = {
            "scenario": self.plan.scenario,
            "description": self.plan.description,
            "targets": list(self.plan.targets),
            "phases": {"fault_s": round(self.phases.fault, 3),
                       "restore_s": round(self.phases.restore, 3),
                       "end_s": round(self.phases.end, 3)},
            "metrics": self.metrics.to_dict(),
            "breaches": self.breaches,
            "restored": self.restored,
            "restore_errors": self.restore_errors,
            "events": [{"t": round(t, 3), "what": w} for t, w in self.events],
        }
        if raw:
            out["requests"] = [[round(r.t, 4), None if r.latency is None else round(r.latency, 4),
                                r.kind] for r in self.records]
            out["vip_samples"] = [[round(s.t, 3), list(s.holders), list(s.unknown)]
                                  for s in self.samples]
        return out


class VipSampler:
    """Samples which LBs hold the VIP every `interval` s (all LBs probed in parallel)."""

    def __init__(self, runner: Runner, lbs: Sequence[str], vip: str, *, t0: float,
                 interval: float = 0.2, timeout: float = 3.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.runner, self.lbs, self.vip = runner, list(lbs), vip
        self.t0, self.interval, self.timeout, self.clock = t0, interval, timeout, clock
        self.samples: list[HolderSample] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(self.lbs)),
                                        thread_name_prefix="drill-vip")

    def _probe(self, lb: str) -> str | None:
        try:
            code, out = self.runner(lb, vip_probe_argv(), self.timeout)
        except OperationError:
            return None
        return out if code == 0 else None

    def sample(self) -> HolderSample:
        """One sample now."""
        t = self.clock() - self.t0
        outs = dict(zip(self.lbs, self._pool.map(self._probe, self.lbs), strict=True))
        holders, unknown = parse_vip_holders(outs, self.vip)
        return HolderSample(t=t, holders=holders, unknown=unknown)

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = self.clock()
            self.samples.append(self.sample())
            self._stop.wait(max(0.0, self.interval - (self.clock() - started)))

    def start(self) -> None:
        """Sample in the background."""
        self._thread = threading.Thread(target=self._loop, name="drill-vip-sampler",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> list[HolderSample]:
        """Stop sampling (bounded) and return the samples."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout * 3 + 1)
        self._pool.shutdown(wait=False, cancel_futures=True)
        return list(self.samples)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While a drill runs, SIGTERM raises KeyboardInterrupt so the finally blocks restore."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@dataclass(frozen=True)
class DrillSettings:
    """Load and timing of one scenario."""

    base_url: str
    payload: Payload
    rate: float = 20.0
    duration: float = 30.0
    timeout: float = 2.0
    fault_at: float | None = None
    restore_at: float | None = None
    sample_interval: float = 0.2
    recover_timeout: float = 120.0


def run_commands(runner: Runner, cmds: Sequence[Any], timeout: float = 30.0) -> list[str]:
    """Run host commands in order; return errors as sentences (never raises)."""
    errors = []
    for c in cmds:
        try:
            code, out = runner(c.host, c.argv, timeout)
        except OperationError as err:
            errors.append(str(err))
            continue
        if code != 0:
            errors.append(f"{c.host}: '{' '.join(c.argv)}' exited {code}: {out.strip()[-200:]}")
    return errors


def failing_checks(runner: Runner, plan: FaultPlan, timeout: float = 5.0) -> list[str]:
    """The recovery checks of the plan that fail now, each with its answer (empty: all pass)."""
    failing = []
    for c in plan.checks:
        try:
            code, out = runner(c.host, c.argv, timeout)
        except OperationError as err:
            failing.append(f"{c.host}: {c.what}: {err}")
            continue
        if code != 0:
            failing.append(f"{c.host}: {c.what}: exit {code} {out.strip()[-200:]}".rstrip())
    return failing


def run_scenario(
    plan: FaultPlan,
    settings: DrillSettings,
    *,
    runner: Runner,
    lbs: Sequence[str],
    vip: str,
    budget: Budget,
    sampler_runner: Runner | None = None,
    on_event: Event = _noop,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ScenarioResult:
    """Run one scenario end to end; the fault is always restored before returning."""
    from ofactl.drill.scenarios import default_phases

    d_fault, d_restore = default_phases(settings.duration)
    fault_at = settings.fault_at if settings.fault_at is not None else d_fault
    restore_at = settings.restore_at if settings.restore_at is not None else d_restore
    if not 0 < fault_at < restore_at < settings.duration:
        raise OperationError(
            f"drill: need 0 < fault ({fault_at:g} s) < restore ({restore_at:g} s) < duration "
            f"({settings.duration:g} s)")
    events: list[tuple[float, str]] = []
    t0 = clock()

    def mark(what: str) -> float:
        t = clock() - t0
        events.append((t, what))
        on_event("mark", {"t": t, "what": what, "scenario": plan.scenario})
        return t

    def wait_until(t_rel: float) -> None:
        while True:
            left = t0 + t_rel - clock()
            if left <= 0:
                return
            sleep(min(left, 0.1))

    load = LoadGenerator(settings.base_url, settings.payload, rate=settings.rate,
                         duration=settings.duration, timeout=settings.timeout, clock=clock,
                         t0=t0)
    sampler = VipSampler(sampler_runner or runner, lbs, vip, t0=t0,
                         interval=settings.sample_interval, clock=clock)
    injected = restored = False
    injector: threading.Thread | None = None
    restore_errors: list[str] = []
    t_fault = fault_at
    t_restore = restore_at
    recovered_at: float | None = None
    records: list[RequestRecord] = []
    samples: list[HolderSample] = []
    try:
        sampler.start()
        load.start()
        mark("load started")
        wait_until(fault_at)
        injected = True  # set first: a half-done inject is restored too
        t_fault = mark(f"fault: {plan.description}")
        # `systemctl stop` blocks while the agent drains (up to its drain timeout): the fault
        # starts now, the schedule goes on, and the restore waits for the inject to finish
        inject_errors: list[str] = []
        injector = threading.Thread(
            target=lambda: inject_errors.extend(run_commands(runner, plan.inject)),
            name="drill-inject", daemon=True)
        injector.start()
        wait_until(restore_at)
        injector.join(settings.recover_timeout)
        if inject_errors:
            events.append((clock() - t0, "inject error: " + "; ".join(inject_errors)))
        t_restore = mark("restore")
        restore_errors = run_commands(runner, plan.restore)
        restored = not restore_errors
        deadline = clock() + settings.recover_timeout
        not_yet: list[str] = []
        while clock() < deadline:
            not_yet = failing_checks(runner, plan)
            if not not_yet:
                recovered_at = mark("recovered")
                break
            sleep(0.2)
        else:
            events.append((clock() - t0, "not recovered: " + "; ".join(not_yet)))
        records = load.join()
        mark("load finished")
    finally:
        if injected and not restored:
            # Ctrl-C, SIGTERM or an error between inject and restore: put the fleet back
            # (after the inject itself has finished, so the restore comes last)
            load.stop()
            if injector is not None:
                injector.join(settings.recover_timeout)
            restore_errors = run_commands(runner, plan.restore)
            if restore_errors:  # one more try, e.g. after a transient SSH error
                sleep(1.0)
                restore_errors = run_commands(runner, plan.restore)
            restored = not restore_errors
        load.stop()
        samples = sampler.stop()
        if not records:
            records = load.join(extra=0.0)
    phases = Phases(fault=t_fault, restore=t_restore, end=settings.duration)
    metrics = compute(records, samples, phases, recovered_at=recovered_at,
                      extra={"rate": settings.rate, "duration_s": settings.duration,
                             "timeout_s": settings.timeout})
    found = breaches(plan.scenario, metrics, budget, expects_vip_move=plan.expects_vip_move)
    if recovered_at is None:
        why = next((w for _, w in reversed(events) if w.startswith("not recovered: ")), "")
        found.append(f"{plan.scenario}: not recovered within {settings.recover_timeout:g} s "
                     "of the restore" + (f" ({why[len('not recovered: '):]})" if why else ""))
    if restore_errors:
        found.append(f"{plan.scenario}: restore failed: {'; '.join(restore_errors)}")
    return ScenarioResult(plan=plan, phases=phases, records=records, samples=samples,
                          metrics=metrics, breaches=found, restored=restored,
                          restore_errors=restore_errors, events=events)


def current_holder(runner: Runner, lbs: Sequence[str], vip: str,
                   timeout: float = 5.0) -> str | None:
    """The one LB holding the VIP now (None when none or several)."""
    outs: Mapping[str, str | None] = {}
    res: dict[str, str | None] = {}
    for lb in lbs:
        try:
            code, out = runner(lb, vip_probe_argv(), timeout)
            res[lb] = out if code == 0 else None
        except OperationError:
            res[lb] = None
    outs = res
    holders, _ = parse_vip_holders(outs, vip)
    return holders[0] if len(holders) == 1 else None


def holder_report(runner: Runner, lbs: Sequence[str], vip: str, timeout: float = 5.0) -> str:
    """Who holds the VIP, in words (for errors): 'lb1', 'none', 'lb1 and lb2', '? (lb2 ...)'."""
    res: dict[str, str | None] = {}
    errors = []
    for lb in lbs:
        try:
            code, out = runner(lb, vip_probe_argv(), timeout)
            res[lb] = out if code == 0 else None
        except OperationError as err:
            res[lb] = None
            errors.append(str(err))
    holders, unknown = parse_vip_holders(res, vip)
    text = " and ".join(holders) or "none"
    if unknown:
        text += f"; no answer from {', '.join(unknown)}" + (f" ({errors[0]})" if errors else "")
    return text
