"""Renderers: golden files, API shape, secrets, and validation by the real tools.

Tools: nginx (inside `unshare --net --mount`, so no upstream name is resolved over a network
and nothing is written to the machine's /run), keepalived -t (inside `unshare --net` with the
inventory's interfaces created as bridges), systemd-analyze verify (any output fails),
promtool check config/rules. A missing tool skips its test unless CI=true, where it fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ofactl import render
from ofactl.cli import app
from ofactl.errors import RenderError, UsageError
from ofactl.inventory import load_inventory
from ofactl.render import RenderedFile, render_all, render_host, validation_argv

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "inventory.example.yaml"
GOLDEN = Path(__file__).resolve().parent / "golden"
SECRETS = {"OFA_AGENT_TOKEN": "tok-Very-Secret-1", "OFA_VRRP_PASS_DC1": "pwDc1xyz",
           "OFA_VRRP_PASS_AWS": "pwAws123"}
IN_CI = os.environ.get("CI", "").lower() == "true"


def _need(*tools: str, root: bool = False) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    why = f"missing tool(s): {', '.join(missing)}" if missing else ""
    if root and os.geteuid() != 0:
        why = why or "needs root (unshare --net)"
    if why:
        if IN_CI:
            pytest.fail(f"{why} (CI=true: every validation must run)")
        pytest.skip(why)


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def example_files() -> dict[str, list[RenderedFile]]:
    return render_all(load_inventory(EXAMPLE, check_files=False))


@pytest.fixture(scope="module")
def local_inventory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example with agent.runtime = this Python's venv (systemd-analyze needs ExecStart)."""
    d = tmp_path_factory.mktemp("inv")
    data = yaml.safe_load(EXAMPLE.read_text())
    data["agent"]["runtime"] = sys.prefix
    p = d / "inventory.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


@pytest.fixture(scope="module")
def rendered_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`ofactl render -i inventory.example.yaml --out DIR --with-secrets` (secrets from env)."""
    out = tmp_path_factory.mktemp("out")
    mp = pytest.MonkeyPatch()
    for k, v in SECRETS.items():
        mp.setenv(k, v)
    try:
        result = CliRunner().invoke(
            app, ["render", "-i", str(EXAMPLE), "--out", str(out), "--with-secrets", "--json"])
    finally:
        mp.undo()
    assert result.exit_code == 0, result.output
    return out


# --------------------------------------------------------------------------- golden files


def _golden_items(files: dict[str, list[RenderedFile]]) -> dict[str, str]:
    items: dict[str, str] = {}
    meta: dict[str, list[dict[str, object]]] = {}
    for host, fs in files.items():
        meta[host] = []
        for f in fs:
            items[f"{host}{f.dest}"] = f.content
            meta[host].append({"dest": f.dest, "mode": f"{f.mode:04o}", "owner": f.owner,
                               "group": f.group, "secret": f.secret, "service": f.service})
    items["files.json"] = json.dumps(meta, indent=2) + "\n"
    return items


def test_golden(example_files: dict[str, list[RenderedFile]]) -> None:
    items = _golden_items(example_files)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        if GOLDEN.exists():
            shutil.rmtree(GOLDEN)
        for rel, content in items.items():
            p = GOLDEN / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(content, encoding="utf-8")
    on_disk = {str(p.relative_to(GOLDEN)): p.read_text(encoding="utf-8")
               for p in sorted(GOLDEN.rglob("*")) if p.is_file()}
    assert sorted(on_disk) == sorted(items), "file set changed: rerun with UPDATE_GOLDEN=1"
    for rel, content in items.items():
        assert on_disk[rel] == content, f"{rel} differs from tests/golden (UPDATE_GOLDEN=1)"


def test_golden_with_drained_node() -> None:
    inv = load_inventory(EXAMPLE, check_files=False)
    base = {f.dest: f for f in render_host(inv, "dc1-lb1")}
    drained = {f.dest: f for f in render_host(inv, "dc1-lb1",
                                              drained=frozenset({"aws-node1"}))}
    a = base[render.NGINX_CONF].content.splitlines()
    b = drained[render.NGINX_CONF].content.splitlines()
    diff = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
    assert diff == [(
        "        server 172.31.8.21:8000 weight=2 max_fails=2 fail_timeout=10s;  "
        "# aws-node1 (aws-euw1, public)",
        "        server 172.31.8.21:8000 weight=2 max_fails=2 fail_timeout=10s down;  "
        "# aws-node1 (aws-euw1, public) drained")]
    assert base[render.NGINX_CONF].sha256 != drained[render.NGINX_CONF].sha256
    # aws LBs proxy only their site: draining a dc1 node leaves them untouched.
    aws = render_host(inv, "aws-lb1", drained=frozenset({"dc1-node1"}))
    assert aws == render_host(inv, "aws-lb1")


# --------------------------------------------------------------------------- API shape


def test_files_per_host(example_files: dict[str, list[RenderedFile]]) -> None:
    got = {h: [(f.dest, f"{f.mode:04o}", f.service, f.secret) for f in fs]
           for h, fs in example_files.items()}
    node = [("/etc/systemd/system/ofa-agent.service", "0644", "ofa-agent", False),
            ("/etc/ofa-agent/agent.env", "0640", "ofa-agent", False),
            ("/etc/ofa-agent/token", "0600", "ofa-agent", True)]
    lb = [("/etc/nginx/nginx.conf", "0644", "nginx", False),
          ("/etc/keepalived/keepalived.conf", "0600", "keepalived", True),
          ("/etc/default/keepalived", "0644", "keepalived", False)]
    prom = [("/etc/prometheus/prometheus.yml", "0644", "prometheus", False),
            ("/etc/prometheus/file_sd/ofa-agents.json", "0644", None, False),
            ("/etc/prometheus/rules/ofactl.rules.yml", "0644", "prometheus", False)]
    assert got == {"dc1-node1": node, "dc1-node2": node, "aws-node1": node, "aws-node2": node,
                   "dc1-lb1": lb + prom, "dc1-lb2": lb, "aws-lb1": lb, "aws-lb2": lb}
    for fs in example_files.values():
        for f in fs:
            assert (f.owner, f.group) == ("root", "root")


def test_banner_on_every_file(example_files: dict[str, list[RenderedFile]]) -> None:
    for fs in example_files.values():
        for f in fs:
            if f.dest.endswith(".json") or f.dest == render.AGENT_TOKEN:
                continue  # JSON has no comments; the token file is the bare token
            first = f.content.splitlines()[0]
            assert first.startswith("# managed by ofactl — do not edit"), f.dest


def test_secrets_redacted_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    inv = load_inventory(EXAMPLE, check_files=False)
    plain = render_all(inv)
    secret = render_all(inv, secrets=True)
    blob = "".join(f.content + repr(f) for fs in plain.values() for f in fs)
    for v in SECRETS.values():
        assert v not in blob
    tok = {f.dest: f for f in secret["dc1-node1"]}[render.AGENT_TOKEN]
    assert tok.content == SECRETS["OFA_AGENT_TOKEN"]
    assert SECRETS["OFA_AGENT_TOKEN"] not in repr(tok)
    ka = {f.dest: f for f in secret["aws-lb2"]}[render.KEEPALIVED_CONF]
    assert "        auth_pass pwAws123\n" in ka.content
    plain_ka = {f.dest: f for f in plain["aws-lb2"]}[render.KEEPALIVED_CONF]
    assert "        auth_pass REDACTED\n" in plain_ka.content
    assert {f.dest: f for f in plain["dc1-node1"]}[render.AGENT_TOKEN].content == "[REDACTED]"


def test_missing_secret_and_long_vrrp_password(monkeypatch: pytest.MonkeyPatch) -> None:
    inv = load_inventory(EXAMPLE, check_files=False)
    monkeypatch.delenv("OFA_AGENT_TOKEN", raising=False)
    with pytest.raises(Exception) as info:
        render_host(inv, "dc1-node1", secrets=True)
    assert str(info.value) == "agent.token: environment variable OFA_AGENT_TOKEN is not set"
    monkeypatch.setenv("OFA_VRRP_PASS_DC1", "much-too-long")
    with pytest.raises(RenderError) as rinfo:
        render_host(inv, "dc1-lb1", secrets=True)
    assert rinfo.value.message == (
        "sites[0].lb.auth_pass: the VRRP password must be 1-8 characters without spaces, "
        "quotes, '#' or '!'")
    assert "much-too-long" not in rinfo.value.message + str(rinfo.value.hint)


def test_keepalived_roles(example_files: dict[str, list[RenderedFile]]) -> None:
    def conf(host: str) -> str:
        return {f.dest: f for f in example_files[host]}[render.KEEPALIVED_CONF].content

    assert "    state MASTER\n    interface eth0\n" in conf("dc1-lb1")
    assert "    state BACKUP\n" in conf("dc1-lb2") and "nopreempt" not in conf("dc1-lb2")
    for h in ("aws-lb1", "aws-lb2"):
        assert "    state BACKUP\n" in conf(h) and "    nopreempt\n" in conf(h)
        assert '    notify_master "/usr/local/bin/move-eip.sh"\n' in conf(h)
    assert "    unicast_src_ip 10.20.0.3\n    unicast_peer {\n        10.20.0.2  # dc1-lb1\n" \
        in conf("dc1-lb2")
    assert "        10.20.0.100/24 dev eth0\n" in conf("dc1-lb1")
    assert "    router_id dc1-lb2\n" in conf("dc1-lb2")


def test_unknown_drained_node_and_host() -> None:
    inv = load_inventory(EXAMPLE, check_files=False)
    with pytest.raises(UsageError) as info:
        render_host(inv, "dc1-lb1", drained=frozenset({"dc9-node1"}))
    assert info.value.message == (
        f"{EXAMPLE}: cannot drain unknown node(s): dc9-node1")
    with pytest.raises(UsageError):
        render_host(inv, "nope")


def test_validation_argv(example_files: dict[str, list[RenderedFile]]) -> None:
    by = {f.dest: f for fs in example_files.values() for f in fs}
    assert validation_argv(by[render.NGINX_CONF], "/etc/nginx/.new") == (
        "nginx", "-t", "-q", "-c", "/etc/nginx/.new")
    assert validation_argv(by[render.KEEPALIVED_CONF], "/tmp/k") == (
        "keepalived", "-t", "-f", "/tmp/k")
    assert validation_argv(by[render.AGENT_UNIT], "/tmp/x/ofa-agent.service") == (
        "systemd-analyze", "verify", "/tmp/x/ofa-agent.service")
    assert validation_argv(by[render.PROM_CONF], "/etc/prometheus/p.yml") == (
        "promtool", "check", "config", "/etc/prometheus/p.yml")
    assert validation_argv(by[render.PROM_RULES], "/r.yml") == (
        "promtool", "check", "rules", "/r.yml")
    for dest in (render.AGENT_ENV, render.AGENT_TOKEN, render.KEEPALIVED_DEFAULT,
                 render.PROM_FILE_SD):
        assert validation_argv(by[dest], "/x") is None


def test_template_error_names_file_and_line(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "undefined.j2").write_text("line one\nport {{ port }}\n")
    (tmp_path / "bad" / "syntax.j2").write_text("a\nb {% if %}\n")
    monkeypatch.setattr(render, "TEMPLATES_DIR", tmp_path)
    monkeypatch.setattr(render, "_env", None)
    with pytest.raises(RenderError) as info:
        render.render_template("bad/undefined.j2")
    assert info.value.message == "templates/bad/undefined.j2:2: 'port' is undefined"
    with pytest.raises(RenderError) as info:
        render.render_template("bad/syntax.j2")
    assert info.value.message.startswith("templates/bad/syntax.j2:2: ")
    monkeypatch.setattr(render, "_env", None)


def test_nginx_settings(example_files: dict[str, list[RenderedFile]]) -> None:
    conf = {f.dest: f for f in example_files["dc1-lb1"]}[render.NGINX_CONF].content
    for line in ("client_max_body_size 8388608;", "proxy_read_timeout 40s;",
                 "proxy_http_version 1.1;", 'proxy_set_header Connection "";',
                 "proxy_next_upstream error timeout http_502 http_503 non_idempotent;",
                 "proxy_next_upstream_tries 3;", "keepalive 32;", "listen 127.0.0.1:81;",
                 "location = /ofactl-health {", "include /etc/nginx/mime.types;",
                 "user www-data;", "pid /run/nginx.pid;", "listen 80 default_server;"):
        assert line in conf, line
    assert "sites-enabled" not in conf and "conf.d" not in conf
    servers = re.findall(r"^\s+server (\S+) weight=(\d+)", conf, re.M)
    assert servers == [("10.20.0.11:8000", "3"), ("10.20.0.12:8000", "3"),
                       ("172.31.8.21:8000", "2"), ("172.31.8.22:8000", "2")]


def test_render_cli(tmp_path: Path, rendered_out: Path) -> None:
    result = CliRunner().invoke(app, ["render", "-i", str(EXAMPLE), "--host", "aws-node2"])
    assert result.exit_code == 0, result.output
    assert "ExecStart=/opt/ofa/runtime/bin/python -m ofa_agent" in result.stdout
    res = CliRunner().invoke(app, ["render", "-i", str(EXAMPLE), "--with-secrets"])
    assert res.exit_code == 2 and res.stderr.startswith("error: --with-secrets needs --out DIR")
    ka = rendered_out / "dc1-lb1" / "etc/keepalived/keepalived.conf"
    assert oct(ka.stat().st_mode & 0o777) == "0o600"
    assert oct((rendered_out / "dc1-node1/etc/ofa-agent/agent.env").stat().st_mode
               & 0o777) == "0o640"
    res = CliRunner().invoke(app, ["render", "-i", str(EXAMPLE), "--out", str(tmp_path),
                                   "--json", "--host", "dc1-lb2"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["files"]
    assert [r["dest"] for r in rows] == ["/etc/nginx/nginx.conf",
                                         "/etc/keepalived/keepalived.conf",
                                         "/etc/default/keepalived"]
    assert "auth_pass REDACTED" in (tmp_path / "dc1-lb2/etc/keepalived/keepalived.conf"
                                    ).read_text()


# --------------------------------------------------------------------------- real tools


LBS = ("dc1-lb1", "dc1-lb2", "aws-lb1", "aws-lb2")
NODES = ("dc1-node1", "dc1-node2", "aws-node1", "aws-node2")


@pytest.mark.parametrize("host", LBS)
def test_nginx_accepts(host: str, rendered_out: Path) -> None:
    _need("nginx", "unshare", root=True)
    conf = rendered_out / host / "etc/nginx/nginx.conf"
    # Private /run and log dir: `nginx -t` must not touch the machine's pid file or logs.
    script = ("mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /var/log/nginx && "
              'exec nginx -t -q -c "$1"')
    r = _run(["unshare", "--net", "--mount", "sh", "-c", script, "sh", str(conf)])
    assert (r.returncode, r.stdout + r.stderr) == (0, "")


@pytest.mark.parametrize("host", LBS)
def test_keepalived_accepts(host: str, rendered_out: Path) -> None:
    _need("keepalived", "unshare", "ip", root=True)
    conf = rendered_out / host / "etc/keepalived/keepalived.conf"
    iface = re.search(r"^\s+interface (\S+)$", conf.read_text(), re.M)
    assert iface is not None
    # An empty namespace that has the inventory's interface (keepalived -t checks it exists).
    script = 'ip link add "$1" type bridge && exec keepalived -t -f "$2"'
    r = _run(["unshare", "--net", "sh", "-c", script, "sh", iface.group(1), str(conf)])
    assert (r.returncode, r.stdout + r.stderr) == (0, "")


def test_keepalived_rejects_garbage(tmp_path: Path) -> None:
    _need("keepalived")
    bad = tmp_path / "k.conf"
    bad.write_text("vrrp_instance X {\n  state MASTER\n  virtual_router_id 999\n}\n")
    r = _run(["keepalived", "-t", "-f", str(bad)])
    assert r.returncode != 0  # the checker does fail on a broken file


@pytest.mark.parametrize("host", NODES)
def test_systemd_analyze_accepts(host: str, local_inventory: Path, tmp_path: Path) -> None:
    _need("systemd-analyze")
    inv = load_inventory(local_inventory, check_files=False)
    unit = {f.dest: f for f in render_host(inv, host)}[render.AGENT_UNIT]
    path = tmp_path / "ofa-agent.service"
    path.write_text(unit.content)
    r = _run(["systemd-analyze", "verify", str(path)])
    assert (r.returncode, r.stdout + r.stderr) == (0, "")


def test_systemd_unit_settings(example_files: dict[str, list[RenderedFile]]) -> None:
    unit = {f.dest: f for f in example_files["dc1-node1"]}[render.AGENT_UNIT].content
    for line in ("Type=simple", "ExecStart=/opt/ofa/runtime/bin/python -m ofa_agent",
                 "Environment=PYTHONPATH=/opt/ofa/current",
                 "EnvironmentFile=/etc/ofa-agent/agent.env", "Restart=on-failure",
                 "TimeoutStopSec=35", "KillSignal=SIGTERM", "NoNewPrivileges=yes",
                 "ProtectSystem=full", "ProtectHome=read-only", "PrivateTmp=yes",
                 "LimitNOFILE=65536", "WantedBy=multi-user.target"):
        assert f"\n{line}\n" in unit, line
    env = {f.dest: f for f in example_files["dc1-node1"]}[render.AGENT_ENV].content
    for line in ("OFA_AGENT_NODE_NAME=dc1-node1", "OFA_AGENT_MODEL_DIR=/opt/ofa/model",
                 "OFA_AGENT_TOKEN_FILE=/etc/ofa-agent/token", "OFA_AGENT_PORT=8000",
                 "OFA_AGENT_DEVICE=cuda", "OFA_AGENT_DTYPE=float16",
                 "OFA_AGENT_MAX_BODY_BYTES=8388608"):
        assert f"\n{line}\n" in env, line


def test_promtool_accepts(rendered_out: Path) -> None:
    _need("promtool")
    prom = rendered_out / "dc1-lb1" / "etc/prometheus"
    r = _run(["promtool", "check", "config", str(prom / "prometheus.yml")])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 1 rule files found" in r.stdout
    r = _run(["promtool", "check", "rules", str(prom / "rules/ofactl.rules.yml")])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 6 rules found" in r.stdout
    sd = json.loads((prom / "file_sd/ofa-agents.json").read_text())
    assert [t["targets"] for t in sd] == [["10.20.0.11:8000"], ["10.20.0.12:8000"],
                                         ["172.31.8.21:8000"], ["172.31.8.22:8000"]]
    assert sd[2]["labels"]["node"] == "aws-node1"
    assert sd[2]["labels"]["site"] == "aws-euw1" and sd[2]["labels"]["cloud"] == "public"


def test_promtool_rejects_garbage(tmp_path: Path) -> None:
    _need("promtool")
    bad = tmp_path / "r.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - alert: A\n        expr: rate(\n")
    assert _run(["promtool", "check", "rules", str(bad)]).returncode != 0


def test_alert_thresholds(example_files: dict[str, list[RenderedFile]]) -> None:
    rules = yaml.safe_load({f.dest: f for f in example_files["dc1-lb1"]}[
        render.PROM_RULES].content)
    by = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    assert set(by) == {"OfaAgentP99LatencyHigh", "OfaAgentErrorRatioHigh",
                       "OfaAgentGpuMemoryHigh", "OfaAgentNotReady", "OfactlVipFlapping",
                       "OfactlVipDown"}
    assert by["OfaAgentP99LatencyHigh"]["expr"].endswith(") > 1")
    assert "histogram_quantile(0.99" in by["OfaAgentP99LatencyHigh"]["expr"]
    assert by["OfaAgentP99LatencyHigh"]["labels"]["severity"] == "warning"
    assert by["OfaAgentErrorRatioHigh"]["expr"].endswith("> 0.05")
    assert by["OfaAgentErrorRatioHigh"]["labels"]["severity"] == "warning"
    assert by["OfaAgentGpuMemoryHigh"]["expr"] == (
        "ofa_agent_gpu_memory_used_bytes / ofa_agent_gpu_memory_total_bytes > 0.85")
    assert by["OfaAgentGpuMemoryHigh"]["labels"]["severity"] == "critical"
    assert by["OfactlVipFlapping"]["expr"] == "changes(ofactl_vip_holder[15m]) > 2"


# --------------------------------------------------------------------------- live behaviour

_LIVE_NGINX = r"""
set -e
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /var/log/nginx
ip link set lo up
nginx -c "$1"
for i in $(seq 1 50); do curl -fsS -o /dev/null http://127.0.0.1:81/ofactl-health 2>/dev/null \
  && break; sleep 0.1; done
echo "health=$(curl -sS http://127.0.0.1:81/ofactl-health)"
curl -fsS http://127.0.0.1:80/ofactl-vip > /run/m.txt
promtool check metrics < /run/m.txt
echo "vip=$(grep -v '^#' /run/m.txt)"
echo "other=$(curl -sS -o /dev/null -w '%{http_code}' http://127.0.0.1:81/other)"
echo "proxy=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 20 http://127.0.0.1:80/v1/info)"
nginx -c "$1" -s stop
"""


def test_nginx_serves_health_and_vip_metric(rendered_out: Path) -> None:
    """The rendered nginx.conf, running in an empty namespace, answers what keepalived and
    Prometheus ask for (the upstream is unreachable there, hence 502)."""
    _need("nginx", "unshare", "ip", "curl", "promtool", root=True)
    conf = rendered_out / "dc1-lb1" / "etc/nginx/nginx.conf"
    r = subprocess.run(["unshare", "--net", "--mount", "--pid", "--fork", "sh", "-c",
                        _LIVE_NGINX, "sh", str(conf)],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [x for x in r.stdout.splitlines() if "=" in x and not x.startswith(" ")]
    assert lines == ["health=ok", 'vip=ofactl_vip_holder{site="dc1"} 150', "other=404",
                     "proxy=502"], r.stdout


_LIVE_VRRP = r"""
set -e
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /var/log/nginx
ip link set lo up
ip link add "$3" type bridge
ip addr add "$4" dev "$3"
ip link set "$3" up
nginx -c "$1"
keepalived --vrrp --dont-fork --log-console --no-syslog -f "$2" -p /run/ka.pid \
  -r /run/vrrp.pid > /run/ka.log 2>&1 &
for i in $(seq 1 100); do ip -o addr show dev "$3" | grep -q " $5 " && break; sleep 0.1; done
echo "after-start: $(ip -o -4 addr show dev "$3" | awk '{print $4}' | tr '\n' ' ')"
nginx -c "$1" -s stop
for i in $(seq 1 60); do ip -o addr show dev "$3" | grep -q " $5 " || break; sleep 0.1; done
echo "after-nginx-stop: $(ip -o -4 addr show dev "$3" | awk '{print $4}' | tr '\n' ' ')"
kill "$(cat /run/ka.pid)"; sleep 0.5
cat /run/ka.log
"""


def test_keepalived_takes_vip_and_tracks_nginx(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The rendered keepalived.conf (real password) takes the VIP as MASTER, and gives it
    up when chk_nginx fails."""
    _need("nginx", "keepalived", "unshare", "ip", "curl", root=True)
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    inv = load_inventory(EXAMPLE, check_files=False)
    files = {f.dest: f for f in render_host(inv, "dc1-lb1", secrets=True)}
    (tmp_path / "nginx.conf").write_text(files[render.NGINX_CONF].content)
    ka = tmp_path / "keepalived.conf"
    ka.write_text(files[render.KEEPALIVED_CONF].content)
    ka.chmod(0o600)
    r = subprocess.run(["unshare", "--net", "--mount", "--pid", "--fork", "sh", "-c",
                        _LIVE_VRRP, "sh", str(tmp_path / "nginx.conf"), str(ka), "eth0",
                        "10.20.0.2/24", "10.20.0.100/24"],
                       capture_output=True, text=True, timeout=90, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "after-start: 10.20.0.2/24 10.20.0.100/24 \n" in r.stdout, r.stdout
    assert "after-nginx-stop: 10.20.0.2/24 \n" in r.stdout, r.stdout
    assert "(VI_dc1) Entering MASTER STATE" in r.stdout
    assert "VRRP_Script(chk_nginx) failed" in r.stdout
    assert "(VI_dc1) Entering FAULT STATE" in r.stdout
    assert SECRETS["OFA_VRRP_PASS_DC1"] not in r.stdout + r.stderr


def test_agent_env_is_understood_by_the_agent(example_files: dict[str, list[RenderedFile]],
                                              tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Every OFA_AGENT_* line of agent.env parses with the agent's own settings loader."""
    monkeypatch.syspath_prepend(str(REPO / "agent"))
    config = pytest.importorskip("ofa_agent.config")
    env = {}
    for f in example_files["dc1-node1"]:
        if f.dest == render.AGENT_ENV:
            for line in f.content.splitlines():
                if line and not line.startswith("#"):
                    key, value = line.split("=", 1)
                    env[key] = value
    known = {"OFA_AGENT_" + name.upper() for name in config._OPTIONS}
    assert set(env) <= known, set(env) - known
    (tmp_path / "token").write_text("t\n")
    env["OFA_AGENT_MODEL_DIR"] = str(tmp_path)  # the node's paths do not exist here
    env["OFA_AGENT_TOKEN_FILE"] = str(tmp_path / "token")
    s = config.load_settings([], env)
    assert (s.node_name, s.port, s.device, s.max_batch_size) == ("dc1-node1", 8000, "cuda", 8)


def test_ipv6_fleet_passes_the_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An IPv6 LB pair: bracketed upstreams and scrape targets, a wildcard [::]:80 listener
    (a BACKUP does not hold the VIP, so nginx must not bind it)."""
    _need("nginx", "keepalived", "promtool", "unshare", "ip", root=True)
    data = yaml.safe_load(EXAMPLE.read_text())
    lb = data["sites"][0]["lb"]
    lb["vip"] = "fd00::100/64"
    lb["members"][0]["address"], lb["members"][1]["address"] = "fd00::2", "fd00::3"
    data["sites"][0]["nodes"][0]["address"] = "fd00::11"
    (tmp_path / "inv.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    inv = load_inventory(tmp_path / "inv.yaml", check_files=False)
    for host in ("dc1-lb1", "dc1-lb2"):
        files = {f.dest: f for f in render_host(inv, host, secrets=True)}
        nginx = tmp_path / f"{host}-nginx.conf"
        nginx.write_text(files[render.NGINX_CONF].content)
        assert "server [fd00::11]:8000 weight=3" in nginx.read_text()
        assert "listen [::]:80 default_server;" in nginx.read_text()
        script = ("mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /var/log/nginx && "
                  'exec nginx -t -q -c "$1"')
        r = _run(["unshare", "--net", "--mount", "sh", "-c", script, "sh", str(nginx)])
        assert (r.returncode, r.stdout + r.stderr) == (0, "")
        ka = tmp_path / f"{host}-keepalived.conf"
        ka.write_text(files[render.KEEPALIVED_CONF].content)
        r = _run(["unshare", "--net", "sh", "-c",
                  'ip link add eth0 type bridge && exec keepalived -t -f "$1"', "sh", str(ka)])
        assert (r.returncode, r.stdout + r.stderr) == (0, "")
    prom = {f.dest: f for f in render_host(inv, "dc1-lb1")}
    pdir = tmp_path / "prometheus"
    for dest in (render.PROM_CONF, render.PROM_RULES, render.PROM_FILE_SD):
        p = pdir / dest.removeprefix("/etc/prometheus/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(prom[dest].content)
    assert '- targets: ["[fd00::100]:80"]' in prom[render.PROM_CONF].content
    r = _run(["promtool", "check", "config", str(pdir / "prometheus.yml")])
    assert r.returncode == 0, r.stdout + r.stderr
