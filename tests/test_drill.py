"""Failover drills without a fleet: scenario plans, metrics maths, report, load generator, runner.

The load generator is exercised against a tiny HTTP server on 127.0.0.1 (loopback only).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ofactl.drill.load import LoadGenerator, Payload, classify
from ofactl.drill.metrics import (
    Budget,
    HolderSample,
    Phases,
    RequestRecord,
    breaches,
    compute,
    latency_by_phase,
    longest_gap,
    percentile,
    vip_moved,
)
from ofactl.drill.report import report_dict, summary_table, timeline_document
from ofactl.drill.runner import DrillSettings, run_scenario
from ofactl.drill.scenarios import default_phases, expand, parse_vip_holders, plan_fault
from ofactl.errors import OperationError, UsageError
from ofactl.rollops import predict_body, smoke_cmd, tiny_png

NODES = {"node1": "private", "node2": "private", "node3": "public", "node4": "public"}


# ------------------------------------------------------------------ scenarios


def test_node_scenario_plan() -> None:
    p = plan_fault("node", nodes=NODES, vip_holder="lb1")
    assert p.targets == ("node1",)
    assert [(c.host, c.argv) for c in p.inject] == [("node1", ("systemctl", "stop", "ofa-agent"))]
    assert [(c.host, c.argv) for c in p.restore] == [
        ("node1", ("systemctl", "start", "ofa-agent"))]
    assert p.checks[0].argv == ("curl", "-fsS", "--max-time", "2",
                                "http://127.0.0.1:8000/v2/health/ready")
    k = plan_fault("node", nodes=NODES, vip_holder="lb1", node_fault="kill", target="node3")
    assert k.inject[0].argv == ("systemctl", "kill", "--signal=SIGKILL", "ofa-agent")
    assert k.description == "agent killed on node3"
    assert not p.expects_vip_move


def test_lb_scenario_plan() -> None:
    p = plan_fault("lb", nodes=NODES, vip_holder="lb1")
    assert p.description == "nginx stopped on the VIP holder lb1"
    assert p.inject[0].argv == ("systemctl", "stop", "nginx") and p.expects_vip_move
    k = plan_fault("lb", nodes=NODES, vip_holder="lb2", lb_fault="keepalived")
    assert (k.inject[0].host, k.inject[0].argv) == ("lb2", ("systemctl", "stop", "keepalived"))
    with pytest.raises(UsageError, match="no load balancer holds the VIP"):
        plan_fault("lb", nodes=NODES, vip_holder=None)


def test_cloud_scenario_plan() -> None:
    p = plan_fault("cloud", nodes=NODES, vip_holder="lb1")
    assert p.targets == ("node1", "node2")
    assert [c.host for c in p.inject] == ["node1", "node2"]
    with pytest.raises(UsageError, match="nothing would serve"):
        plan_fault("cloud", nodes={"a": "private"}, vip_holder="lb1")
    with pytest.raises(UsageError, match="no node in cloud 'public'"):
        plan_fault("cloud", nodes={"a": "private", "b": "x"}, vip_holder="lb1", cloud="public")


def test_expand_and_bad_names() -> None:
    assert expand("all") == ("node", "lb", "cloud")
    assert expand("lb") == ("lb",)
    with pytest.raises(UsageError) as err:
        expand("dc")
    assert err.value.message == "--scenario: expected one of node, lb, cloud, all, got 'dc'"
    with pytest.raises(UsageError, match="expected stop or kill"):
        plan_fault("node", nodes=NODES, vip_holder=None, node_fault="pause")


IP_LB1 = """1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever
2: eth0    inet 10.213.0.10/24 brd 10.213.0.255 scope global eth0\\       valid_lft forever
2: eth0    inet 10.213.0.100/24 scope global secondary eth0\\       valid_lft forever
"""
IP_LB2 = "2: eth0    inet 10.213.0.11/24 brd 10.213.0.255 scope global eth0\n"


def test_parse_vip_holders() -> None:
    assert parse_vip_holders({"lb1": IP_LB1, "lb2": IP_LB2}, "10.213.0.100/24") == (
        ("lb1",), ())
    assert parse_vip_holders({"lb1": IP_LB1, "lb2": IP_LB1}, "10.213.0.100") == (
        ("lb1", "lb2"), ())
    assert parse_vip_holders({"lb1": None, "lb2": IP_LB2}, "10.213.0.100") == ((), ("lb1",))
    # 10.213.0.10 must not match 10.213.0.100 or vice versa
    assert parse_vip_holders({"lb2": IP_LB2}, "10.213.0.1") == ((), ())


def test_default_phases() -> None:
    assert default_phases(20) == (5.0, 12.0)


# ------------------------------------------------------------------ metrics


def rec(t: float, lat: float | None = 0.01, kind: str = "ok") -> RequestRecord:
    return RequestRecord(t=t, latency=lat, kind=kind)


def test_percentile_nearest_rank() -> None:
    vals = [float(v) for v in range(1, 101)]
    assert percentile(vals, 50) == 50.0
    assert percentile(vals, 99) == 99.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_longest_gap() -> None:
    records = [rec(0.0), rec(1.0), rec(1.1, kind="connect_refused"), rec(3.0), rec(3.5)]
    # successes complete at 0.01, 1.01, 3.01, 3.51 -> longest gap 1.01..3.01 = 2.0
    assert longest_gap(records, 0.0, 4.0) == pytest.approx(2.0)
    assert longest_gap([], 0.0, 4.0) == 4.0


def test_latency_by_phase() -> None:
    phases = Phases(fault=1.0, restore=2.0, end=3.0)
    out = latency_by_phase([rec(0.5, 0.010), rec(1.5, 0.100), rec(1.6, None, "timeout"),
                            rec(2.5, 0.020)], phases)
    assert out["before"] == {"n": 1.0, "p50": 10.0, "p99": 10.0}
    assert out["during"] == {"n": 1.0, "p50": 100.0, "p99": 100.0}
    assert out["after"]["p50"] == 20.0


def test_vip_moved_and_holder_counts() -> None:
    samples = [HolderSample(0.0, ("lb1",)), HolderSample(0.9, ("lb1",)),
               HolderSample(1.2, ()), HolderSample(1.4, ()), HolderSample(2.9, ("lb2",)),
               HolderSample(3.1, ("lb2",))]
    assert vip_moved(samples, 1.0, "lb1") == (pytest.approx(1.9), "lb2")
    m = compute([rec(0.1), rec(1.5, 0.001, "connect_refused"), rec(1.6, 0.001,
                                                                   "connect_refused"),
                 rec(2.0, 2.0, "timeout"), rec(3.2)],
                samples, Phases(1.0, 2.0, 4.0), recovered_at=2.5)
    assert m.requests == 5 and m.ok == 2 and m.failures == 3
    assert m.failures_by_kind == {"connect_refused": 2, "timeout": 1}
    assert m.vip_holder_before == "lb1" and m.vip_holder_during == "lb2"
    assert m.vip_moved_s == pytest.approx(1.9)
    assert m.samples_without_holder == 2 and m.samples_with_several_holders == 0
    assert not m.exactly_one_holder
    assert m.recover_s == pytest.approx(0.5)
    d = m.to_dict()
    assert d["failures"] == sum(d["failures_by_kind"].values())


def test_budget_breaches() -> None:
    samples = [HolderSample(0.0, ("lb1",)), HolderSample(5.5, ("lb2",)),
               HolderSample(6.0, ("lb1", "lb2"))]
    m = compute([rec(0.1), rec(1.0, 0.1, "http_502")], samples, Phases(1.0, 2.0, 7.0),
                recovered_at=None)
    assert breaches("lb", m, Budget(max_errors=0, max_failover_s=4.0),
                    expects_vip_move=True) == [
        "lb: 1 failed request(s), budget is 0",
        "lb: the VIP moved after 4.50 s, budget is 4 s",
        "lb: 1 sample(s) saw two or more VIP holders (split brain)",
    ]
    assert breaches("node", m, Budget(), expects_vip_move=False) == [
        "node: 1 sample(s) saw two or more VIP holders (split brain)"]
    never = compute([rec(0.1)], [HolderSample(0.0, ("lb1",))], Phases(1.0, 2.0, 3.0),
                    recovered_at=None)
    assert breaches("lb", never, Budget(max_failover_s=4), expects_vip_move=True) == [
        "lb: the VIP never moved off lb1"]


# ------------------------------------------------------------------ load generator


class _Handler(BaseHTTPRequestHandler):
    fail_every = 0
    count = 0
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length))
        with _Handler.lock:
            _Handler.count += 1
            n = _Handler.count
        status = 503 if self.fail_every and n % self.fail_every == 0 else 200
        assert "image" in body and "text" in body
        assert self.headers.get("Authorization") == "Bearer t0k"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"label": "entailment"}')

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def server() -> Iterator[str]:
    _Handler.count = 0
    _Handler.fail_every = 4
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def payload() -> Payload:
    return Payload("/v1/predict", dict(predict_body()), {"Authorization": "Bearer t0k"})


def test_load_generator_counts_every_request(server: str) -> None:
    gen = LoadGenerator(server, payload(), rate=50, duration=1.0, timeout=2.0)
    gen.start()
    records = gen.join()
    assert len(records) == 50
    kinds = {r.kind for r in records}
    assert kinds == {"ok", "http_503"}
    assert sum(1 for r in records if r.kind == "http_503") == 12
    assert all(0 <= r.t < 1.2 for r in records)
    assert "t0k" not in repr(payload())


def test_load_generator_refused() -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    gen = LoadGenerator(f"http://127.0.0.1:{port}", payload(), rate=20, duration=0.25,
                        timeout=1.0)
    gen.start()
    records = gen.join()
    assert len(records) == 5 and {r.kind for r in records} == {"connect_refused"}


def test_classify() -> None:
    import httpx

    assert classify(httpx.ReadTimeout("x")) == "timeout"
    assert classify(httpx.ConnectError("[Errno 111] Connection refused")) == "connect_refused"
    assert classify(httpx.RemoteProtocolError("Server disconnected")) == "reset"
    assert classify(httpx.ReadError("[Errno 104] Connection reset by peer")) == "reset"
    assert classify(httpx.ConnectError("No route to host")) == "connect_error"


def test_tiny_png_is_a_png() -> None:
    data = tiny_png()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and b"IEND" in data
    assert "Authorization" in smoke_cmd(8000, with_token=True)
    assert "Authorization" not in smoke_cmd(8000, with_token=False)


# ------------------------------------------------------------------ runner (fake fleet)


class FakeFleet:
    """Answers runner calls: VIP on lb1 until nginx stops there, then lb2 after 1 s."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[str, ...]]] = []
        self.stopped_at: float | None = None
        self.restored = False
        import time

        self.time = time

    def __call__(self, host: str, argv: Sequence[str], timeout: float) -> tuple[int, str]:
        argv = tuple(argv)
        if argv[:2] != ("ip", "-o"):
            self.calls.append((host, argv))
        if argv == ("systemctl", "stop", "nginx"):
            self.stopped_at = self.time.monotonic()
        if argv == ("systemctl", "start", "nginx"):
            self.restored = True
        if argv[:2] == ("ip", "-o"):
            moved = self.stopped_at is not None and \
                self.time.monotonic() - self.stopped_at > 0.3 and not self.restored
            holder = "lb2" if moved else "lb1"
            return 0, IP_LB1 if host == holder else IP_LB2
        return 0, ""


def test_run_scenario_measures_and_restores(server: str) -> None:
    fleet = FakeFleet()
    plan = plan_fault("lb", nodes=NODES, vip_holder="lb1")
    settings = DrillSettings(base_url=server, payload=payload(), rate=40, duration=2.0,
                             timeout=1.0, sample_interval=0.05)
    r = run_scenario(plan, settings, runner=fleet, lbs=["lb1", "lb2"], vip="10.213.0.100/24",
                     budget=Budget(max_errors=100, max_failover_s=4.0))
    assert ("lb1", ("systemctl", "stop", "nginx")) in fleet.calls
    assert ("lb1", ("systemctl", "start", "nginx")) in fleet.calls
    assert r.restored and r.metrics.requests == 80
    assert r.metrics.vip_holder_before == "lb1" and r.metrics.vip_holder_during == "lb2"
    assert r.metrics.vip_moved_s is not None and 0.3 <= r.metrics.vip_moved_s < 1.0
    assert r.metrics.samples_with_several_holders == 0
    assert r.metrics.failures == r.metrics.failures_by_kind.get("http_503", 0) == 20
    assert r.breaches == []
    data = report_dict([r], command="ofactl failover-test --scenario lb",
                       budget={"max_errors": 100})
    assert data["passed"] and len(data["scenarios"][0]["requests"]) == 80
    json.dumps(data)
    svg = timeline_document([r, r])
    assert svg.startswith("<svg") and svg.count("fault") >= 2 and "VIP on lb2" in svg
    summary_table([r])


def test_run_scenario_restores_on_interrupt(server: str) -> None:
    fleet = FakeFleet()
    plan = plan_fault("lb", nodes=NODES, vip_holder="lb1")
    calls = {"n": 0}

    def sleep(s: float) -> None:
        import time

        calls["n"] += 1
        if fleet.stopped_at is not None:
            raise KeyboardInterrupt
        time.sleep(s)

    settings = DrillSettings(base_url=server, payload=payload(), rate=20, duration=2.0,
                             timeout=1.0)
    with pytest.raises(KeyboardInterrupt):
        run_scenario(plan, settings, runner=fleet, lbs=["lb1", "lb2"], vip="10.213.0.100",
                     budget=Budget(), sleep=sleep)
    assert fleet.calls[-1] == ("lb1", ("systemctl", "start", "nginx"))


def test_run_scenario_rejects_bad_phases(server: str) -> None:
    plan = plan_fault("node", nodes=NODES, vip_holder="lb1")
    settings = DrillSettings(base_url=server, payload=payload(), rate=5, duration=2.0,
                             fault_at=1.5, restore_at=1.0)
    with pytest.raises(OperationError, match="need 0 < fault"):
        run_scenario(plan, settings, runner=FakeFleet(), lbs=["lb1"], vip="10.213.0.100",
                     budget=Budget())


def test_report_files(tmp_path: Path, server: str) -> None:
    from ofactl.drill.report import write_json

    fleet = FakeFleet()
    plan = plan_fault("node", nodes=NODES, vip_holder="lb1")
    settings = DrillSettings(base_url=server, payload=payload(), rate=10, duration=1.0,
                             timeout=1.0)
    r = run_scenario(plan, settings, runner=fleet, lbs=["lb1", "lb2"], vip="10.213.0.100",
                     budget=Budget(max_errors=0))
    assert r.breaches == ["node: 2 failed request(s), budget is 0"]
    out = tmp_path / "drill.json"
    write_json(out, report_dict([r], command="x", budget={}))
    assert json.loads(out.read_text())["passed"] is False
