"""Deploy steps, lock, status verdict and model verification with fake hosts (no network)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ofactl import deploy, lock, status
from ofactl.errors import OperationError
from ofactl.executor import HostOutcome, HostResult, run_parallel
from ofactl.facts import HostFacts
from ofactl.manifest import write_manifest
from ofactl.modelstore import tree_problems
from ofactl.transport import DryRunTransport, RecordingTransport


def _agent(**kw: Any) -> SimpleNamespace:
    a = dict(port=8000, runtime="/rt", runtime_source="present", base_dir="/opt/ofa",
             keep_releases=3, ready_timeout_s=5, device="cpu")
    a.update(kw)
    ns = SimpleNamespace(**a)
    ns.model_dir = f"{ns.base_dir}/model"
    ns.current_dir = f"{ns.base_dir}/current"
    return ns


def _node(name: str = "n1") -> SimpleNamespace:
    return SimpleNamespace(name=name, address="10.0.0.1", role="node", accelerator="cpu",
                           agent=_agent(), cloud="private", site="s")


@dataclass
class RF:
    dest: str
    content: str
    mode: int = 0o644
    owner: str = "root"
    group: str = "root"
    secret: bool = False
    service: str | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content.encode()).hexdigest()


# ------------------------------------------------------------------------------ release


def test_release_id_from_content(tmp_path):
    pkg = tmp_path / "ofa_agent"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("x = 1\n")
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "junk.pyc").write_bytes(b"\0")
    a = deploy.build_release(pkg, now=0)
    time.sleep(0.01)
    (pkg / "__pycache__" / "junk.pyc").write_bytes(b"\1")  # caches do not count
    b = deploy.build_release(pkg, now=3600)
    assert a.sha8 == b.sha8 and a.tarball == b.tarball
    assert a.id == "19700101000000-" + a.sha8 and b.id == "19700101010000-" + a.sha8
    (pkg / "__init__.py").write_text("x = 2\n")
    assert deploy.build_release(pkg).sha8 != a.sha8


def _release() -> deploy.Release:
    return deploy.Release("20260101000000-abcd1234", "abcd1234", b"tarball")


def test_push_release_fresh_node_uploads_and_switches():
    t, out = RecordingTransport("n1"), HostOutcome()
    assert deploy.push_release(t, _node(), HostFacts(), _release(), out) is True
    assert t.files["/opt/ofa/releases/.upload-abcd1234.tar.gz"] == b"tarball"
    cmds = t.commands()
    assert cmds[0] == "mkdir -p /opt/ofa/releases"
    assert cmds[1].startswith("rm -rf /opt/ofa/releases/20260101000000-abcd1234.ofactl-tmp")
    assert cmds[2] == ("ln -sfn releases/20260101000000-abcd1234 /opt/ofa/current.ofactl-tmp "
                       "&& mv -fT /opt/ofa/current.ofactl-tmp /opt/ofa/current")
    assert "tail -n +4" in cmds[3] and "-e 20260101000000-abcd1234" in cmds[3]
    assert out.changes == ["release 20260101000000-abcd1234 uploaded (0 KiB)"]


def test_push_release_same_content_is_unchanged():
    t, out = RecordingTransport("n1"), HostOutcome()
    f = HostFacts(current="releases/20250101000000-abcd1234",
                  releases=("20250101000000-abcd1234",))
    assert deploy.push_release(t, _node(), f, _release(), out) is False
    assert t.calls == [] and out.changes == []
    assert out.notes == ["release 20250101000000-abcd1234 unchanged"]


def test_push_release_already_there_only_switches():
    t, out = RecordingTransport("n1"), HostOutcome()
    f = HostFacts(current="releases/20250101000000-00000000",
                  releases=("20240101000000-abcd1234", "20250101000000-00000000"))
    assert deploy.push_release(t, _node(), f, _release(), out) is True
    assert not any(kind == "put" for kind, _ in t.calls)
    assert t.commands()[0].startswith("ln -sfn releases/20240101000000-abcd1234 ")
    assert out.changes == ["release 20240101000000-abcd1234 (already on the host) made current"]


# ------------------------------------------------------------------------------ model


@pytest.fixture
def local_model(tmp_path: Path) -> deploy.LocalModel:
    root = tmp_path / "m"
    root.mkdir()
    (root / "config.json").write_text('{"a": 1}\n')
    (root / "weights.bin").write_bytes(b"\x00" * 100)
    write_manifest(root, "iic/x", "v1")
    return deploy.load_local_model(root)


def test_push_model_fresh_pushes_verifies_switches(local_model):
    t, out = RecordingTransport("n1"), HostOutcome()
    d12 = local_model.digest12
    assert deploy.push_model(t, _node(), HostFacts(), local_model, out) is True
    dest = f"/opt/ofa/models/{d12}"
    assert set(t.files) == {f"{dest}/config.json", f"{dest}/weights.bin",
                            f"{dest}/ofactl-manifest.json", f"/opt/ofa/models/.{d12}.sha256"}
    cmds = t.commands()
    assert f"cd /opt/ofa/models/{d12} && sha256sum --quiet --strict -c " \
           f"/opt/ofa/models/.{d12}.sha256" in cmds
    assert cmds[-1] == (f"ln -sfn models/{d12} /opt/ofa/model.ofactl-tmp && "
                        "mv -fT /opt/ofa/model.ofactl-tmp /opt/ofa/model")
    assert out.changes[0] == f"2 of 2 files pushed to {dest} (0.0 MB)"
    assert out.changes[1] == f"model -> models/{d12} (v1)"


def test_push_model_only_changed_files(local_model):
    d12 = local_model.digest12
    t, out = RecordingTransport("n1"), HostOutcome()
    good = local_model.manifest.files["weights.bin"]["sha256"]
    t.on("find . -type f", 0, f"{good}  ./weights.bin\n{'0' * 64}  ./config.json\n"
         f"{'1' * 64}  ./stale.txt\n")
    deploy.push_model(t, _node(), HostFacts(), local_model, out)
    pushed = [p for k, p in t.calls if k == "put" and "/models/" + d12 + "/" in p]
    assert pushed == [f"/opt/ofa/models/{d12}/config.json",
                      f"/opt/ofa/models/{d12}/ofactl-manifest.json"]
    assert f"rm -rf -- /opt/ofa/models/{d12}/stale.txt" in t.commands()


def test_push_model_unchanged_when_linked_and_sizes_match(local_model):
    d12 = local_model.digest12
    t, out = RecordingTransport("n1"), HostOutcome()
    mpath = f"/opt/ofa/models/{d12}/ofactl-manifest.json"
    f = HostFacts(model=f"models/{d12}", models=(d12,), file_sha256={
        mpath: hashlib.sha256(local_model.manifest_bytes).hexdigest()})
    t.on("stat -c", 0, "9 config.json\n100 weights.bin\n")
    assert deploy.push_model(t, _node(), f, local_model, out) is False
    assert out.notes == [f"model {d12} unchanged"] and not out.changes
    # a truncated file is noticed by size and repaired (no link switch needed)
    t2, out2 = RecordingTransport("n1"), HostOutcome()
    t2.on("stat -c", 0, "9 config.json\n50 weights.bin\n")
    assert deploy.push_model(t2, _node(), f, local_model, out2) is True
    assert out2.changes[-1] == f"model {d12} repaired and verified"


def test_push_model_failed_verification_raises(local_model):
    t = RecordingTransport("n1")
    t.on("sha256sum --quiet", 1, "weights.bin: FAILED\n")
    with pytest.raises(OperationError, match="does not match its manifest after the push"):
        deploy.push_model(t, _node(), HostFacts(), local_model, HostOutcome())
    assert not any(c.startswith("ln -sfn") for c in t.commands())


# ------------------------------------------------------------------------------ files/service


def test_install_files_uploads_only_changed():
    a, b = RF("/etc/a.env", "A\n", 0o640), RF("/etc/tok", "secret", 0o600, secret=True)
    f = HostFacts(file_sha256={"/etc/a.env": a.sha256})
    t, out = RecordingTransport("n1"), HostOutcome()
    assert deploy.install_files(t, [a, b], f, out) == [b]
    assert t.files == {"/etc/tok": b"secret"} and t.modes["/etc/tok"] == 0o600
    assert out.changes == ["/etc/tok created"]


def test_service_not_restarted_when_nothing_changed():
    f = HostFacts(units={"ofa-agent": ("active", "enabled")})
    t, out = RecordingTransport("n1"), HostOutcome()
    assert deploy.ensure_agent_service(t, f, unit_changed=False, restart=False, out=out) is False
    assert t.calls == []


def test_service_unit_changed_reloads_and_restarts():
    f = HostFacts(units={"ofa-agent": ("active", "enabled")})
    t, out = RecordingTransport("n1"), HostOutcome()
    assert deploy.ensure_agent_service(t, f, unit_changed=True, restart=True, out=out)
    assert t.commands() == ["systemctl daemon-reload", "systemctl restart ofa-agent"]


def test_service_serving_agent_restart_is_deferred_to_rolling():
    f = HostFacts(units={"ofa-agent": ("active", "enabled")})
    t, out = RecordingTransport("n1"), HostOutcome()
    started = deploy.ensure_agent_service(t, f, unit_changed=True, restart=True, out=out,
                                          defer_restart=True)
    assert started is False
    assert t.commands() == ["systemctl daemon-reload"]  # no restart here: drained first
    assert out.data["restart_pending"] is True
    assert out.changes == ["ofa-agent restart (rolling: drained on every LB first)"]


def test_service_stopped_agent_is_started_even_when_deferring():
    f = HostFacts(units={"ofa-agent": ("inactive", "enabled")})
    t, out = RecordingTransport("n1"), HostOutcome()
    assert deploy.ensure_agent_service(t, f, unit_changed=False, restart=True, out=out,
                                       defer_restart=True)
    assert t.commands() == ["systemctl start ofa-agent"]
    assert "restart_pending" not in out.data


def test_rolling_phase_marks_failed_and_skipped_nodes(monkeypatch):
    from ofactl import rolling

    res = rolling.RollingResult(
        outcomes=[rolling.NodeOutcome("n1", 1, True, 3.0),
                  rolling.NodeOutcome("n2", 2, False, 9.0, error="not ready after 5 s")],
        stopped="node n2 failed", left_drained=["n2"], skipped=["n3"])
    seen = {}

    def fake_restart_nodes(inv, factory, nodes, **kw):
        seen["nodes"], seen["kw"] = list(nodes), kw
        return res

    monkeypatch.setattr(rolling, "restart_nodes", fake_restart_nodes)
    results = [HostResult(n, True, changes=["x"], data={"restart_pending": True})
               for n in ("n1", "n2", "n3")] + [HostResult("lb1", True)]
    report = deploy.DeployReport()
    ctx = deploy.DeployContext(inv=object(), batch="50%", canary=1)
    deploy._rolling_restarts(ctx, results, lambda h: None, False, report)
    assert seen["nodes"] == ["n1", "n2", "n3"]
    assert seen["kw"]["batch"] == "50%" and seen["kw"]["canary"] == 1
    by = {r.host: r for r in results}
    assert by["n1"].ok and by["n1"].notes == ["restarted (rolling, batch 1, 3.0 s)"]
    assert not by["n2"].ok and by["n2"].error == "n2: rolling restart failed: not ready after 5 s"
    assert not by["n3"].ok and by["n3"].error == "n3: not restarted (node n2 failed)"
    assert report.stopped == "rolling restart stopped: node n2 failed" and not report.ok
    assert report.to_json()["rolling_restart"]["left_drained"] == ["n2"]


def test_rolling_phase_dry_run_only_notes(monkeypatch):
    from ofactl import rolling

    monkeypatch.setattr(rolling, "restart_nodes", lambda *a, **k: pytest.fail("ran"))
    results = [HostResult("n1", True, data={"restart_pending": True})]
    inv = SimpleNamespace(lbs=[SimpleNamespace(name="lb1")])
    report = deploy.DeployReport()
    deploy._rolling_restarts(deploy.DeployContext(inv=inv), results, lambda h: None, True,
                             report)
    assert results[0].notes == ["dry run: would restart through the rolling machinery"]
    assert [(e.host, e.text) for e in report.rolling_dry] == [
        ("lb1", "# drain n1: nginx.conf with n1 down; nginx -t -q; systemctl reload nginx"),
        ("n1", "# wait until the agent reports no in-flight work"),
        ("n1", "systemctl restart ofa-agent"),
        ("n1", "# wait for /v2/health/ready + a smoke prediction"),
        ("lb1", "# undrain n1: nginx.conf as rendered; nginx -t -q; systemctl reload nginx")]


def test_service_first_time_enabled_and_started():
    t, out = RecordingTransport("n1"), HostOutcome()
    deploy.ensure_agent_service(t, HostFacts(), unit_changed=True, restart=True, out=out)
    assert t.commands() == ["systemctl daemon-reload", "systemctl enable ofa-agent",
                            "systemctl start ofa-agent"]
    assert out.changes == ["ofa-agent enabled", "ofa-agent started"]


def test_wait_ready_fails_fast_on_failed_unit():
    t = RecordingTransport("n1")
    t.on("systemctl is-active ofa-agent || true", 0, "failed\ncurl: refused\n000")
    t.on(("journalctl",), 0, "Traceback\nImportError: no torch\n")
    with pytest.raises(OperationError, match="n1: ofa-agent is failed: Traceback | ImportError"):
        deploy.wait_ready(t, _node(), 30, poll_s=0.01)


def test_wait_ready_budget():
    t = RecordingTransport("n1")
    t.on("systemctl is-active ofa-agent || true", 0,
         'active\n{"ready":false,"reason":"loading"}\n503')
    with pytest.raises(OperationError, match=r"n1: not ready after 0.05 s \(last answer: "
                                             r"503 loading\)"):
        deploy.wait_ready(t, _node(), 0.05, poll_s=0.01)


# ------------------------------------------------------------------------------ LB configs


def _lb() -> SimpleNamespace:
    return SimpleNamespace(name="lb1", role="lb", address="10.0.0.10")


def _ctx() -> deploy.DeployContext:
    def validate(rf: Any, path: str) -> Any:
        if rf.dest.endswith("nginx.conf"):
            return ("nginx", "-t", "-q", "-c", path)
        if rf.dest.endswith("keepalived.conf"):
            return ("keepalived", "-t", "-f", path)
        return None

    return deploy.DeployContext(inv=None, validation_argv=validate)


NGINX = RF("/etc/nginx/nginx.conf", "events {}\n", service="nginx")
KA = RF("/etc/keepalived/keepalived.conf", "vrrp\n", 0o600, secret=True, service="keepalived")
LIVE = {"nginx": ("active", "enabled"), "keepalived": ("active", "enabled")}


def test_lb_validation_failure_leaves_live_config():
    t = RecordingTransport("lb1")
    t.on(("nginx", "-t"), 1, "", "nginx: [emerg] host not found in upstream \"x:8000\"")
    f = HostFacts(units=LIVE)
    with pytest.raises(OperationError) as e:
        deploy.push_lb_configs(t, _lb(), [NGINX, KA], f, _ctx(), HostOutcome())
    assert e.value.message == (
        "lb1: /etc/nginx/nginx.conf: validation failed, live config left as it was: "
        "nginx: [emerg] host not found in upstream \"x:8000\"")
    cmds = t.commands()
    assert not any(c.startswith("if [ -e") or "mv -fT /etc/nginx/nginx.conf.ofactl-new" in c
                   for c in cmds)
    assert cmds[-1] == ("rm -rf -- /etc/nginx/nginx.conf.ofactl-new "
                        "/etc/keepalived/keepalived.conf.ofactl-new")
    assert not any("reload" in c for c in cmds)


def test_lb_changed_nginx_only_reloads_nginx():
    t, out = RecordingTransport("lb1"), HostOutcome()
    f = HostFacts(units=LIVE, file_sha256={KA.dest: KA.sha256, NGINX.dest: "0" * 64})
    deploy.push_lb_configs(t, _lb(), [NGINX, KA], f, _ctx(), out)
    cmds = t.commands()
    assert "nginx -t -q -c /etc/nginx/nginx.conf.ofactl-new" in cmds
    assert ("if [ -e /etc/nginx/nginx.conf ]; then cp -pf /etc/nginx/nginx.conf "
            "/etc/nginx/nginx.conf.ofactl-bak; fi && mv -fT /etc/nginx/nginx.conf.ofactl-new "
            "/etc/nginx/nginx.conf") in cmds
    assert "systemctl reload nginx" in cmds
    assert not any("keepalived" in c and "reload" in c for c in cmds)
    assert not any("restart" in c for c in cmds)
    assert out.changes == ["/etc/nginx/nginx.conf updated", "nginx reloaded"]


def test_lb_unchanged_does_nothing():
    t, out = RecordingTransport("lb1"), HostOutcome()
    f = HostFacts(units=LIVE, file_sha256={KA.dest: KA.sha256, NGINX.dest: NGINX.sha256})
    deploy.push_lb_configs(t, _lb(), [NGINX, KA], f, _ctx(), out)
    assert t.calls == [] and out.changes == []


def test_lb_first_time_enables_services():
    t, out = RecordingTransport("lb1"), HostOutcome()
    f = HostFacts(units={"nginx": ("inactive", "disabled"), "keepalived": ("inactive",
                                                                          "disabled")})
    deploy.push_lb_configs(t, _lb(), [NGINX, KA], f, _ctx(), out)
    assert "systemctl enable --now nginx" in t.commands()
    assert "systemctl enable --now keepalived" in t.commands()


def test_lb_failed_reload_restores_backup():
    t = RecordingTransport("lb1")
    t.on(("systemctl", "is-active", "nginx"), 3, "failed\n")
    f = HostFacts(units=LIVE, file_sha256={KA.dest: KA.sha256})
    with pytest.raises(OperationError, match="lb1: nginx failed to take the new config; "
                                             "backup restored"):
        deploy.push_lb_configs(t, _lb(), [NGINX, KA], f, _ctx(), HostOutcome())
    cmds = t.commands()
    restore = ("if [ -e /etc/nginx/nginx.conf.ofactl-bak ]; then cp -pf "
               "/etc/nginx/nginx.conf.ofactl-bak /etc/nginx/nginx.conf; else rm -f "
               "/etc/nginx/nginx.conf; fi")
    assert restore in cmds and cmds.index(restore) < len(cmds) - 1
    assert cmds[-1] == "systemctl reload nginx"


def test_lb_dry_run_validates_on_host_from_tmp_and_changes_nothing():
    inner = RecordingTransport("lb1")
    t = DryRunTransport(inner)
    f = HostFacts(units=LIVE)
    deploy.push_lb_configs(t, _lb(), [NGINX, KA], f, _ctx(), HostOutcome())
    # only private temp files under /tmp reached the host (validated, then removed)
    assert all(p.startswith("/tmp/.ofactl-dry-") for p in inner.files)
    checks = [c for c in inner.commands() if c.startswith(("nginx -t", "keepalived -t"))]
    assert len(checks) == 2 and all(" /tmp/.ofactl-dry-" in c for c in checks)
    assert sum(c.startswith("rm -rf -- /tmp/.ofactl-dry-") for c in inner.commands()) == 2
    assert any(e.kind == "put" and e.text.startswith("/etc/nginx/nginx.conf.ofactl-new")
               for e in t.entries)
    bad = RecordingTransport("lb1")
    bad.on(("nginx", "-t"), 1, "", "nginx: [emerg] unknown directive \"bogus\"")
    with pytest.raises(OperationError, match="validation failed \\(dry run\\)"):
        deploy.push_lb_configs(DryRunTransport(bad), _lb(), [NGINX], f, _ctx(), HostOutcome())


# ------------------------------------------------------------------------------ run_deploy


class FakeInv:
    fleet = "f"

    def __init__(self, nodes: list[Any], lbs: list[Any]) -> None:
        self.nodes, self.lbs = nodes, lbs


def test_run_deploy_preflight_failure_stops_before_lock():
    n1, n2 = _node("n1"), _node("n2")
    fakes = {"n1": RecordingTransport("n1"), "n2": RecordingTransport("n2")}
    good = ("@@ofactl os\ndebian 12\nx86_64\n@@ofactl python\n3.11.2\n@@ofactl disk\n"
            "/dev/x 1 1 99999999 1% /\n@@ofactl systemd\nsystemd\nsystemd 252\n")
    fakes["n1"].on("@@ofactl os", 0, good)
    fakes["n2"].on("@@ofactl os", 0, good.replace("systemd\nsystemd 252", "tini\n"))
    ctx = deploy.DeployContext(FakeInv([n1, n2], []), render_host=lambda *a, **k: [])
    rep = deploy.run_deploy(ctx, [n1, n2], lambda h: fakes[h.name])
    assert not rep.ok
    assert rep.stopped == "preflight failed on 1 of 2 host(s)"
    assert [r["ok"] for r in rep.preflight] == [True, False]
    assert rep.preflight[1]["problems"] == ["systemd is not PID 1 (PID 1 is tini)"]
    assert all(len(t.commands()) == 1 for t in fakes.values())  # only the facts probe
    assert [r.status for r in rep.results] == ["skipped", "failed"]
    assert all(t.closed for t in fakes.values())


# ------------------------------------------------------------------------------ lock


def test_lock_acquire_and_release():
    t = RecordingTransport("lb1")
    t.on("mkdir -p /var/lib/ofactl", 0, "acquired\n")
    held = lock.FleetLock.acquire(t, command="deploy", fleet="f")
    assert "mkdir /var/lib/ofactl/fleet.lock" in t.commands()[0]
    held.release()
    assert t.commands()[-1].startswith(f"if grep -qF {held.info.token} ")


def _held_info(**kw: Any) -> str:
    d = dict(owner="alice", control_host="elsewhere", pid=1, command="deploy",
             started=time.time(), ttl_s=3600, token="t0k", fleet="f")
    d.update(kw)
    return json.dumps(d)


def test_lock_held_by_live_owner_refuses():
    t = RecordingTransport("lb1")
    t.on("mkdir -p /var/lib/ofactl", 0, "held\n" + _held_info())
    with pytest.raises(OperationError, match=r"lb1: the fleet is locked by alice on elsewhere "
                                             r"\(pid 1\) since .* running 'deploy'"):
        lock.FleetLock.acquire(t, command="deploy")


def test_lock_stale_by_ttl_or_dead_pid_is_broken():
    for info in (_held_info(started=time.time() - 7200),
                 _held_info(control_host=socket.gethostname(), pid=_dead_pid())):
        t = RecordingTransport("lb1")
        answers = iter(["held\n" + info, "acquired\n"])
        t.responses["mkdir -p /var/lib/ofactl"] = lambda cmd, a=answers: (0, next(a))
        held = lock.FleetLock.acquire(t, command="deploy")
        assert held.broke is not None and held.broke.token == "t0k"
        assert any(c.startswith("if grep -qF t0k ") for c in t.commands())


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


# ------------------------------------------------------------------------------ status


def _ns(name: str, **kw: Any) -> status.NodeStatus:
    d = dict(ssh=True, unit="active", ready=True, model_digest="a" * 64, release="r1")
    d.update(kw)
    return status.NodeStatus(name, **d)


def _lbs(holders: set[str]) -> list[status.LBStatus]:
    return [status.LBStatus(n, ssh=True, nginx="active", keepalived="active",
                            holds_vip=n in holders) for n in ("lb1", "lb2")]


VIPS = {"10.0.0.100/24": ["lb1", "lb2"]}


def test_assess_healthy():
    v, reasons, holders = status.assess([_ns("n1"), _ns("n2")], _lbs({"lb1"}), VIPS)
    assert (v, reasons, holders) == (0, [], {"10.0.0.100/24": ["lb1"]})


def test_assess_flags_stopped_agent_and_odd_digest():
    nodes = [_ns("n1"), _ns("n2", unit="inactive", ready=False, ready_reason="no answer"),
             _ns("n3", model_digest="b" * 64)]
    v, reasons, _ = status.assess(nodes, _lbs({"lb1"}), VIPS)
    assert v == 1
    assert reasons == ["n2: unit inactive", "n2: not ready (no answer)",
                       "n3: model digest bbbbbbbbbbbb differs (fleet: aaaaaaaaaaaa)"]


def test_assess_expected_digest_wins_over_majority():
    nodes = [_ns("n1"), _ns("n2")]
    v, reasons, _ = status.assess(nodes, _lbs({"lb1"}), VIPS, expected_digest="c" * 64)
    assert v == 1 and len(reasons) == 2


def test_assess_split_brain_and_no_holder():
    v, reasons, holders = status.assess([_ns("n1")], _lbs({"lb1", "lb2"}), VIPS)
    assert v == 1 and holders["10.0.0.100/24"] == ["lb1", "lb2"]
    assert reasons == ["VIP 10.0.0.100/24: 2 holders (lb1, lb2): split-brain"]
    v, reasons, _ = status.assess([_ns("n1")], _lbs(set()), VIPS)
    assert v == 2 and reasons == ["VIP 10.0.0.100/24: no holder (outage)"]


def test_assess_no_ready_node_is_down():
    v, reasons, _ = status.assess([_ns("n1", ready=False)], _lbs({"lb1"}), VIPS)
    assert v == 2 and reasons[-1] == "no node is ready"


def test_status_http_probe_of_loopback_agents():
    """http_probe_all against a tiny fake agent on loopback."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class H(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = {"/v2/health/ready": b'{"ready":true}',
                    "/v1/info": json.dumps({"device": "cpu", "release": "r9",
                                            "model": {"digest": "d" * 64}}).encode(),
                    "/metrics": b"ofa_agent_inflight 2\n"}.get(self.path, b"")
            self.send_response(200 if body else 404)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: Any) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        port = srv.server_address[1]
        out = status.http_probe_all([("a", "127.0.0.1", port)], timeout=5)
        assert out["a"]["ready"][0] == 200
        assert out["a"]["info"]["release"] == "r9"
        assert out["a"]["metrics"].inflight == 2
    finally:
        srv.shutdown()


# ------------------------------------------------------------------------------ model verify


def test_tree_problems():
    files = {"a": {"sha256": "1" * 64, "size": 1}, "b": {"sha256": "2" * 64, "size": 1}}
    from ofactl.manifest import digest_of

    raw = json.dumps({"files": files, "digest": digest_of(files)}).encode()
    d, p = tree_problems(raw, {"a": "1" * 64, "b": "2" * 64, "ofactl-manifest.json": "x"})
    assert d == digest_of(files) and p == []
    d, p = tree_problems(raw, {"a": "9" * 64, "c": "3" * 64})
    assert p == ["a: sha256 mismatch", "b: missing", "c: not in manifest"]
    assert tree_problems(None, {}) == ("", ["no ofactl-manifest.json"])


def test_executor_collects_failures_and_timings():
    def fn(h: str) -> HostOutcome:
        if h == "bad":
            raise OperationError("bad: broke", hint="fix it")
        o = HostOutcome()
        if h == "chg":
            o.change("did a thing")
        return o

    rs = run_parallel(["ok", "chg", "bad"], fn, parallel=3)
    assert [r.status for r in rs] == ["unchanged", "changed", "failed"]
    assert rs[2].error == "bad: broke" and rs[2].hint == "fix it"
    assert all(r.duration_s >= 0 for r in rs)


# ------------------------------------------------------------------------------ runtime


def test_runtime_fingerprint_match_is_skipped():
    t, out = RecordingTransport("n1"), HostOutcome()
    f = HostFacts(runtime_python=True, runtime_fingerprints=("fp1",))
    ctx = deploy.DeployContext(inv=None, runtime_fp="fp1")
    deploy.ensure_runtime(t, _node(), f, ctx, out)
    assert t.calls == [] and out.notes == ["runtime fp1 present"]


def test_runtime_present_without_stamp_checks_imports():
    t, out = RecordingTransport("n1"), HostOutcome()
    t.on(("/rt/bin/python", "-c"), 1, "", "ModuleNotFoundError: No module named 'torch'")
    ctx = deploy.DeployContext(inv=None, runtime_fp="fp1")
    with pytest.raises(OperationError, match="n1: runtime /rt lacks the agent's dependencies: "
                                             "ModuleNotFoundError"):
        deploy.ensure_runtime(t, _node(), HostFacts(runtime_python=True), ctx, out)
    assert t.commands() == ["/rt/bin/python -c 'import fastapi, uvicorn, prometheus_client, "
                            "PIL, torch, modelscope'"]


def test_runtime_index_install_pushes_requirements_and_stamps():
    node = _node()
    node.agent.runtime_source = "index"
    t, out = RecordingTransport("n1"), HostOutcome()
    ctx = deploy.DeployContext(inv=None, runtime_fp="fp1")
    deploy.ensure_runtime(t, node, HostFacts(), ctx, out)
    pushed = sorted(p for k, p in t.calls if k == "put")
    assert "/opt/ofa/runtime-src/agent-requirements.txt" in pushed
    assert "/opt/ofa/runtime-src/requirements-torch.txt" in pushed
    script = t.commands()[-1]
    assert script.startswith("set -e; [ -x /rt/bin/python ] || python3 -m venv /rt; ")
    assert "-r /opt/ofa/runtime-src/requirements-torch.txt" in script
    assert script.endswith("rm -f /rt/.ofa-runtime-*; touch /rt/.ofa-runtime-fp1")
    assert "--no-index" not in script
    assert out.changes == ["runtime fp1 installed from index"]


def test_runtime_wheelhouse_pushes_wheels_and_installs_offline(tmp_path):
    node = _node()
    node.agent.runtime_source = "wheelhouse"
    (tmp_path / "torch-1-py3-none-any.whl").write_bytes(b"w")
    t, out = RecordingTransport("n1"), HostOutcome()
    ctx = deploy.DeployContext(inv=None, runtime_fp="fp1", wheelhouse=tmp_path)
    deploy.ensure_runtime(t, node, HostFacts(), ctx, out)
    assert t.files["/opt/ofa/wheelhouse/torch-1-py3-none-any.whl"] == b"w"
    assert "--no-index --find-links /opt/ofa/wheelhouse " in t.commands()[-1]
    ctx.wheelhouse = None
    with pytest.raises(Exception, match="no wheelhouse dir was given"):
        deploy.ensure_runtime(RecordingTransport("n1"), node, HostFacts(), ctx, HostOutcome())


# ------------------------------------------------------------------------------ model pull


def test_model_pull_from_dir_keeps_source_manifest(tmp_path):
    from ofactl.manifest import read_manifest
    from ofactl.modelstore import import_dir

    src = tmp_path / "tiny"
    src.mkdir()
    (src / "config.json").write_text("{}\n")
    write_manifest(src, "ofactl/tiny", "seed0", random_weights=True)
    r = import_dir(src, tmp_path / "dest", model_id="iic/x", revision="v1")
    assert (r.model_id, r.revision, r.files, r.source) == ("ofactl/tiny", "seed0", 1, "dir")
    assert read_manifest(tmp_path / "dest").digest == read_manifest(src).digest
    (src / "config.json").write_text("tampered\n")
    with pytest.raises(OperationError, match="does not match its own manifest: config.json"):
        import_dir(src, tmp_path / "dest2", model_id="iic/x", revision="v1")


def test_model_pull_hub_pinned_revision_and_cache_fallback(tmp_path, monkeypatch):
    import sys
    import types

    calls = []

    def snapshot_download(model_id, revision=None, local_dir=None, local_files_only=False,
                          **kw):
        calls.append((model_id, revision, local_files_only))
        if not local_files_only:
            raise ConnectionError("no network")
        Path(local_dir).mkdir(parents=True, exist_ok=True)
        (Path(local_dir) / "config.json").write_text("{}\n")
        return local_dir

    mod = types.ModuleType("modelscope.hub.snapshot_download")
    mod.snapshot_download = snapshot_download  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "modelscope.hub.snapshot_download", mod)
    from ofactl.modelstore import pull_from_hub

    r = pull_from_hub("iic/ofa", "v1.0.1", tmp_path / "m")
    assert calls == [("iic/ofa", "v1.0.1", False), ("iic/ofa", "v1.0.1", True)]
    assert r.source == "hub-cache" and r.revision == "v1.0.1"
    assert (tmp_path / "m" / "ofactl-manifest.json").exists()


def test_hub_source_node_downloads_and_switches():
    t, out = RecordingTransport("n1"), HostOutcome()
    t.on(("/rt/bin/python", "-c"), 0, "Downloading...\n" + "e" * 64 + "\n")
    assert deploy.pull_model_on_node(t, _node(), "iic/ofa", "v1.0.1", out) is True
    cmds = t.commands()
    assert cmds[-2] == ("if [ -d /opt/ofa/models/eeeeeeeeeeee ]; then rm -rf "
                        "/opt/ofa/models/.hub-" + hashlib.sha256(b"v1.0.1").hexdigest()[:8]
                        + "; else mv -T /opt/ofa/models/.hub-"
                        + hashlib.sha256(b"v1.0.1").hexdigest()[:8]
                        + " /opt/ofa/models/eeeeeeeeeeee; fi")
    assert cmds[-1].startswith("ln -sfn models/eeeeeeeeeeee /opt/ofa/model.ofactl-tmp")
    # same id + revision live: nothing to do
    t2, out2 = RecordingTransport("n1"), HostOutcome()
    t2.files["/opt/ofa/model/ofactl-manifest.json"] = json.dumps(
        {"model_id": "iic/ofa", "revision": "v1.0.1"}).encode()
    assert deploy.pull_model_on_node(t2, _node(), "iic/ofa", "v1.0.1", out2) is False
    assert t2.commands() == []


def test_deploy_node_fresh_then_unchanged(local_model):
    node = _node()
    unit = RF("/etc/systemd/system/ofa-agent.service", "[Service]\n", service="ofa-agent")
    env = RF("/etc/ofa-agent/agent.env", "A=1\n", 0o640, service="ofa-agent")
    ctx = deploy.DeployContext(inv=None, release=_release(), model=local_model,
                               runtime_fp="fp1", render_host=lambda *a, **k: [unit, env])
    ctx.facts["n1"] = HostFacts(runtime_python=True, runtime_fingerprints=("fp1",))
    t = RecordingTransport("n1")
    t.on("systemctl is-active ofa-agent || true", 0, 'active\n{"ready":true}\n200')
    out = deploy.deploy_node(t, node, ctx)
    assert [c.split(" (")[0] for c in out.changes] == [
        "release 20260101000000-abcd1234 uploaded",
        f"2 of 2 files pushed to /opt/ofa/models/{local_model.digest12}",
        f"model -> models/{local_model.digest12}",
        "/etc/systemd/system/ofa-agent.service created", "/etc/ofa-agent/agent.env created",
        "ofa-agent enabled", "ofa-agent started"]
    assert list(out.data["steps_s"]) == list(deploy.STEP_NAMES)
    assert "systemctl daemon-reload" in t.commands()
    d12 = local_model.digest12
    assert ("printf '%s\\n' " + d12 + " > /opt/ofa/releases/20260101000000-abcd1234/"
            "ofactl-model.ofactl-tmp && mv -fT /opt/ofa/releases/20260101000000-abcd1234/"
            "ofactl-model.ofactl-tmp /opt/ofa/releases/20260101000000-abcd1234/ofactl-model"
            ) in t.commands()
    assert any(c.startswith("cd /opt/ofa/models && keep=") for c in t.commands())
    # the same node as it now is: nothing to do, no restart
    ctx.facts["n1"] = HostFacts(
        runtime_python=True, runtime_fingerprints=("fp1",),
        current="releases/20260101000000-abcd1234", releases=("20260101000000-abcd1234",),
        model=f"models/{d12}", models=(d12,),
        file_sha256={unit.dest: unit.sha256, env.dest: env.sha256,
                     f"/opt/ofa/models/{d12}/ofactl-manifest.json":
                         hashlib.sha256(local_model.manifest_bytes).hexdigest()},
        units={"ofa-agent": ("active", "enabled")})
    t2 = RecordingTransport("n1")
    t2.on("stat -c", 0, "9 config.json\n100 weights.bin\n")
    out2 = deploy.deploy_node(t2, node, ctx)
    assert out2.changes == []
    assert [c for c in t2.commands() if not c.startswith("cd ")] == []


def test_audit_line_and_read_back():
    t = RecordingTransport("lb1")
    lock.audit(t, {"command": "deploy", "ok": True})
    cmd = t.commands()[0]
    assert cmd.startswith("mkdir -p /var/lib/ofactl && printf '%s\\n' '{")
    assert cmd.endswith("' >> /var/lib/ofactl/audit.jsonl")
    assert '"command": "deploy"' in cmd and '"owner": ' in cmd
    t.on(("tail",), 0, '{"command": "deploy", "ok": true}\nnot json\n')
    assert lock.read_audit(t) == [{"command": "deploy", "ok": True}]
