"""Command builders: exact words."""

from ofactl import commands as c


def test_systemctl_builders():
    assert c.systemctl("restart", "ofa-agent") == ("systemctl", "restart", "ofa-agent")
    assert c.enable_now("nginx") == ("systemctl", "enable", "--now", "nginx")
    assert c.daemon_reload() == ("systemctl", "daemon-reload")
    assert c.is_active("keepalived") == ("systemctl", "is-active", "keepalived")
    assert c.journal_tail("ofa-agent", 5) == (
        "journalctl", "-u", "ofa-agent", "-n", "5", "--no-pager", "-o", "cat")


def test_nginx_keepalived_reload_not_restart():
    assert c.nginx_test("/etc/nginx/x.conf") == ("nginx", "-t", "-q", "-c", "/etc/nginx/x.conf")
    assert c.nginx_reload() == ("systemctl", "reload", "nginx")
    assert c.keepalived_test("/tmp/k.conf") == ("keepalived", "-t", "-f", "/tmp/k.conf")
    assert c.keepalived_reload() == ("systemctl", "reload", "keepalived")
    assert c.vip_addresses("eth0") == ("ip", "-o", "-4", "addr", "show", "dev", "eth0")


def test_atomic_symlink():
    assert c.atomic_symlink("releases/2026-ab", "/opt/ofa/current") == (
        "ln -sfn releases/2026-ab /opt/ofa/current.ofactl-tmp && "
        "mv -fT /opt/ofa/current.ofactl-tmp /opt/ofa/current")


def test_paths_are_quoted():
    cmd = c.atomic_symlink("models/a b", "/opt/o'fa/model")
    assert "'models/a b'" in cmd
    assert "'/opt/o'\"'\"'fa/model.ofactl-tmp'" in cmd


def test_install_tmp_same_dir():
    assert c.install_tmp("/etc/x/.a.ofactl-1", "/etc/x/a", 0o600, "root", "ofa") == (
        "chmod 0600 /etc/x/.a.ofactl-1 && chown root:ofa /etc/x/.a.ofactl-1 && "
        "mv -fT /etc/x/.a.ofactl-1 /etc/x/a")


def test_install_tmp_from_tmp_dir_for_sudo():
    cmd = c.install_tmp("/tmp/.a.ofactl-1", "/etc/x/a", 0o644)
    assert cmd == ("chmod 0644 /tmp/.a.ofactl-1 && cp -p /tmp/.a.ofactl-1 /etc/x/.a.ofactl-new "
                   "&& rm -f /tmp/.a.ofactl-1 && mv -fT /etc/x/.a.ofactl-new /etc/x/a")


def test_backup_restore():
    assert c.backup("/etc/nginx/nginx.conf") == (
        "if [ -e /etc/nginx/nginx.conf ]; then cp -pf /etc/nginx/nginx.conf "
        "/etc/nginx/nginx.conf.ofactl-bak; fi")
    assert c.restore("/etc/nginx/nginx.conf") == (
        "if [ -e /etc/nginx/nginx.conf.ofactl-bak ]; then cp -pf "
        "/etc/nginx/nginx.conf.ofactl-bak /etc/nginx/nginx.conf; else rm -f "
        "/etc/nginx/nginx.conf; fi")


def test_prune_keeps_named_and_newest():
    assert c.prune_dirs("/opt/ofa/releases", ["r2", "r1"], 3) == (
        "cd /opt/ofa/releases && ls -1 | grep -v 'ofactl-tmp$' | sort -r | tail -n +4 | "
        "grep -vxF -e r2 -e r1 | xargs -r rm -rf --")


def test_untar_via_temp_dir():
    assert c.untar("/r/.u.tgz", "/r/id") == (
        "rm -rf /r/id.ofactl-tmp && mkdir -p /r/id.ofactl-tmp && tar -xzf /r/.u.tgz -C "
        "/r/id.ofactl-tmp && rm -rf /r/id && mv -T /r/id.ofactl-tmp /r/id && rm -f /r/.u.tgz")


def test_hash_tree_and_check():
    assert c.hash_tree("/opt/ofa/model/") == (
        "cd /opt/ofa/model/ 2>/dev/null && find . -type f ! -name '*.ofactl-part' -print0 "
        "| sort -z | xargs -0 -r sha256sum -- || true")
    assert c.sha256_check("/m", "/m.sha") == "cd /m && sha256sum --quiet --strict -c /m.sha"


def test_curl_and_python_check():
    assert c.curl_status("http://127.0.0.1:8000/v2/health/ready", 2) == (
        "curl", "-sS", "--max-time", "2", "-w", "\n%{http_code}",
        "http://127.0.0.1:8000/v2/health/ready")
    assert c.python_check("/rt/bin/python", ["torch", "fastapi"]) == (
        "/rt/bin/python", "-c", "import torch, fastapi")


def test_prune_models_keeps_live_recorded_and_newest():
    cmd = c.prune_models("/opt/ofa", 2)
    assert cmd.startswith("cd /opt/ofa/models && keep=\" $(basename \"$(readlink /opt/ofa/model)\"")
    assert "$(cat /opt/ofa/releases/*/ofactl-model 2>/dev/null" in cmd
    assert "head -n 2" in cmd and "grep -xE '[0-9a-f]{12}'" in cmd
