"""Fact parsers on captured output."""

import math

from ofactl import facts

HOST_FACTS_OUT = """\
@@ofactl os
debian 12
x86_64
@@ofactl python
3.11.2
@@ofactl disk
/dev/mapper/vg-root   102687672  25631312  71797132      27% /
@@ofactl systemd
systemd
systemd 252 (252.39-1~deb12u1)
@@ofactl gpu
@@ofactl runtime
python-ok
.ofa-runtime-4961d47f16653441
@@ofactl links
current=releases/20261124222153-f6837ce9
model=models/2952c5051f65
@@ofactl releases
20261124222034-e0033f09
20261124222153-f6837ce9
@@ofactl models
2952c5051f65
@@ofactl files
2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae  /etc/ofa-agent/agent.env
@@ofactl units
ofa-agent active enabled
@@ofactl end
"""


def test_parse_host_facts():
    f = facts.parse_host_facts(HOST_FACTS_OUT)
    assert f.os == "debian 12"
    assert f.arch == "x86_64"
    assert f.python == "3.11.2"
    assert f.disk_free_mb == 71797132 // 1024
    assert f.pid1 == "systemd"
    assert f.systemd.startswith("systemd 252")
    assert f.gpus == ()
    assert f.runtime_python
    assert f.runtime_fingerprints == ("4961d47f16653441",)
    assert f.current == "releases/20261124222153-f6837ce9"
    assert f.model == "models/2952c5051f65"
    assert f.releases == ("20261124222034-e0033f09", "20261124222153-f6837ce9")
    assert f.models == ("2952c5051f65",)
    assert f.file_sha256 == {"/etc/ofa-agent/agent.env": "2c26b46b68ffc68ff99b453c1d30413413"
                             "422d706483bfa0f98a5e886266e7ae"}
    assert f.unit_active("ofa-agent") and f.unit_enabled("ofa-agent")
    assert facts.preflight_problems(f, need_gpu=False) == []


def test_preflight_problems_bare_host():
    out = HOST_FACTS_OUT.replace("systemd\nsystemd 252", "tini\nsystemd 252").replace(
        "3.11.2", "3.8.10").replace("71797132", "1000")
    f = facts.parse_host_facts(out)
    assert facts.preflight_problems(f, need_gpu=True) == [
        "python3 3.8.10 < 3.9",
        "only 0 MB free (need 1024)",
        "systemd is not PID 1 (PID 1 is tini)",
        "inventory expects a GPU but nvidia-smi finds none",
    ]


def test_parse_host_facts_missing_everything():
    f = facts.parse_host_facts("")
    assert f.current == "" and f.units == {} and not f.unit_active("x")


def test_host_facts_cmd_quotes_paths():
    cmd = facts.host_facts_cmd(base_dir="/opt/o fa", runtime="/rt", files=["/etc/a b"],
                               units=["ofa-agent"])
    assert "'/opt/o fa'" in cmd and "'/etc/a b'" in cmd and "@@ofactl end" in cmd


def test_parse_sha256sum_strips_dot_slash():
    out = ("a" * 64 + "  ./config.json\n" + "b" * 64 + "  ./sub/w.bin\n")
    assert facts.parse_sha256sum(out) == {"config.json": "a" * 64, "sub/w.bin": "b" * 64}


def test_curl_status():
    assert facts.parse_curl_status('{"ready":true}\n200') == (200, '{"ready":true}')
    assert facts.parse_curl_status("curl: (7) refused\n000") == (0, "curl: (7) refused")
    assert facts.ready_reason(503, '{"ready":false,"reason":"draining"}') == "503 draining"
    assert facts.ready_reason(0, "") == "no answer"


IP_ADDR = """\
1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
2: eth0@if7    inet 10.213.0.10/24 brd 10.213.0.255 scope global eth0\\       valid_lft forever
2: eth0@if7    inet 10.213.0.100/24 scope global secondary eth0\\       valid_lft forever
"""


def test_vip_holder():
    assert facts.parse_ip_addr(IP_ADDR) == [("lo", "127.0.0.1/8"), ("eth0", "10.213.0.10/24"),
                                            ("eth0", "10.213.0.100/24")]
    assert facts.holds_vip(IP_ADDR, "10.213.0.100/24")
    assert not facts.holds_vip(IP_ADDR.replace("10.213.0.100", "10.213.0.99"), "10.213.0.100")


METRICS = """\
# HELP ofa_agent_request_duration_seconds Request latency
# TYPE ofa_agent_request_duration_seconds histogram
ofa_agent_request_duration_seconds_bucket{le="0.01",outcome="ok"} 0.0
ofa_agent_request_duration_seconds_bucket{le="0.025",outcome="ok"} 0.0
ofa_agent_request_duration_seconds_bucket{le="0.05",outcome="ok"} 50.0
ofa_agent_request_duration_seconds_bucket{le="0.1",outcome="ok"} 90.0
ofa_agent_request_duration_seconds_bucket{le="0.25",outcome="ok"} 100.0
ofa_agent_request_duration_seconds_bucket{le="+Inf",outcome="ok"} 100.0
ofa_agent_request_duration_seconds_count{outcome="ok"} 100.0
ofa_agent_requests_total{outcome="ok"} 100.0
ofa_agent_requests_total{outcome="rejected"} 2.0
ofa_agent_inflight 3.0
ofa_agent_model_info{digest="abc",device="cpu",dtype="float32",model_id="m",release="r"} 1.0
"""


def test_agent_metrics_quantiles():
    m = facts.parse_agent_metrics(METRICS)
    assert m.p50_s is not None and math.isclose(m.p50_s, 0.05)
    assert m.p99_s is not None and math.isclose(m.p99_s, 0.1 + 0.15 * 9 / 10)
    assert m.inflight == 3.0
    assert m.requests == 102.0
    assert m.model_info["digest"] == "abc"
    assert m.gpu_used_bytes is None
    g = facts.parse_agent_metrics("ofa_agent_gpu_memory_used_bytes 1073741824\n"
                                  "ofa_agent_gpu_memory_total_bytes 8589934592\n")
    assert (g.gpu_used_bytes, g.gpu_total_bytes) == (2.0**30, 8 * 2.0**30)


def test_histogram_quantile_edges():
    assert facts.histogram_quantile(0.5, []) is None
    assert facts.histogram_quantile(0.5, [(1.0, 0.0), (math.inf, 0.0)]) is None
    # everything above the last finite bucket: the last finite bound
    assert facts.histogram_quantile(0.99, [(1.0, 0.0), (math.inf, 10.0)]) == 1.0
