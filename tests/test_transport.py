"""Transport: result errors, dry-run recording and diffs, the recording fake, and the real SSH
transport against a throwaway sshd on loopback (skipped without root/sshd)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from ofactl.errors import OperationError, TransportError
from ofactl.transport import (
    DryRunTransport,
    RecordingTransport,
    Result,
    SSHTarget,
    SSHTransport,
    cmd_str,
    file_diff,
)


def test_cmd_str_quotes_argv():
    assert cmd_str(["echo", "a b", "$HOME"]) == "echo 'a b' '$HOME'"
    assert cmd_str("echo $HOME") == "echo $HOME"


def test_result_error_house_style():
    r = Result("node-07", "systemctl restart ofa-agent", 1, b"", b"line1\nJob failed\n")
    e = r.error()
    assert e.message == "node-07: 'systemctl restart ofa-agent' exited 1: line1\nJob failed"
    with pytest.raises(OperationError):
        r.check()
    assert Result("h", "true", 0).check().ok


def test_file_diff_text_and_secret_and_binary():
    d = file_diff(b"a\nb\n", b"a\nc\n", "/etc/x")
    assert d == "--- /etc/x\n+++ /etc/x\n@@ -1,2 +1,2 @@\n a\n-b\n+c\n"
    assert file_diff(b"same", b"same", "/x") == ""
    s = file_diff(b"old-secret", b"new-secret", "/etc/ofa-agent/token", secret=True)
    assert "new-secret" not in s and "old-secret" not in s
    assert "[REDACTED] secret file, content differs (10 bytes)" in s
    b = file_diff(None, b"\xff\x00\xfe", "/m/w.bin")
    assert b.startswith("--- /m/w.bin\n+++ /m/w.bin\nbinary file new: 3 bytes, sha256 ")


def test_dry_run_runs_probes_records_changes():
    inner = RecordingTransport("n1", files={"/etc/a": b"x\n"})
    inner.on(("cat",), 0, "probe-out")
    entries = []
    t = DryRunTransport(inner, on_entry=entries.append)
    assert t.run(["cat", "/etc/a"], timeout=5, readonly=True).stdout == "probe-out"
    r = t.run(["systemctl", "restart", "ofa-agent"], timeout=5)
    assert r.ok and r.dry_run
    t.put(b"y\n", "/etc/a", mode=0o600)
    t.put(b"s3cret", "/etc/ofa-agent/token", mode=0o600, secret=True)
    assert inner.commands() == ["cat /etc/a"]  # nothing else reached the host
    assert inner.files["/etc/a"] == b"x\n"
    assert [(e.kind, e.text) for e in t.entries] == [
        ("run", "systemctl restart ofa-agent"),
        ("put", "/etc/a (mode 0600)"),
        ("put", "/etc/ofa-agent/token (mode 0600)"),
    ]
    assert "-x\n+y\n" in t.entries[1].diff
    assert "s3cret" not in t.entries[2].diff
    assert entries == t.entries


def test_recording_longest_prefix_wins_and_check():
    t = RecordingTransport("n1")
    t.on(("systemctl",), 0, "generic")
    t.on(("systemctl", "is-active"), 3, "inactive\n")
    t.on("readlink", 0, "releases/x\n")
    assert t.run(["systemctl", "is-active", "x"], timeout=1, check=False).exit_code == 3
    assert t.run(["systemctl", "restart", "x"], timeout=1).stdout == "generic"
    assert t.run("readlink /opt/ofa/current", timeout=1).stdout == "releases/x\n"
    with pytest.raises(OperationError, match="n1: 'systemctl is-active y' exited 3"):
        t.run(["systemctl", "is-active", "y"], timeout=1)
    t.put(b"data", "/f", mode=0o640)
    assert t.get("/f") == b"data" and t.modes["/f"] == 0o640 and t.get("/nope") is None


# --------------------------------------------------------------------------- real sshd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A key-only sshd on 127.0.0.1:<random> for this module."""
    exe = shutil.which("sshd") or "/usr/sbin/sshd"
    if os.geteuid() != 0 or not os.path.exists(exe):
        pytest.skip("needs root and openssh-server")
    d = tmp_path_factory.mktemp("sshd")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host")],
                   check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "client")],
                   check=True)
    (d / "authorized_keys").write_text((d / "client.pub").read_text())
    os.chmod(d, 0o700)
    port = _free_port()
    cfg = d / "sshd_config"
    cfg.write_text(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host\n"
                   f"AuthorizedKeysFile {d}/authorized_keys\nPasswordAuthentication no\n"
                   "KbdInteractiveAuthentication no\nUsePAM no\nPermitRootLogin yes\n"
                   f"PidFile {d}/pid\nStrictModes no\n"
                   "Subsystem sftp /usr/lib/openssh/sftp-server\n")
    os.makedirs("/run/sshd", exist_ok=True)
    proc = subprocess.Popen([exe, "-D", "-e", "-f", str(cfg)], stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    host_pub = (d / "host.pub").read_text().split()
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    yield {"port": port, "dir": d}
    proc.terminate()
    proc.wait(timeout=10)


def _target(sshd, known_hosts: Path | None = None, **kw) -> SSHTarget:
    d = sshd["dir"]
    return SSHTarget(name="local", address="127.0.0.1", user="root", port=sshd["port"],
                     key_file=str(d / "client"),
                     known_hosts=str(known_hosts or d / "known_hosts"), connect_timeout=5, **kw)


def test_ssh_run_put_get(sshd, tmp_path):
    t = SSHTransport(_target(sshd))
    try:
        r = t.run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=10, check=False)
        assert (r.exit_code, r.stdout, r.stderr) == (3, "out\n", "err\n")
        assert t.run("cat", timeout=10, stdin=b"piped").stdout == "piped"
        dest = str(tmp_path / "f.conf")
        t.put(b"hello\n", dest, mode=0o600)
        assert Path(dest).read_bytes() == b"hello\n"
        assert oct(os.stat(dest).st_mode & 0o777) == "0o600"
        assert t.get(dest) == b"hello\n"
        assert t.get(str(tmp_path / "missing")) is None
    finally:
        t.close()


def test_ssh_timeout_and_background_job_do_not_hang(sshd):
    t = SSHTransport(_target(sshd))
    try:
        t0 = time.monotonic()
        with pytest.raises(TransportError, match="timed out after 1 s"):
            t.run(["sleep", "30"], timeout=1)
        assert time.monotonic() - t0 < 5
        # a background job holding stdout open: returns once the shell exits
        t0 = time.monotonic()
        r = t.run("sleep 20 & echo started", timeout=10)
        assert r.stdout.startswith("started") and time.monotonic() - t0 < 5
    finally:
        t.close()


def test_ssh_strict_host_key(sshd, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    t = SSHTransport(_target(sshd, known_hosts=empty))
    with pytest.raises(TransportError, match="host key is not in known_hosts"):
        t.run(["true"], timeout=5)
    t.close()
    # explicit opt-in: accepted and recorded; then strict mode knows it
    t = SSHTransport(_target(sshd, known_hosts=empty), accept_new_host_keys=True)
    assert t.run(["true"], timeout=5).ok
    t.close()
    assert "ssh-ed25519" in empty.read_text()
    t = SSHTransport(_target(sshd, known_hosts=empty))
    assert t.run(["true"], timeout=5).ok
    t.close()


def test_ssh_wrong_host_key_refused(sshd, tmp_path):
    other = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)],
                   check=True)
    pub = (tmp_path / "k.pub").read_text().split()
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{sshd['port']} {pub[0]} {pub[1]}\n")
    t = SSHTransport(_target(sshd, known_hosts=kh), accept_new_host_keys=True)
    with pytest.raises(TransportError, match="host key does not match known_hosts"):
        t.run(["true"], timeout=5)
    t.close()


def test_ssh_unreachable_is_a_transport_error(sshd):
    t = SSHTransport(SSHTarget(name="gone", address="127.0.0.1", port=_free_port(),
                               key_file=str(sshd["dir"] / "client"),
                               known_hosts=str(sshd["dir"] / "known_hosts"), connect_timeout=2))
    with pytest.raises(TransportError, match="gone .*cannot connect"):
        t.run(["true"], timeout=5)


def test_ssh_jump_host(sshd):
    """Through a jump host (the same sshd hopping to itself)."""
    d = sshd["dir"]
    t = SSHTransport(_target(sshd, jump_host=f"root@127.0.0.1:{sshd['port']}"))
    try:
        # the jump connection checks known_hosts too: entry is for [127.0.0.1]:port
        assert t.run(["echo", "via-jump"], timeout=10).stdout == "via-jump\n"
    finally:
        t.close()
    assert (d / "known_hosts").exists()


def test_ssh_config_host_alias(sshd, tmp_path):
    """HostName/Port/User/IdentityFile come from an OpenSSH client config."""
    d = sshd["dir"]
    cfg = tmp_path / "ssh_config"
    cfg.write_text(f"Host edge-1\n  HostName 127.0.0.1\n  Port {sshd['port']}\n  User root\n"
                   f"  IdentityFile {d}/client\n")
    t = SSHTransport(SSHTarget(name="edge-1", address="edge-1", port=1,
                               known_hosts=str(d / "known_hosts"), connect_timeout=5,
                               ssh_config=str(cfg)))
    try:
        assert t.run(["echo", "aliased"], timeout=10).stdout == "aliased\n"
    finally:
        t.close()
