"""Drill reports: a Rich table (built, not printed), JSON, and a hand-written SVG timeline."""

from __future__ import annotations

import json
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from rich.table import Table

from ofactl.drill.runner import ScenarioResult

KIND_COLOURS = {
    "connect_refused": "#d62728",
    "timeout": "#ff7f0e",
    "reset": "#9467bd",
    "connect_error": "#8c564b",
    "error": "#7f7f7f",
}
HOLDER_COLOURS = ["#1f77b4", "#2ca02c", "#17becf", "#bcbd22"]


def _fmt(v: float | None, unit: str = "", digits: int = 2) -> str:
    return "–" if v is None else f"{v:.{digits}f}{unit}"


def report_dict(results: Sequence[ScenarioResult], *, command: str, budget: dict[str, Any],
                raw: bool = True) -> dict[str, Any]:
    """The JSON report: command, budget, pass/fail and one entry per scenario."""
    found = [b for r in results for b in r.breaches]
    return {
        "format": 1,
        "command": command,
        "budget": budget,
        "passed": not found,
        "breaches": found,
        "scenarios": [r.to_dict(raw=raw) for r in results],
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write the JSON report."""
    path.write_text(json.dumps(data, indent=1) + "\n")


def summary_table(results: Sequence[ScenarioResult]) -> Table:
    """One row per scenario: what a person checks first (breaches are listed separately)."""
    t = Table(title="failover drill", title_justify="left")
    for col, just in [("scenario", "left"), ("requests", "right"), ("failed", "left"),
                      ("longest gap", "right"), ("p50/p99 ms before·during·after", "right"),
                      ("VIP moved", "right"), ("one holder", "center"),
                      ("recovered", "right"), ("budget", "center")]:
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in results:
        m = r.metrics
        lat = m.latency_ms

        def pp(phase: str, lat: dict[str, dict[str, float | None]] = lat) -> str:
            p = lat[phase]
            return f"{_fmt(p['p50'], '', 0)}/{_fmt(p['p99'], '', 0)}"

        kinds = ", ".join(f"{k} {v}" for k, v in m.failures_by_kind.items())
        failed = f"[{'green' if not m.failures else 'red'}]{m.failures}[/]" + (
            f" ({kinds})" if kinds else "")
        moved = _fmt(m.vip_moved_s, " s") if r.plan.expects_vip_move else (
            "stayed" if m.vip_moved_s is None else _fmt(m.vip_moved_s, " s"))
        holders = ("yes" if m.exactly_one_holder else
                   f"[red]{m.samples_with_several_holders}×2+[/] {m.samples_without_holder}×0")
        t.add_row(
            f"{r.plan.scenario}\n[dim]{r.plan.description}[/]", str(m.requests), failed,
            _fmt(m.longest_gap_s, " s"), f"{pp('before')} · {pp('during')} · {pp('after')}",
            moved, holders, _fmt(m.recover_s, " s"),
            "[green]ok[/]" if not r.breaches else "[red]exceeded[/]",
        )
    return t


def timeline_svg(r: ScenarioResult, *, width: int = 960, height: int = 360) -> str:
    """A timeline a person opens: latency dots, error ticks, VIP holder band, phase marks."""
    left, right, top, bottom = 60, 20, 40, 70
    pw, ph = width - left - right, height - top - bottom
    t_end = max([r.phases.end, *(x.done for x in r.records)], default=r.phases.end)
    ok_lat = [x.latency * 1000 for x in r.records if x.ok and x.latency is not None]
    y_max = max(50.0, max(ok_lat, default=50.0) * 1.1)

    def X(t: float) -> float:
        return left + pw * max(0.0, min(t, t_end)) / t_end

    def Y(ms: float) -> float:
        return top + ph - ph * min(ms, y_max) / y_max

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="18" font-size="14" font-weight="bold">'
        f'{escape(r.plan.scenario)}: {escape(r.plan.description)}</text>',
        f'<text x="{left}" y="32" fill="#444">{r.metrics.requests} requests, '
        f'{r.metrics.failures} failed, longest gap {r.metrics.longest_gap_s:.2f} s'
        + (f', VIP moved after {r.metrics.vip_moved_s:.2f} s'
           if r.metrics.vip_moved_s is not None else '')
        + (f', recovered {r.metrics.recover_s:.2f} s after restore'
           if r.metrics.recover_s is not None else '') + '</text>',
        # fault window
        f'<rect x="{X(r.phases.fault):.1f}" y="{top}" '
        f'width="{max(0.0, X(r.phases.restore) - X(r.phases.fault)):.1f}" height="{ph}" '
        'fill="#fde0dc"/>',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>',
    ]
    # axes
    for i in range(6):
        ms = y_max * i / 5
        out.append(f'<line x1="{left - 4}" x2="{left}" y1="{Y(ms):.1f}" y2="{Y(ms):.1f}" '
                   'stroke="#888"/>')
        out.append(f'<text x="{left - 6}" y="{Y(ms) + 4:.1f}" text-anchor="end">{ms:.0f}</text>')
    out.append(f'<text x="14" y="{top + ph / 2}" transform="rotate(-90 14 {top + ph / 2})" '
               'text-anchor="middle">latency (ms)</text>')
    step = max(1, round(t_end / 10))
    t = 0
    while t <= t_end:
        out.append(f'<line x1="{X(t):.1f}" x2="{X(t):.1f}" y1="{top + ph}" y2="{top + ph + 4}" '
                   'stroke="#888"/>')
        out.append(f'<text x="{X(t):.1f}" y="{top + ph + 15}" text-anchor="middle">{t}</text>')
        t += step
    out.append(f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle">'
               'seconds since the load started</text>')
    # requests
    for x in r.records:
        if x.ok and x.latency is not None:
            out.append(f'<circle cx="{X(x.t):.1f}" cy="{Y(x.latency * 1000):.1f}" r="1.6" '
                       'fill="#1f77b4"/>')
        else:
            colour = KIND_COLOURS.get(x.kind, "#e377c2" if x.kind.startswith("http_") else
                                      "#7f7f7f")
            out.append(f'<line x1="{X(x.t):.1f}" x2="{X(x.t):.1f}" y1="{top}" '
                       f'y2="{top + 12}" stroke="{colour}" stroke-width="1.5">'
                       f'<title>{escape(x.kind)} at {x.t:.2f} s</title></line>')
    # VIP holder band
    band_y = top + ph + 22
    names = sorted({h for s in r.samples for h in s.holders})
    colour_of = {n: HOLDER_COLOURS[i % len(HOLDER_COLOURS)] for i, n in enumerate(names)}
    for i, s in enumerate(r.samples):
        t_next = r.samples[i + 1].t if i + 1 < len(r.samples) else s.t + 0.2
        if len(s.holders) == 1:
            fill = colour_of[s.holders[0]]
        elif not s.holders:
            fill = "#dddddd"
        else:
            fill = "#d62728"
        out.append(f'<rect x="{X(s.t):.1f}" y="{band_y}" '
                   f'width="{max(0.5, X(t_next) - X(s.t)):.1f}" height="8" fill="{fill}"/>')
    legend_x = left
    for n in names:
        out.append(f'<rect x="{legend_x}" y="{band_y + 12}" width="8" height="8" '
                   f'fill="{colour_of[n]}"/>')
        out.append(f'<text x="{legend_x + 11}" y="{band_y + 20}">VIP on {escape(n)}</text>')
        legend_x += 120
    out.append(f'<text x="{legend_x}" y="{band_y + 20}" fill="#d62728">red tick = failed '
               'request (top); red band = two holders; grey = none</text>')
    # marks
    marks = [(r.phases.fault, "fault", "#d62728"), (r.phases.restore, "restore", "#2ca02c")]
    if r.metrics.vip_moved_s is not None:
        marks.append((r.phases.fault + r.metrics.vip_moved_s, "VIP moved", "#ff7f0e"))
    if r.metrics.recover_s is not None:
        marks.append((r.phases.restore + r.metrics.recover_s, "recovered", "#17becf"))
    for i, (t_m, label, colour) in enumerate(marks):
        out.append(f'<line x1="{X(t_m):.1f}" x2="{X(t_m):.1f}" y1="{top}" y2="{top + ph}" '
                   f'stroke="{colour}" stroke-dasharray="4 3"/>')
        out.append(f'<text x="{X(t_m) + 3:.1f}" y="{top + 24 + 12 * i}" fill="{colour}">'
                   f'{label} {t_m:.1f} s</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def timeline_document(results: Sequence[ScenarioResult]) -> str:
    """Every scenario's timeline stacked in one SVG file."""
    parts = [timeline_svg(r) for r in results]
    if len(parts) == 1:
        return parts[0]
    h = 360
    body = []
    for i, p in enumerate(parts):
        inner = p.split(">", 1)[1].rsplit("</svg>", 1)[0]
        body.append(f'<g transform="translate(0 {i * h})">{inner}</g>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="960" height="{h * len(parts)}" '
            f'viewBox="0 0 960 {h * len(parts)}" font-family="sans-serif" font-size="11">\n'
            + "\n".join(body) + "\n</svg>\n")


def write_png(path: Path, results: Sequence[ScenarioResult]) -> bool:
    """A PNG of the same timeline when matplotlib is installed; False when it is not."""
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return False
    fig, axes = plt.subplots(len(results), 1, figsize=(10, 3.2 * len(results)), squeeze=False)
    for ax, r in zip(axes[:, 0], results, strict=True):
        ok = [(x.t, x.latency * 1000) for x in r.records if x.ok and x.latency is not None]
        bad = [x.t for x in r.records if not x.ok]
        if ok:
            ax.scatter(*zip(*ok, strict=True), s=3, label="ok (latency ms)")
        if bad:
            top = max((v for _, v in ok), default=50.0)
            ax.scatter(bad, [top * 1.05] * len(bad), marker="|", color="red", s=40,
                       label=f"failed ({len(bad)})")
        ax.axvspan(r.phases.fault, r.phases.restore, color="#fde0dc", zorder=0)
        ax.axvline(r.phases.fault, color="red", ls="--", label="fault")
        ax.axvline(r.phases.restore, color="green", ls="--", label="restore")
        if r.metrics.vip_moved_s is not None:
            ax.axvline(r.phases.fault + r.metrics.vip_moved_s, color="orange", ls=":",
                       label="VIP moved")
        if r.metrics.recover_s is not None:
            ax.axvline(r.phases.restore + r.metrics.recover_s, color="c", ls=":",
                       label="recovered")
        ax.set_title(f"{r.plan.scenario}: {r.plan.description}", fontsize=9)
        ax.set_xlabel("seconds since the load started")
        ax.set_ylabel("latency (ms)")
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def results_from_report(data: dict[str, Any]) -> list[ScenarioResult]:
    """Rebuild scenario results from a JSON report (to redraw its timeline)."""
    from ofactl.drill.metrics import HolderSample, Phases, RequestRecord, compute
    from ofactl.drill.scenarios import FaultPlan

    out = []
    for s in data["scenarios"]:
        ph = Phases(s["phases"]["fault_s"], s["phases"]["restore_s"], s["phases"]["end_s"])
        records = [RequestRecord(t, lat, kind) for t, lat, kind in s.get("requests", [])]
        samples = [HolderSample(t, tuple(h), tuple(u)) for t, h, u in s.get("vip_samples", [])]
        rec = s["metrics"].get("recover_s")
        plan = FaultPlan(scenario=s["scenario"], description=s["description"],
                         targets=tuple(s["targets"]), inject=(), restore=(), checks=(),
                         expects_vip_move=s["scenario"] == "lb")
        metrics = compute(records, samples, ph,
                          recovered_at=None if rec is None else ph.restore + rec)
        out.append(ScenarioResult(plan=plan, phases=ph, records=records, samples=samples,
                                  metrics=metrics, breaches=list(s.get("breaches", [])),
                                  restored=bool(s.get("restored")),
                                  events=[(e["t"], e["what"]) for e in s.get("events", [])]))
    return out
