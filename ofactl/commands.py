"""Pure builders of remote commands: argv tuples (or, for a few pipelines, one shell string).

Nothing here runs anything; tests assert the exact words. Shell strings are used only where a
pipeline or `||` is needed, and every path in them goes through shlex.quote.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

Argv = tuple[str, ...]


def cmd_join(argv: Sequence[str]) -> str:
    """argv -> one shell-quoted string (shlex.join)."""
    return shlex.join(argv)


def q(s: str) -> str:
    """shlex.quote, short name for the few shell strings built here."""
    return shlex.quote(s)


# ---------------------------------------------------------------- systemd


def systemctl(action: str, *units: str) -> Argv:
    """`systemctl ACTION UNIT...` (start, stop, restart, reload, enable, disable, ...)."""
    return ("systemctl", action, *units)


def daemon_reload() -> Argv:
    """`systemctl daemon-reload` after a unit file changed."""
    return ("systemctl", "daemon-reload")


def enable_now(unit: str) -> Argv:
    """`systemctl enable --now UNIT` (first-time enable and start)."""
    return ("systemctl", "enable", "--now", unit)


def is_active(unit: str) -> Argv:
    """`systemctl is-active UNIT` (prints active/inactive/failed; exit 0 only when active)."""
    return ("systemctl", "is-active", unit)


def is_enabled(unit: str) -> Argv:
    """`systemctl is-enabled UNIT`."""
    return ("systemctl", "is-enabled", unit)


def journal_tail(unit: str, lines: int = 20) -> Argv:
    """The last lines of a unit's journal, for error messages."""
    return ("journalctl", "-u", unit, "-n", str(lines), "--no-pager", "-o", "cat")


# ---------------------------------------------------------------- nginx / keepalived


def nginx_test(conf: str | None = None) -> Argv:
    """`nginx -t [-c CONF]` (validate)."""
    return ("nginx", "-t", "-q") if conf is None else ("nginx", "-t", "-q", "-c", conf)


def nginx_reload() -> Argv:
    """Reload nginx gracefully (same master, new workers); never a restart."""
    return ("systemctl", "reload", "nginx")


def keepalived_test(conf: str) -> Argv:
    """`keepalived -t -f CONF` (validate)."""
    return ("keepalived", "-t", "-f", conf)


def keepalived_reload() -> Argv:
    """Reload keepalived (SIGHUP through systemd)."""
    return ("systemctl", "reload", "keepalived")


def vip_addresses(interface: str | None = None) -> Argv:
    """`ip -o -4 addr show [dev IF]` (who holds which address)."""
    return ("ip", "-o", "-4", "addr", "show") + (("dev", interface) if interface else ())


# ---------------------------------------------------------------- files and links


def mkdir_p(*paths: str, mode: str | None = None) -> Argv:
    """`mkdir -p [-m MODE] PATH...`."""
    return ("mkdir", "-p", *(("-m", mode) if mode else ()), *paths)


def rm_rf(*paths: str) -> Argv:
    """`rm -rf -- PATH...`."""
    return ("rm", "-rf", "--", *paths)


def install_tmp(tmp: str, dest: str, mode: int, owner: str | None = None,
                group: str | None = None) -> str:
    """Move an uploaded temp file over dest atomically, with its mode and owner (shell string)."""
    parts = [f"chmod {mode:04o} {q(tmp)}"]
    if owner or group:
        parts.append(f"chown {q((owner or '') + (':' + group if group else ''))} {q(tmp)}")
    d = dest.rsplit("/", 1)[0] or "/"
    if not tmp.startswith(d + "/"):  # uploaded to /tmp (sudo): copy next to dest first
        near = f"{d}/.{dest.rsplit('/', 1)[-1]}.ofactl-new"
        parts.append(f"cp -p {q(tmp)} {q(near)} && rm -f {q(tmp)}")
        tmp = near
    parts.append(f"mv -fT {q(tmp)} {q(dest)}")
    return " && ".join(parts)


def atomic_symlink(target: str, link: str) -> str:
    """Point link at target atomically: `ln -sfn` to a temp name, then `mv -T` over link."""
    tmp = f"{link}.ofactl-tmp"
    return f"ln -sfn {q(target)} {q(tmp)} && mv -fT {q(tmp)} {q(link)}"


def readlink(path: str) -> Argv:
    """`readlink PATH` (prints the link target; exit 1 when not a link)."""
    return ("readlink", path)


def sha256sum(*paths: str) -> Argv:
    """`sha256sum -- PATH...`."""
    return ("sha256sum", "--", *paths)


def hash_tree(root: str) -> str:
    """sha256 of every file under root, paths relative to root (missing root: no output)."""
    return (f"cd {q(root)} 2>/dev/null && find . -type f ! -name '*.ofactl-part' -print0 "
            f"| sort -z | xargs -0 -r sha256sum -- || true")


def sha256_check(root: str, listing: str) -> str:
    """`sha256sum -c` of a checksum listing inside root (prints only failures)."""
    return f"cd {q(root)} && sha256sum --quiet --strict -c {q(listing)}"


def untar(archive: str, dest: str) -> str:
    """Unpack a .tar.gz into a fresh dest (via a temp dir, renamed at the end) and drop it."""
    tmp = f"{dest}.ofactl-tmp"
    return (f"rm -rf {q(tmp)} && mkdir -p {q(tmp)} && tar -xzf {q(archive)} -C {q(tmp)} "
            f"&& rm -rf {q(dest)} && mv -T {q(tmp)} {q(dest)} && rm -f {q(archive)}")


def prune_dirs(parent: str, keep: Sequence[str], keep_count: int) -> str:
    """Delete all but the newest keep_count entries of parent (names sort by time), never the
    ones listed in keep."""
    keep_args = " ".join(f"-e {q(k)}" for k in keep)
    grep = f" | grep -vxF {keep_args}" if keep else ""
    return (f"cd {q(parent)} && ls -1 | grep -v 'ofactl-tmp$' | sort -r | tail -n +{keep_count + 1}"
            f"{grep} | xargs -r rm -rf --")


def prune_models(base_dir: str, keep_newest: int = 2) -> str:
    """Delete model snapshots under {base}/models except: the live `model` link target, every
    snapshot a release records in releases/*/ofactl-model (rollback needs it), and the
    keep_newest most recent. Only <digest12> directories are ever touched."""
    b = q(base_dir)
    return (f"cd {b}/models && keep=\" $(basename \"$(readlink {b}/model)\" 2>/dev/null) "
            f"$(cat {b}/releases/*/ofactl-model 2>/dev/null | tr '\\n' ' ') "
            f"$(ls -1t | grep -xE '[0-9a-f]{{12}}' | head -n {keep_newest} | tr '\\n' ' ') \" "
            "&& for d in $(ls -1 | grep -xE '[0-9a-f]{12}'); do case \"$keep\" in "
            "*\" $d \"*) ;; *) rm -rf -- \"$d\" ;; esac; done")


def backup(dest: str, suffix: str = ".ofactl-bak") -> str:
    """Copy dest to dest+suffix, keeping mode/owner (no-op when dest does not exist)."""
    return f"if [ -e {q(dest)} ]; then cp -pf {q(dest)} {q(dest + suffix)}; fi"


def restore(dest: str, suffix: str = ".ofactl-bak") -> str:
    """Put the backup back (or remove dest when there was none before)."""
    b = dest + suffix
    return f"if [ -e {q(b)} ]; then cp -pf {q(b)} {q(dest)}; else rm -f {q(dest)}; fi"


# ---------------------------------------------------------------- probes over HTTP from the host


def curl_status(url: str, timeout_s: float = 2.0) -> Argv:
    """Fetch url on the host itself: body, then a final line with the HTTP code."""
    return ("curl", "-sS", "--max-time", f"{timeout_s:g}", "-w", "\n%{http_code}", url)


def python_check(python: str, modules: Sequence[str]) -> Argv:
    """`PYTHON -c 'import a, b'` (the runtime has the agent's dependencies)."""
    return (python, "-c", "import " + ", ".join(modules))
