"""The one I/O seam to hosts: SSH (paramiko), a dry-run wrapper and a recording fake.

Everything above this module talks to a host through the small `Transport` protocol:

    run(cmd, *, timeout, readonly=False, check=True, stdin=None) -> Result
    put(data, dest, *, mode, owner=None, group=None, secret=False, timeout) -> None
    get(path, *, timeout) -> bytes | None          (None when the file does not exist)
    close()

`cmd` is an argv sequence (quoted with shlex) or a shell string (run by the remote login shell;
only for pipelines built in `ofactl.commands`). `readonly=True` marks a probe that changes nothing:
the dry-run transport runs probes for real and only records everything else.

This is the only module that imports paramiko (fabric's Connection silently auto-adds unknown host
keys, so the SSH client is configured here by hand: strict known_hosts checking unless the caller
opts in with `accept_new_host_keys`).
"""

from __future__ import annotations

import difflib
import hashlib
import os
import select
import shlex
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import paramiko

from ofactl.errors import OperationError, TransportError

Cmd = Sequence[str] | str


def cmd_str(cmd: Cmd) -> str:
    """The exact shell text sent for cmd (argv is quoted with shlex.join)."""
    return cmd if isinstance(cmd, str) else shlex.join(cmd)


def _tail(text: str, lines: int = 5) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


@dataclass(frozen=True)
class Result:
    """What a remote command returned."""

    host: str
    cmd: str
    exit_code: int
    out: bytes = b""
    err: bytes = b""
    duration_s: float = 0.0
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        """True when the command exited 0."""
        return self.exit_code == 0

    @property
    def stdout(self) -> str:
        """stdout decoded as UTF-8 (bad bytes replaced)."""
        return self.out.decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        """stderr decoded as UTF-8 (bad bytes replaced)."""
        return self.err.decode("utf-8", "replace")

    def error(self) -> OperationError:
        """An OperationError in house style: `<host>: '<cmd>' exited N` + stderr tail."""
        short = self.cmd if len(self.cmd) <= 160 else self.cmd[:157] + "..."
        tail = _tail(self.stderr) or _tail(self.stdout)
        msg = f"{self.host}: '{short}' exited {self.exit_code}"
        if tail:
            msg += f": {tail}"
        return OperationError(msg, hint=f"look at the host: ssh {self.host} (or ofactl status)")

    def check(self) -> Result:
        """Return self when ok, else raise `self.error()`."""
        if not self.ok:
            raise self.error()
        return self


class Transport(Protocol):
    """One host. Every call carries a timeout; implementations never print."""

    host: str
    dry_run: bool

    def run(self, cmd: Cmd, *, timeout: float, readonly: bool = False, check: bool = True,
            stdin: bytes | None = None) -> Result:
        """Run a command; raise OperationError on non-zero exit when check, TransportError on
        connection problems or timeout."""
        ...

    def put(self, data: bytes | Path, dest: str, *, mode: int = 0o644, owner: str | None = None,
            group: str | None = None, secret: bool = False, timeout: float = 120.0) -> None:
        """Write a file atomically (temp file in the same directory, then rename)."""
        ...

    def get(self, path: str, *, timeout: float = 30.0) -> bytes | None:
        """Read a file; None when it does not exist."""
        ...

    def close(self) -> None:
        """Drop the connection (idempotent)."""
        ...


# --------------------------------------------------------------------------- SSH


@dataclass(frozen=True)
class SSHTarget:
    """Where and how to connect; built from an inventory host by `target_from_host`."""

    name: str
    address: str
    user: str = "root"
    port: int = 22
    key_file: str | None = None
    known_hosts: str | None = None
    jump_host: str | None = None  # "user@host:port"
    connect_timeout: float = 10.0
    sudo: bool = False
    ssh_config: str | None = None  # path to an OpenSSH client config (HostName/User/Port/...)


def target_from_host(host: Any, ssh_config: str | None = None) -> SSHTarget:
    """Build an SSHTarget from an inventory Node/LBHost (duck-typed: name, address, ssh)."""
    s = host.ssh
    return SSHTarget(
        name=host.name,
        address=str(host.address),
        user=getattr(s, "user", "root") or "root",
        port=int(getattr(s, "port", 22) or 22),
        key_file=str(s.key_file) if getattr(s, "key_file", None) else None,
        known_hosts=str(s.known_hosts) if getattr(s, "known_hosts", None) else None,
        jump_host=getattr(s, "jump_host", None) or None,
        connect_timeout=float(getattr(s, "connect_timeout", 10) or 10),
        sudo=bool(getattr(s, "sudo", False)),
        ssh_config=ssh_config,
    )


def _parse_jump(spec: str, default_user: str) -> tuple[str, str, int]:
    user, _, rest = spec.rpartition("@")
    host, _, port = rest.partition(":")
    if rest.startswith("["):  # [v6]:port
        host, _, port = rest[1:].partition("]:")
    return (user or default_user, host, int(port or 22))


class _AcceptNewPolicy(paramiko.MissingHostKeyPolicy):
    """Trust-on-first-use, only when the operator asked for it: add and save the key."""

    _lock = threading.Lock()

    def __init__(self, known_hosts: str | None) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        with self._lock:
            client.get_host_keys().add(hostname, key.get_name(), key)
            if self.known_hosts:
                line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
                path = Path(self.known_hosts).expanduser()
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "a") as f:
                    f.write(line)


class SSHTransport:
    """A paramiko connection to one host with strict host-key checking.

    Connects lazily on first use; `sudo` prefixes commands with `sudo -n` when the target user is
    not root. Thread-safe enough for one thread per host (the executor's model)."""

    dry_run = False

    def __init__(self, target: SSHTarget, *, accept_new_host_keys: bool = False) -> None:
        self.target = target
        self.host = target.name
        self.accept_new = accept_new_host_keys
        self._client: paramiko.SSHClient | None = None
        self._jump: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._lock = threading.Lock()

    # -- connection
    def _settings(self) -> tuple[str, str, int, str | None, str | None]:
        t = self.target
        hostname, user, port, key, jump = t.address, t.user, t.port, t.key_file, t.jump_host
        if t.ssh_config and Path(t.ssh_config).expanduser().exists():
            cfg = paramiko.SSHConfig.from_path(str(Path(t.ssh_config).expanduser()))
            o = cfg.lookup(t.name if t.name in cfg.get_hostnames() else t.address)
            hostname = o.get("hostname", hostname)
            user = o.get("user", user)
            port = int(o.get("port", port))
            if o.get("identityfile") and not key:
                key = o["identityfile"][0]
            jump = jump or o.get("proxyjump")
        return hostname, user, port, key, jump

    def _new_client(self) -> paramiko.SSHClient:
        c = paramiko.SSHClient()
        kh = self.target.known_hosts
        if kh and Path(kh).expanduser().exists():
            c.load_host_keys(str(Path(kh).expanduser()))
        elif kh is None:
            c.load_system_host_keys()
        if self.accept_new:
            c.set_missing_host_key_policy(_AcceptNewPolicy(kh))
        else:
            c.set_missing_host_key_policy(paramiko.RejectPolicy())
        return c

    def _connect(self) -> paramiko.SSHClient:
        if self._client is not None and self._client.get_transport() is not None \
                and self._client.get_transport().is_active():  # type: ignore[union-attr]
            return self._client
        hostname, user, port, key, jump = self._settings()
        to = self.target.connect_timeout
        key = str(Path(key).expanduser()) if key else None
        where = f"{self.host} ({user}@{hostname}:{port})"
        sock = None
        try:
            if jump:
                ju, jh, jp = _parse_jump(jump, user)
                self._jump = self._new_client()
                self._jump.connect(jh, port=jp, username=ju, key_filename=key, timeout=to,
                                   banner_timeout=to, auth_timeout=to, allow_agent=False,
                                   look_for_keys=key is None)
                jt = self._jump.get_transport()
                assert jt is not None
                sock = jt.open_channel("direct-tcpip", (hostname, port), ("127.0.0.1", 0),
                                       timeout=to)
            c = self._new_client()
            c.connect(hostname, port=port, username=user, key_filename=key, timeout=to,
                      banner_timeout=to, auth_timeout=to, channel_timeout=to,
                      allow_agent=False, look_for_keys=key is None, sock=sock)
        except paramiko.BadHostKeyException as e:
            raise TransportError(
                f"{where}: host key does not match known_hosts ({e.key.get_name()})",
                hint="the host was re-installed or someone is in the middle; check the key, "
                "then fix known_hosts",
            ) from None
        except paramiko.SSHException as e:
            if "not found in known_hosts" in str(e) or "known_hosts" in str(e):
                raise TransportError(
                    f"{where}: host key is not in known_hosts ({self.target.known_hosts})",
                    hint="verify the key, then add it or rerun with --accept-new-host-keys",
                ) from None
            raise TransportError(f"{where}: SSH failed: {e}",
                                 hint="check the key, user and sshd on the host") from None
        except TimeoutError:
            raise TransportError(f"{where}: connection timed out after {to:g} s",
                                 hint="is the host up and the address right?") from None
        except OSError as e:
            raise TransportError(f"{where}: cannot connect: {e.strerror or e}",
                                 hint="is the host up and sshd listening?") from None
        tr = c.get_transport()
        if tr is not None:
            tr.set_keepalive(15)
        self._client = c
        return c

    @property
    def _root(self) -> bool:
        return self.target.user == "root" or not self.target.sudo

    def _wrap(self, cmd: Cmd) -> str:
        text = cmd_str(cmd)
        if self._root:
            return text
        if isinstance(cmd, str):
            return "sudo -n sh -c " + shlex.quote(text)
        return "sudo -n -- " + text

    # -- commands
    def run(self, cmd: Cmd, *, timeout: float, readonly: bool = False, check: bool = True,
            stdin: bytes | None = None) -> Result:
        """Run cmd with a hard deadline; see Transport.run."""
        text = cmd_str(cmd)
        t0 = time.monotonic()
        client = self._connect()
        tr = client.get_transport()
        if tr is None:
            raise TransportError(f"{self.host}: SSH connection dropped")
        try:
            chan = tr.open_session(timeout=min(timeout, 30))
            chan.exec_command(self._wrap(cmd))
            if stdin is not None:
                chan.sendall(stdin)
            chan.shutdown_write()
            out, err = bytearray(), bytearray()
            deadline = t0 + timeout
            exited_at: float | None = None
            while True:
                got = False
                while chan.recv_ready():
                    out += chan.recv(65536)
                    got = True
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                    got = True
                now = time.monotonic()
                if chan.exit_status_ready():
                    # A background job that keeps our stdout open must not hang us: once the
                    # command exited, give its output a short grace and stop reading.
                    exited_at = exited_at or now
                    if (chan.eof_received and not got) or now - exited_at > 0.5:
                        break
                if now > deadline:
                    chan.close()
                    raise TransportError(
                        f"{self.host}: '{text[:120]}' timed out after {timeout:g} s",
                        hint="the host may be overloaded; rerun, or raise the timeout")
                # exit-status does not wake select(); poll faster once EOF arrived
                wait = 0.01 if chan.eof_received else 0.2
                select.select([chan], [], [], min(wait, max(0.0, deadline - now)))
            code = chan.recv_exit_status()
            chan.close()
        except (paramiko.SSHException, OSError, EOFError) as e:
            self.close()
            raise TransportError(f"{self.host}: SSH failed during '{text[:120]}': {e}") from None
        res = Result(self.host, text, code, bytes(out), bytes(err), time.monotonic() - t0)
        if check:
            res.check()
        return res

    def _sftp_client(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            self._sftp = self._connect().open_sftp()
        return self._sftp

    def put(self, data: bytes | Path, dest: str, *, mode: int = 0o644, owner: str | None = None,
            group: str | None = None, secret: bool = False, timeout: float = 120.0) -> None:
        """Upload to a temp name, chmod/chown, then `mv -fT` over dest (atomic)."""
        tmp_dir = os.path.dirname(dest) if self._root else "/tmp"
        tmp = f"{tmp_dir}/.{os.path.basename(dest)}.ofactl-{uuid.uuid4().hex[:8]}"
        try:
            sftp = self._sftp_client()
        except (paramiko.SSHException, EOFError):
            # no SFTP subsystem on the host: stream through `cat` instead
            body = data.read_bytes() if isinstance(data, Path) else data
            self.run(f"umask 077 && cat > {shlex.quote(tmp)}", timeout=timeout, stdin=body)
            from ofactl import commands

            self.run(commands.install_tmp(tmp, dest, mode, owner, group), timeout=timeout)
            return
        try:
            chan = sftp.get_channel()
            if chan is not None:
                chan.settimeout(timeout)
            with sftp.open(tmp, "wb") as f:
                f.set_pipelined(True)
                if isinstance(data, Path):
                    with open(data, "rb") as src:
                        while chunk := src.read(1 << 20):
                            f.write(chunk)
                else:
                    f.write(data)
            sftp.chmod(tmp, mode)
        except (OSError, paramiko.SSHException, EOFError) as e:
            self._sftp = None
            raise TransportError(f"{self.host}: upload to {dest} failed: {e}",
                                 hint="check free disk space and that the directory exists"
                                 ) from None
        from ofactl import commands  # local: commands is pure and imports nothing heavy

        self.run(commands.install_tmp(tmp, dest, mode, owner, group), timeout=timeout)

    def get(self, path: str, *, timeout: float = 30.0) -> bytes | None:
        """Read a remote file with `cat` (works with sudo too); None if missing."""
        res = self.run(["sh", "-c", 'test -e "$1" || exit 3; cat -- "$1"', "sh", path],
                       timeout=timeout, readonly=True, check=False)
        if res.exit_code == 3:
            return None
        res.check()
        return res.out

    def close(self) -> None:
        """Close SFTP, the connection and any jump connection."""
        for c in (self._sftp, self._client, self._jump):
            try:
                if c is not None:
                    c.close()
            except Exception:  # noqa: BLE001 - closing must never raise
                pass
        self._sftp = self._client = self._jump = None


# --------------------------------------------------------------------------- dry run

_TEXT_LIMIT = 256 * 1024


def file_diff(old: bytes | None, new: bytes, dest: str, *, secret: bool = False) -> str:
    """A unified diff of a file's change (secrets and binaries summarised, never shown)."""
    if old == new:
        return ""
    if secret:
        what = "new file" if old is None else "content differs"
        return f"--- {dest}\n+++ {dest}\n[REDACTED] secret file, {what} ({len(new)} bytes)\n"
    try:
        if len(new) > _TEXT_LIMIT or (old is not None and len(old) > _TEXT_LIMIT):
            raise UnicodeDecodeError("utf-8", b"", 0, 1, "large")
        a = (old or b"").decode().splitlines(keepends=True)
        b = new.decode().splitlines(keepends=True)
    except UnicodeDecodeError:
        sha = hashlib.sha256(new).hexdigest()[:12]
        what = "new" if old is None else "changed"
        return f"--- {dest}\n+++ {dest}\nbinary file {what}: {len(new)} bytes, sha256 {sha}\n"
    text = "".join(difflib.unified_diff(a, b, fromfile=dest if old is not None else "/dev/null",
                                        tofile=dest))
    return text if text.endswith("\n") else text + "\n"


@dataclass
class DryRunEntry:
    """One recorded action: a command that would run, or a file that would be written."""

    host: str
    kind: str  # "run" | "put"
    text: str  # the command, or the destination path
    diff: str = ""


class DryRunTransport:
    """Wrap a real transport: probes (readonly=True) run for real, everything else is recorded
    (exact command text; unified diffs of files, secrets redacted) and reported as succeeded.

    `on_entry` (optional) receives each DryRunEntry as it happens; all are kept in `entries`."""

    dry_run = True

    def __init__(self, inner: Transport | None, host: str | None = None,
                 on_entry: Callable[[DryRunEntry], None] | None = None) -> None:
        self.inner = inner
        self.host = host or (inner.host if inner is not None else "?")
        self.entries: list[DryRunEntry] = []
        self.on_entry = on_entry

    def _record(self, e: DryRunEntry) -> None:
        self.entries.append(e)
        if self.on_entry is not None:
            self.on_entry(e)

    def run(self, cmd: Cmd, *, timeout: float, readonly: bool = False, check: bool = True,
            stdin: bytes | None = None) -> Result:
        """Probes pass through; other commands are recorded and 'succeed'."""
        if readonly and self.inner is not None:
            return self.inner.run(cmd, timeout=timeout, readonly=True, check=check, stdin=stdin)
        text = cmd_str(cmd)
        self._record(DryRunEntry(self.host, "run", text))
        return Result(self.host, text, 0, dry_run=True)

    def put(self, data: bytes | Path, dest: str, *, mode: int = 0o644, owner: str | None = None,
            group: str | None = None, secret: bool = False, timeout: float = 120.0) -> None:
        """Record the write with a diff against the live file."""
        new = data.read_bytes() if isinstance(data, Path) else data
        old = None
        if self.inner is not None:
            try:
                old = self.inner.get(dest, timeout=timeout)
            except OperationError:
                old = None
        diff = file_diff(old, new, dest, secret=secret)
        meta = f"mode {mode:04o}" + (f" owner {owner}:{group or owner}" if owner else "")
        self._record(DryRunEntry(self.host, "put", f"{dest} ({meta})", diff))

    def get(self, path: str, *, timeout: float = 30.0) -> bytes | None:
        """Reads pass through (they change nothing)."""
        return None if self.inner is None else self.inner.get(path, timeout=timeout)

    def close(self) -> None:
        """Close the wrapped transport."""
        if self.inner is not None:
            self.inner.close()


# --------------------------------------------------------------------------- test fake


@dataclass
class RecordingTransport:
    """A fake host for tests: records every call, serves scripted answers, keeps files in memory.

    `responses` maps a command prefix (argv tuple, or a substring of a shell command) to a Result
    factory or a (exit_code, stdout[, stderr]) tuple; the longest matching prefix wins; an
    unmatched command succeeds with empty output. `files` is the host's file system for put/get.
    `handler(cmd_text) -> Result | None` is consulted first when set.
    """

    host: str = "fake"
    responses: dict[Any, Any] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    modes: dict[str, int] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    handler: Callable[[str], Result | None] | None = None
    dry_run: bool = False
    closed: bool = False

    def on(self, prefix: Any, exit_code: int = 0, stdout: str = "", stderr: str = "") -> None:
        """Script the answer to commands starting with prefix (argv tuple or string)."""
        self.responses[prefix] = (exit_code, stdout, stderr)

    def commands(self) -> list[str]:
        """The text of every command run so far, in order."""
        return [text for kind, text in self.calls if kind == "run"]

    def _match(self, cmd: Cmd) -> Any:
        text = cmd_str(cmd)
        best, best_len = None, -1
        for prefix, ans in self.responses.items():
            if isinstance(prefix, tuple):
                ok = not isinstance(cmd, str) and tuple(cmd[: len(prefix)]) == prefix
                n = len(cmd_str(prefix))
            else:
                ok = prefix in text
                n = len(prefix)
            if ok and n > best_len:
                best, best_len = ans, n
        return best

    def run(self, cmd: Cmd, *, timeout: float, readonly: bool = False, check: bool = True,
            stdin: bytes | None = None) -> Result:
        """Record and answer; see the class docstring."""
        text = cmd_str(cmd)
        self.calls.append(("run", text))
        res = self.handler(text) if self.handler else None
        if res is None:
            ans = self._match(cmd)
            if callable(ans):
                ans = ans(cmd)
            if isinstance(ans, Result):
                res = ans
            elif ans is None:
                res = Result(self.host, text, 0)
            else:
                code, out, *rest = ans
                err = (rest[0] if rest else "").encode()
                res = Result(self.host, text, code, out.encode(), err)
        if check:
            res.check()
        return res

    def put(self, data: bytes | Path, dest: str, *, mode: int = 0o644, owner: str | None = None,
            group: str | None = None, secret: bool = False, timeout: float = 120.0) -> None:
        """Store the bytes under dest."""
        self.calls.append(("put", dest))
        self.files[dest] = data.read_bytes() if isinstance(data, Path) else data
        self.modes[dest] = mode

    def get(self, path: str, *, timeout: float = 30.0) -> bytes | None:
        """Return stored bytes or None."""
        self.calls.append(("get", path))
        return self.files.get(path)

    def close(self) -> None:
        """Mark closed."""
        self.closed = True


TransportFactory = Callable[[Any], Transport]


def ssh_factory(*, accept_new_host_keys: bool = False, ssh_config: str | None = None,
                dry_run: bool = False,
                on_entry: Callable[[DryRunEntry], None] | None = None) -> TransportFactory:
    """A function inventory-host -> Transport (SSH; wrapped in DryRunTransport when dry_run)."""

    def make(host: Any) -> Transport:
        t: Transport = SSHTransport(target_from_host(host, ssh_config),
                                    accept_new_host_keys=accept_new_host_keys)
        if dry_run:
            t = DryRunTransport(t, on_entry=on_entry)
        return t

    return make
