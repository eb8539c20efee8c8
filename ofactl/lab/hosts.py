"""Lab hosts: an overlay of the machine's root, first-boot preparation, systemd-nspawn boot from
the host's own cgroup, out-of-band access (nsenter) and stop."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from ofactl.errors import LabError
from ofactl.lab import system
from ofactl.lab.plan import CGROUP_ROOT, HOST_RUNTIME, LabHost, LabPlan
from ofactl.lab.system import run

# Units of the build machine a fleet host must not run. Every enablement symlink the machine
# has is removed from the overlay as well; these masks cover units pulled in statically.
MASKED_UNITS = (
    "postgresql.service", "postgresql@.service", "prometheus.service",
    "prometheus-node-exporter.service", "docker.service", "docker.socket",
    "containerd.service", "cron.service", "anacron.service", "anacron.timer", "atd.service",
    "getty@.service", "serial-getty@.service", "console-getty.service", "container-getty@.service",
    "getty-static.service", "getty.target",
    "apt-daily.timer", "apt-daily-upgrade.timer", "apt-daily.service",
    "apt-daily-upgrade.service", "dpkg-db-backup.timer", "e2scrub_all.timer",
    "e2scrub_reap.service", "fstrim.timer", "man-db.timer", "logrotate.timer",
    "unattended-upgrades.service", "systemd-timesyncd.service", "machines.target",
    "var-lib-machines.mount", "systemd-networkd.service", "systemd-resolved.service",
    "networking.service", "ifupdown-pre.service", "rsyslog.service", "systemd-pstore.service",
)
# kept enabled in the host: its only service of its own is sshd
KEEP_ENABLED = ("ssh.service", "sshd.service")

SSHD_CONFIG = """\
# ofactl lab host {name}: key-only root login on the lab address
ListenAddress {address}
Port 22
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile .ssh/authorized_keys
UsePAM no
UseDNS no
X11Forwarding no
PrintMotd no
MaxStartups 64:30:128
MaxSessions 32
AcceptEnv LANG LC_*
Subsystem sftp /usr/lib/openssh/sftp-server
"""

SYSTEM_CONF = """\
# ofactl lab: bounded stops so `lab down` and restarts stay quick
[Manager]
DefaultTimeoutStartSec=60s
DefaultTimeoutStopSec=8s
"""

JOURNALD_CONF = """\
[Journal]
Storage=volatile
RuntimeMaxUse=32M
"""


def cgroup_rel(lab: str, host: str) -> str:
    """The host's cgroup, relative to every hierarchy."""
    return f"{CGROUP_ROOT}/{lab}/{host}"


def overlay_root(plan: LabPlan, host: LabHost) -> Path:
    """Where the host's root (an overlay of /) is mounted."""
    return plan.host_dir(host.name) / "root"


def mount_overlay(plan: LabPlan, host: LabHost) -> Path:
    """Mount an overlay of the machine's root for the host (idempotent)."""
    d = plan.host_dir(host.name)
    root, upper, work = d / "root", d / "upper", d / "work"
    for p in (root, upper, work):
        p.mkdir(parents=True, exist_ok=True)
    if not system.mounts_under(root):
        run(["mount", "-t", "overlay", f"ofalab-{host.name}", "-o",
             f"lowerdir=/,upperdir={upper},workdir={work}", str(root)], what=host.name)
    return root


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.write_text(text)
    os.chmod(path, mode)


def _unit_links(etc_systemd: Path) -> list[Path]:
    out: list[Path] = []
    for wants in etc_systemd.glob("*.wants"):
        out.extend(p for p in wants.iterdir() if p.is_symlink() or p.is_file())
    for wants in etc_systemd.glob("*.requires"):
        out.extend(p for p in wants.iterdir() if p.is_symlink() or p.is_file())
    return out


def prepare(plan: LabPlan, host: LabHost, pubkey: str) -> str:
    """First-boot preparation inside the overlay; returns the host's public host key line."""
    root = overlay_root(plan, host)
    etc = root / "etc"
    _write(etc / "machine-id", secrets.token_hex(16) + "\n", 0o444)
    _write(etc / "hostname", host.name + "\n")
    hosts_lines: list[str] = ["127.0.0.1\tlocalhost", f"127.0.1.1\t{host.name}", "::1\tlocalhost"]
    hosts_lines += [f"{h.address}\t{h.name}" for h in plan.hosts]
    _write(etc / "hosts", "\n".join(hosts_lines) + "\n")
    # ssh: a fresh host key, key-only login, the lab key for root
    ssh_dir = etc / "ssh"
    for old in ssh_dir.glob("ssh_host_*"):
        old.unlink()
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{host.name}", "-f",
         str(ssh_dir / "ssh_host_ed25519_key")], what=host.name)
    _write(ssh_dir / "sshd_config", SSHD_CONFIG.format(name=host.name, address=host.address))
    conf_d = ssh_dir / "sshd_config.d"
    if conf_d.is_dir():
        for f in conf_d.iterdir():
            f.unlink()
    (ssh_dir / "sshd_not_to_be_run").unlink(missing_ok=True)
    root_ssh = root / "root" / ".ssh"
    root_ssh.mkdir(parents=True, exist_ok=True)
    os.chmod(root_ssh, 0o700)
    _write(root_ssh / "authorized_keys", pubkey.strip() + "\n", 0o600)
    # systemd: nothing of the build machine runs; nginx/keepalived stay installed but disabled
    etc_systemd = etc / "systemd" / "system"
    for link in _unit_links(etc_systemd):
        if link.name not in KEEP_ENABLED:
            link.unlink()
    mu = etc_systemd / "multi-user.target.wants"
    mu.mkdir(parents=True, exist_ok=True)
    if not (mu / "ssh.service").exists():
        (mu / "ssh.service").symlink_to("/lib/systemd/system/ssh.service")
    for unit in MASKED_UNITS:
        target = etc_systemd / unit
        if target.is_symlink() or target.exists():
            if target.is_dir() and not target.is_symlink():
                continue
            target.unlink()
        target.symlink_to("/dev/null")
    # units other engineers' work may have installed on the machine are not the host's
    for stale in ("ofa-agent.service",):
        p = etc_systemd / stale
        if p.is_symlink() or p.is_file():
            p.unlink()
    _write(etc / "systemd" / "system.conf.d" / "ofactl-lab.conf", SYSTEM_CONF)
    _write(etc / "systemd" / "journald.conf.d" / "ofactl-lab.conf", JOURNALD_CONF)
    # Debian's default site listens on :80 too; deploy owns nginx.conf, the default must not matter
    default_site = etc / "nginx" / "sites-enabled" / "default"
    if default_site.is_symlink() or default_site.exists():
        default_site.unlink()
    # never let apt inside a host start daemons
    _write(root / "usr" / "sbin" / "policy-rc.d", "#!/bin/sh\nexit 101\n", 0o755)
    for stale_dir in (root / "opt" / "ofa", etc / "ofa-agent"):
        if stale_dir.exists() and stale_dir.is_dir():
            shutil.rmtree(stale_dir)
    pub = (ssh_dir / "ssh_host_ed25519_key.pub").read_text().split()
    return f"{pub[0]} {pub[1]}"


def _runtime_bind(plan: LabPlan) -> list[str]:
    """Bind the agent runtime venv read-only at its own path and at HOST_RUNTIME (the path the
    lab inventory names): the overlay shows the machine's files, but nspawn mounts a fresh /tmp
    and the agent unit runs with PrivateTmp, and a checkout may live under /tmp (as in CI)."""
    runtime = Path(plan.runtime)
    if not (runtime.is_absolute() and runtime.is_dir()):
        return []
    return [f"--bind-ro={runtime}", f"--bind-ro={runtime}:{HOST_RUNTIME}"]


def start(plan: LabPlan, host: LabHost) -> tuple[int, int | None]:
    """Boot the host with systemd-nspawn from its own cgroup; return (nspawn pid, starttime)."""
    procs = system.make_cgroup(cgroup_rel(plan.name, host.name))
    if not procs:
        raise LabError(f"{host.name}: no cgroup hierarchy is mounted under /sys/fs/cgroup",
                       hint="mount cgroup2 on /sys/fs/cgroup (or /sys/fs/cgroup/unified)")
    root = overlay_root(plan, host)
    log = plan.host_dir(host.name) / "console.log"
    # the wrapper joins the host's cgroup in every hierarchy before exec'ing nspawn: two
    # containers started from one cgroup would share a tree and kill each other's services
    script = 'for f in "$@"; do [ "$f" = -- ] && break; echo $$ > "$f" || exit 97; done; ' \
             'while [ "$1" != -- ]; do shift; done; shift; exec "$@"'
    argv = ["/bin/sh", "-c", script, "sh", *map(str, procs), "--",
            "systemd-nspawn", "-q", "-D", str(root), "--register=no", "--keep-unit",
            "--link-journal=no", "--console=read-only", "--capability=CAP_NET_ADMIN",
            f"--network-namespace-path=/run/netns/{host.netns}",
            f"--machine={plan.name}-{host.name}",
            f"--hostname={host.name}", *_runtime_bind(plan), "-b"]
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True, env=system.clean_env(), close_fds=True)
    return proc.pid, system.proc_starttime(proc.pid)


def nsenter_argv(init_pid: int, argv: list[str]) -> list[str]:
    """The command line running `argv` inside a host (all of its namespaces)."""
    return ["nsenter", "-t", str(init_pid), "-m", "-u", "-i", "-n", "-p", *argv]


def in_host(init_pid: int, argv: list[str], timeout: float = 10.0,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `argv` inside a host out-of-band (never through SSH); bounded by `timeout`.

    On timeout the whole process group (nsenter and the command inside the host) is killed and
    the result has returncode 124.
    """
    cmd = nsenter_argv(init_pid, argv)
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=system.clean_env(), start_new_session=True)
    try:
        out, err = proc.communicate(input=input, timeout=timeout)
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            out, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            out, err = "", ""
        return subprocess.CompletedProcess(cmd, 124, out or "",
                                           (err or "") + f"\ntimed out after {timeout:g} s")


def system_state(init_pid: int) -> str:
    """`systemctl is-system-running` inside the host ('running', 'starting', 'degraded', ...)."""
    proc = in_host(init_pid, ["systemctl", "is-system-running"], timeout=5)
    return proc.stdout.strip() or f"unknown ({proc.stderr.strip()[-80:]})"


def ssh_banner(address: str, timeout: float = 1.0) -> bool:
    """True when sshd answers with its banner on address:22."""
    try:
        with socket.create_connection((address, 22), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def stop(pid: int, starttime: int | None) -> None:
    """Ask nspawn to shut the container down cleanly (it forwards the kill signal to init)."""
    if system.alive(pid, starttime):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def wait_gone(pids: list[tuple[int, int | None]], timeout: float) -> bool:
    """Wait until none of the processes runs; True when they all ended in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(system.alive(p, st) for p, st in pids):
            return True
        time.sleep(0.05)
    return not any(system.alive(p, st) for p, st in pids)
