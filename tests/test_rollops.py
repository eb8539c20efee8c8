"""FleetOps over recording transports: exact commands for drain, wait, restart, checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ofactl.errors import OperationError
from ofactl.inventory import load_inventory
from ofactl.rolling import restart_nodes
from ofactl.rollops import FleetOps, lb_conns_cmd
from ofactl.transport import RecordingTransport

EXAMPLE = Path(__file__).resolve().parent.parent / "inventory.example.yaml"
READY = "curl -sS --max-time 2 -w '\n%{http_code}' http://127.0.0.1:8000/v2/health/ready"


@pytest.fixture
def inv() -> Any:
    return load_inventory(EXAMPLE, check_files=False)


def fleet(inv: Any) -> tuple[FleetOps, dict[str, RecordingTransport]]:
    hosts: dict[str, RecordingTransport] = {}

    def make(host: Any) -> RecordingTransport:
        t = RecordingTransport(host=host.name)
        t.on("/v2/health/ready", 0, '{"ready":true}\n200')
        t.on("/v1/info", 0, '{"inflight": 0}\n200')
        t.on("/v1/predict", 0, '{"label": "entailment"}\n200')
        hosts[host.name] = t
        return t

    ops = FleetOps(inv, make, poll_s=0.0)
    for h in inv.hosts:
        ops.t(h.name)
    return ops, hosts


def test_set_drained_renders_validates_reloads(inv: Any) -> None:
    ops, hosts = fleet(inv)
    ops.set_drained(frozenset({"dc1-node1"}))
    lb = hosts["dc1-lb1"]
    conf = lb.files["/etc/nginx/nginx.conf"].decode()
    assert "down;  # dc1-node1" in conf and conf.count(" down;") == 1
    assert lb.commands() == [
        "if [ -e /etc/nginx/nginx.conf ]; then cp -pf /etc/nginx/nginx.conf "
        "/etc/nginx/nginx.conf.ofactl-bak; fi",
        "nginx -t -q",
        "systemctl reload nginx",
    ]
    assert not any(p.startswith("/etc/keepalived") for p in lb.files)
    # the same state again changes nothing and reloads nothing
    before = len(lb.commands())
    ops.set_drained(frozenset({"dc1-node1"}))
    assert len(lb.commands()) == before


def test_set_drained_keeps_old_config_when_nginx_t_fails(inv: Any) -> None:
    ops, hosts = fleet(inv)
    hosts["aws-lb2"].on(("nginx", "-t"), 1, "", "nginx: [emerg] unexpected }")
    with pytest.raises(OperationError) as err:
        ops.set_drained(frozenset({"aws-node1"}))
    assert err.value.message == (
        "aws-lb2: nginx -t refused the drained upstream, previous config kept: "
        "nginx: [emerg] unexpected }")
    assert hosts["aws-lb2"].commands()[-1] == (
        "if [ -e /etc/nginx/nginx.conf.ofactl-bak ]; then cp -pf "
        "/etc/nginx/nginx.conf.ofactl-bak /etc/nginx/nginx.conf; else rm -f "
        "/etc/nginx/nginx.conf; fi")
    assert "systemctl reload nginx" not in hosts["aws-lb2"].commands()


def test_wait_idle_reports_what_is_busy(inv: Any) -> None:
    ops, hosts = fleet(inv)
    hosts["dc1-node1"].on("/v1/info", 0, '{"inflight": 2}\n200')
    hosts["dc1-lb1"].on(lb_conns_cmd("10.20.0.11", 8000), 0,
                        "0 0 10.20.0.2:41000 10.20.0.11:8000\n")
    busy = ops.wait_idle(["dc1-node1", "dc1-node2"], 0.0)
    assert busy == {"dc1-node1": "2 request(s) in flight; 1 connection(s) from dc1-lb1"}


def test_wait_ready_quotes_the_last_answer(inv: Any) -> None:
    ops, hosts = fleet(inv)
    hosts["aws-node1"].on("/v2/health/ready", 0,
                          '{"ready":false,"reason":"loading the model"}\n503')
    with pytest.raises(OperationError) as err:
        ops.wait_ready("aws-node1", 0.01)
    assert err.value.message == (
        "aws-node1: not ready after 0.01 s (last answer: 503 loading the model)")


def test_restart_nodes_end_to_end_with_fakes(inv: Any) -> None:
    ops, hosts = fleet(inv)
    events: list[str] = []
    result = restart_nodes(inv, lambda h: None, ["dc1-node1", "aws-node1"],
                           on_event=lambda k, d: events.append(k), ops=ops)
    assert result.ok
    node = hosts["dc1-node1"].commands()
    assert "systemctl restart ofa-agent" in node
    assert any("/v1/predict" in c for c in node)
    assert events.count("batch") == 2 and events[0] == "plan"
    # every LB ends with nothing drained
    for lb in ("dc1-lb1", "aws-lb2"):
        assert " down;" not in hosts[lb].files["/etc/nginx/nginx.conf"].decode()
    assert READY in node
