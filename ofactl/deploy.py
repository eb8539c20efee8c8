"""`ofactl deploy`: from bare hosts to a serving fleet, idempotently.

Order: preflight every selected host (one facts probe each) -> fleet lock -> nodes in parallel
(runtime check/install, agent release, model snapshot, unit/env/token files, enable, restart only
if something changed, wait for readiness) -> LBs one at a time (render, upload to a temp path,
validate on the host, back up, swap, reload only if changed; restore and stop on failure).

Every step is a plain function of (transport, host, ...) that records what it changed on a
`HostOutcome`; steps decide from facts (`ofactl.facts`) and emit only the commands needed, so a
second deploy with nothing changed uploads, restarts and reloads nothing. The rollout engineer's
code reuses the step functions (see docs/deploy-internals.md).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import tarfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ofactl import commands, facts
from ofactl.commands import q
from ofactl.errors import OfactlError, OperationError, UsageError
from ofactl.executor import EventCb, HostOutcome, HostResult, Progress, run_one, run_parallel
from ofactl.facts import HostFacts
from ofactl.manifest import MANIFEST_NAME, Manifest, read_manifest
from ofactl.transport import DryRunEntry, Transport

AGENT_UNIT = "ofa-agent"
AGENT_UNIT_FILE = "/etc/systemd/system/ofa-agent.service"
LB_UNITS = ("nginx", "keepalived")
DEFAULT_TIMEOUT = 60.0
KEEP_MODELS = 2  # newest model snapshots kept on a node besides the live and recorded ones
RUNTIME_MODULES = ("fastapi", "uvicorn", "prometheus_client", "PIL", "torch", "modelscope")


# ------------------------------------------------------------------------------ inputs


def repo_root() -> Path:
    """The checkout holding ofactl (agent/ and templates/ live beside the package)."""
    return Path(__file__).resolve().parents[1]


def agent_source() -> Path:
    """Directory of the ofa_agent package to ship ($OFACTL_AGENT_SRC, the checkout, or the
    installed package)."""
    env = os.environ.get("OFACTL_AGENT_SRC")
    if env:
        return Path(env)
    local = repo_root() / "agent" / "ofa_agent"
    if (local / "__init__.py").exists():
        return local
    spec = importlib.util.find_spec("ofa_agent")
    if spec and spec.origin:
        return Path(spec.origin).parent
    raise UsageError("cannot find the ofa_agent package to deploy",
                     hint="run from the ofactl checkout or set OFACTL_AGENT_SRC")


def runtime_requirements() -> list[Path]:
    """The pinned runtime requirement files (their hash is the runtime fingerprint)."""
    return sorted((repo_root() / "agent").glob("requirements-*.txt"))


def runtime_fingerprint(files: Sequence[Path] | None = None) -> str:
    """First 16 hex of sha256(cat requirements-*.txt), as scripts/install-runtime.sh does."""
    h = hashlib.sha256()
    for p in files if files is not None else runtime_requirements():
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Release:
    """A packed agent release: id `<UTC yyyymmddHHMMSS>-<sha8>`, sha8 of the content."""

    id: str
    sha8: str
    tarball: bytes


def build_release(src: Path, now: float | None = None) -> Release:
    """Pack src (a package dir) reproducibly: sorted, mtime 0, no caches; id from content."""
    h = hashlib.sha256()
    members = []
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src.parent)
        if "__pycache__" in p.parts or p.suffix in (".pyc", ".pyo") or ".egg-info" in str(rel):
            continue
        members.append((p, rel))
        if p.is_file():
            h.update(str(rel).encode() + b"\0" + p.read_bytes() + b"\0")
    sha8 = h.hexdigest()[:8]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for p, rel in members:
            info = tar.gettarinfo(str(p), arcname=str(rel))
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "root", "root"
            if p.is_file():
                with open(p, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now))
    return Release(f"{stamp}-{sha8}", sha8, buf.getvalue())


@dataclass(frozen=True)
class LocalModel:
    """The control machine's snapshot: a directory with its ofactl manifest."""

    root: Path
    manifest: Manifest

    @property
    def digest12(self) -> str:
        """The directory name on nodes: models/<digest12>."""
        return self.manifest.digest[:12]

    @property
    def manifest_bytes(self) -> bytes:
        """The manifest file as on disk."""
        return (self.root / MANIFEST_NAME).read_bytes()


def load_local_model(path: Path) -> LocalModel:
    """Read the local snapshot's manifest (UsageError with a hint when there is none)."""
    try:
        return LocalModel(path, read_manifest(path))
    except ValueError as e:
        raise UsageError(str(e), hint="ofactl model pull (or: ofactl model pull --from DIR)"
                         ) from None


# ------------------------------------------------------------------------------ context


@dataclass
class DeployContext:
    """Everything a step needs besides the transport and the host."""

    inv: Any
    release: Release | None = None
    model: LocalModel | None = None
    hub_model: tuple[str, str] | None = None  # (id, revision) when model.source is hub
    runtime_fp: str = ""
    wheelhouse: Path | None = None
    ready_timeout_s: float | None = None  # override of agent.ready_timeout_s
    # restarts of agents that are already serving go through the rolling machinery (drain on
    # every LB, wait for in-flight work, restart, ready + smoke prediction, undrain)
    rolling: bool = True
    batch: str = "1"
    canary: int = 0
    max_fail: int = 0
    runtime_install_timeout_s: float = 3600.0
    render_host: Callable[..., list[Any]] | None = None
    validation_argv: Callable[[Any, str], Any] | None = None
    on_event: EventCb | None = None
    facts: dict[str, HostFacts] = field(default_factory=dict)
    rendered: dict[str, list[Any]] = field(default_factory=dict)

    def render(self, name: str, drained: Iterable[str] = ()) -> list[Any]:
        """Rendered files for a host (secrets resolved: they are compared by hash only);
        cached per host for the undrained case so one run uses one rendering."""
        drained = frozenset(drained)
        if not drained and name in self.rendered:
            return self.rendered[name]
        fn: Callable[..., list[Any]]
        if self.render_host is not None:
            fn = self.render_host
        else:
            from ofactl.render import render_host as fn
        files = list(fn(self.inv, name, drained=drained, secrets=True))
        if not drained:
            self.rendered[name] = files
        return files

    def validator(self) -> Callable[[Any, str], Any]:
        """render.validation_argv (pluggable for tests)."""
        if self.validation_argv is not None:
            return self.validation_argv
        from ofactl.render import validation_argv

        return validation_argv


def _content(rf: Any) -> bytes:
    c = rf.content
    return c if isinstance(c, bytes) else str(c).encode()


def _sha(rf: Any) -> str:
    return getattr(rf, "sha256", None) or hashlib.sha256(_content(rf)).hexdigest()


# ------------------------------------------------------------------------------ facts/preflight


def gather_facts(t: Transport, host: Any, files: Sequence[str] = (),
                 extra_files: Sequence[str] = (), units: Sequence[str] = ()) -> HostFacts:
    """One read-only round trip: OS, Python, disk, systemd, GPU, links, hashes, unit states
    (the agent unit on nodes; nginx, keepalived and `units` on LBs)."""
    agent: Any = getattr(host, "agent", None)
    is_node = getattr(host, "role", "node") == "node" and agent is not None
    base = agent.base_dir if is_node else "/var/lib/ofactl"
    cmd = facts.host_facts_cmd(
        base_dir=base, runtime=agent.runtime if is_node else None,
        files=[*files, *extra_files],
        units=(AGENT_UNIT,) if is_node else tuple(dict.fromkeys([*LB_UNITS, *units])))
    res = t.run(cmd, timeout=DEFAULT_TIMEOUT, readonly=True)
    return facts.parse_host_facts(res.stdout)


def preflight(t: Transport, host: Any, files: Sequence[str] = (),
              extra_files: Sequence[str] = (), units: Sequence[str] = ()
              ) -> tuple[HostFacts, list[str]]:
    """Facts plus the problems that make the host unfit (empty = go)."""
    f = gather_facts(t, host, files, extra_files, units)
    need_gpu = getattr(host, "accelerator", "cpu") == "gpu"
    return f, facts.preflight_problems(f, need_gpu=need_gpu)


def preflight_row(name: str, f: HostFacts | None, problems: Sequence[str], error: str = ""
                  ) -> dict[str, Any]:
    """One line of the preflight table (also its JSON form)."""
    if f is None:
        return {"host": name, "ok": False, "os": "", "python": "", "disk_free_mb": None,
                "systemd": "", "gpu": "", "problems": [error or "unreachable"]}
    return {"host": name, "ok": not problems, "os": f.os, "python": f.python,
            "disk_free_mb": f.disk_free_mb, "systemd": f.systemd.split(" (")[0],
            "gpu": ", ".join(f.gpus) or "-", "problems": list(problems)}


# ------------------------------------------------------------------------------ node steps


def ensure_runtime(t: Transport, node: Any, f: HostFacts, ctx: DeployContext,
                   out: HostOutcome) -> None:
    """Make sure the node's runtime venv has the pinned dependencies (fingerprint-checked)."""
    a = node.agent
    fp = ctx.runtime_fp
    if fp and fp in f.runtime_fingerprints and f.runtime_python:
        out.note(f"runtime {fp} present")
        return
    if a.runtime_source == "present":
        if not f.runtime_python:
            raise OperationError(f"{node.name}: no Python at {a.runtime}/bin/python "
                                 "(runtime_source: present)",
                                 hint="install the runtime there, or set runtime_source: index")
        res = t.run(commands.python_check(f"{a.runtime}/bin/python", RUNTIME_MODULES),
                    timeout=120, readonly=True, check=False)
        if not res.ok:
            raise OperationError(f"{node.name}: runtime {a.runtime} lacks the agent's "
                                 f"dependencies: {facts_tail(res.stderr)}",
                                 hint="install them (scripts/install-runtime.sh) or use "
                                 "runtime_source: index")
        out.note(f"runtime at {a.runtime} imports the agent's dependencies "
                 f"(fingerprint {fp or '?'} not stamped)")
        return
    src_dir = f"{a.base_dir}/runtime-src"
    t.run(commands.mkdir_p(src_dir), timeout=DEFAULT_TIMEOUT)
    reqs = runtime_requirements()
    for p in reqs:
        t.put(p.read_bytes(), f"{src_dir}/{p.name}", mode=0o644)
    t.put(_agent_requirements().encode(), f"{src_dir}/agent-requirements.txt", mode=0o644)
    find_links = ""
    if a.runtime_source == "wheelhouse":
        if ctx.wheelhouse is None or not ctx.wheelhouse.is_dir():
            raise UsageError(f"{node.name}: runtime_source is wheelhouse but no wheelhouse dir "
                             "was given", hint="ofactl deploy --wheelhouse DIR (pip wheel -r "
                             "agent/requirements-*.txt -w DIR)")
        wh = f"{a.base_dir}/wheelhouse"
        n = push_tree(t, ctx.wheelhouse, wh, out=None)
        out.change(f"wheelhouse: {n} files pushed")
        find_links = f"--no-index --find-links {q(wh)} "
    pip = f"{q(a.runtime)}/bin/python -m pip --disable-pip-version-check -q install {find_links}"
    order = ["requirements-torch.txt", "requirements-runtime.txt"]
    steps = [f"{pip}-r {q(src_dir + '/' + n)}" for n in order
             if (repo_root() / "agent" / n).exists()]
    if (repo_root() / "agent" / "requirements-fairseq.txt").exists():
        steps.append(f"MAX_JOBS=2 {pip}--no-build-isolation -r "
                     f"{q(src_dir + '/requirements-fairseq.txt')}")
    steps.append(f"{pip}-r {q(src_dir + '/agent-requirements.txt')}")
    script = (f"set -e; [ -x {q(a.runtime)}/bin/python ] || python3 -m venv {q(a.runtime)}; "
              + "; ".join(steps)
              + f"; rm -f {q(a.runtime)}/.ofa-runtime-*; touch {q(a.runtime)}/.ofa-runtime-{fp}")
    t.run(script, timeout=ctx.runtime_install_timeout_s)
    out.change(f"runtime {fp} installed from {a.runtime_source}")


def _agent_requirements() -> str:
    import tomllib

    py = repo_root() / "agent" / "pyproject.toml"
    if not py.exists():
        return ""
    deps = tomllib.loads(py.read_text()).get("project", {}).get("dependencies", [])
    return "\n".join(deps) + "\n"


def facts_tail(text: str, n: int = 3) -> str:
    """Last n lines of text, joined with ' | ' (for one-line errors)."""
    return " | ".join(text.strip().splitlines()[-n:]) or "(no output)"


def push_release(t: Transport, node: Any, f: HostFacts, release: Release,
                 out: HostOutcome) -> bool:
    """Upload the agent release unless a release with the same content is there; switch
    `current` atomically; keep the newest keep_releases. True when `current` changed."""
    a = node.agent
    rel_dir = f"{a.base_dir}/releases"
    existing = [r for r in f.releases if r.endswith("-" + release.sha8)]
    current = os.path.basename(f.current.rstrip("/")) if f.current else ""
    if current.endswith("-" + release.sha8):
        out.note(f"release {current} unchanged")
        out.data["release"] = current
        return False
    if existing:
        rid = existing[-1]
        out.change(f"release {rid} (already on the host) made current")
    else:
        rid = release.id
        archive = f"{rel_dir}/.upload-{release.sha8}.tar.gz"
        t.run(commands.mkdir_p(rel_dir), timeout=DEFAULT_TIMEOUT)
        t.put(release.tarball, archive, mode=0o644)
        t.run(commands.untar(archive, f"{rel_dir}/{rid}"), timeout=DEFAULT_TIMEOUT)
        out.change(f"release {rid} uploaded ({len(release.tarball) // 1024} KiB)")
    t.run(commands.atomic_symlink(f"releases/{rid}", a.current_dir), timeout=DEFAULT_TIMEOUT)
    out.data["release"] = rid
    keep = [rid] + ([current] if current else [])
    t.run(commands.prune_dirs(rel_dir, keep, a.keep_releases), timeout=DEFAULT_TIMEOUT)
    return True


def _checksum_listing(m: Manifest) -> bytes:
    return "".join(f"{meta['sha256']}  {rel}\n" for rel, meta in sorted(m.files.items())).encode()


def push_tree(t: Transport, src: Path, dest: str, *, out: HostOutcome | None,
              wanted: dict[str, str] | None = None) -> int:
    """Copy files of src to dest, uploading only missing/changed ones (by sha256).
    `wanted` = {relpath: sha256} (default: every file under src). Returns files uploaded."""
    if wanted is None:
        from ofactl.manifest import sha256_file

        wanted = {str(p.relative_to(src)): sha256_file(p) for p in sorted(src.rglob("*"))
                  if p.is_file()}
    res = t.run(commands.hash_tree(dest), timeout=300, readonly=True)
    have = facts.parse_sha256sum(res.stdout)
    todo = [rel for rel, sha in sorted(wanted.items()) if have.get(rel) != sha]
    extra = sorted(set(have) - set(wanted) - {MANIFEST_NAME})
    dirs = sorted({os.path.dirname(f"{dest}/{rel}") for rel in todo} | {dest})
    t.run(commands.mkdir_p(*dirs), timeout=DEFAULT_TIMEOUT)
    for rel in todo:
        t.put(src / rel, f"{dest}/{rel}", mode=0o644, timeout=600)
    if extra:
        t.run(commands.rm_rf(*[f"{dest}/{rel}" for rel in extra]), timeout=DEFAULT_TIMEOUT)
    if out is not None and (todo or extra):
        size = sum((src / rel).stat().st_size for rel in todo)
        out.change(f"{len(todo)} of {len(wanted)} files pushed to {dest} "
                   f"({size / 1e6:.1f} MB)" + (f", {len(extra)} stale removed" if extra else ""))
    return len(todo)


def push_model(t: Transport, node: Any, f: HostFacts, model: LocalModel,
               out: HostOutcome) -> bool:
    """Push missing/changed model files to models/<digest12>, verify the manifest there, switch
    the `model` link atomically. True when the link changed (the agent must restart)."""
    a = node.agent
    d12 = model.digest12
    out.data["model"] = d12
    models = f"{a.base_dir}/models"
    dest = f"{models}/{d12}"
    manifest_path = f"{dest}/{MANIFEST_NAME}"
    linked = os.path.basename(f.model.rstrip("/")) == d12
    manifest_sha = hashlib.sha256(model.manifest_bytes).hexdigest()
    if linked and f.file_sha256.get(manifest_path) == manifest_sha:
        # cheap check (sizes, no hashing): catches missing/truncated/appended files; a full
        # re-hash is `ofactl model verify`
        sizes = {rel: int(meta.get("size", -1)) for rel, meta in model.manifest.files.items()}
        res = t.run(f"cd {q(dest)} && stat -c '%s %n' -- "
                    + " ".join(q(r) for r in sorted(sizes)) + " 2>/dev/null || true",
                    timeout=DEFAULT_TIMEOUT, readonly=True, check=False)
        have = {}
        for line in res.stdout.splitlines():
            size, _, rel = line.partition(" ")
            if size.isdigit():
                have[rel] = int(size)
        if have == sizes:
            out.note(f"model {d12} unchanged")
            return False
    if not linked and d12 not in f.models and f.model:
        # seed from the live snapshot with hard links: unchanged files cost nothing to push
        old = f"{a.base_dir}/model"
        t.run(f"mkdir -p {q(dest)} && cp -al {q(old)}/. {q(dest)}/ 2>/dev/null; "
              f"rm -f {q(manifest_path)}", timeout=300)
    wanted = {rel: meta["sha256"] for rel, meta in model.manifest.files.items()}
    push_tree(t, model.root, dest, out=out, wanted=wanted)
    t.put(model.manifest_bytes, manifest_path, mode=0o644)
    listing = f"{models}/.{d12}.sha256"
    t.put(_checksum_listing(model.manifest), listing, mode=0o644)
    if not t.dry_run:
        res = t.run(commands.sha256_check(dest, listing), timeout=600, check=False)
        if not res.ok:
            raise OperationError(f"{node.name}: model {d12} does not match its manifest after "
                                 f"the push: {facts_tail(res.stdout + res.stderr)}",
                                 hint="check the disk on the node, then deploy again")
    if not linked:
        t.run(commands.atomic_symlink(f"models/{d12}", a.model_dir), timeout=DEFAULT_TIMEOUT)
        out.change(f"model -> models/{d12} ({model.manifest.revision})")
        return True
    out.change(f"model {d12} repaired and verified")
    return True


_HUB_PULL = r"""
import hashlib, json, os, sys
from modelscope.hub.snapshot_download import snapshot_download
mid, rev, dest = sys.argv[1:4]
path = snapshot_download(mid, revision=rev, local_dir=dest)
files = {}
for dp, dn, fn in os.walk(path):
    dn[:] = sorted(d for d in dn if not d.startswith("."))
    for n in fn:
        if n == "ofactl-manifest.json" or n.startswith("."):
            continue
        p = os.path.join(dp, n)
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for c in iter(lambda: f.read(1 << 20), b""):
                h.update(c)
        files[os.path.relpath(p, path)] = {"sha256": h.hexdigest(), "size": os.path.getsize(p)}
d = hashlib.sha256()
for rel in sorted(files):
    d.update(f"{rel}\0{files[rel]['sha256']}\n".encode())
m = {"format": 1, "model_id": mid, "revision": rev, "random_weights": False, "files": files,
     "digest": d.hexdigest()}
with open(os.path.join(path, "ofactl-manifest.json"), "w") as f:
    f.write(json.dumps(m, indent=2, sort_keys=True) + "\n")
print(d.hexdigest())
"""


def pull_model_on_node(t: Transport, node: Any, model_id: str, revision: str,
                       out: HostOutcome, timeout_s: float = 3600) -> bool:
    """model.source: hub — the node downloads the pinned revision itself (snapshot_download in
    its runtime), writes the same manifest, and the `model` link switches to models/<digest12>.
    Unchanged when the live manifest already names this id and revision. True when switched."""
    a = node.agent
    raw = t.get(f"{a.model_dir}/{MANIFEST_NAME}", timeout=30)
    if raw:
        try:
            live = json.loads(raw)
            if live.get("model_id") == model_id and live.get("revision") == revision:
                out.note(f"model {model_id}@{revision} unchanged")
                return False
        except ValueError:
            pass
    models = f"{a.base_dir}/models"
    tmp = f"{models}/.hub-{hashlib.sha256(revision.encode()).hexdigest()[:8]}"
    t.run(commands.mkdir_p(models), timeout=DEFAULT_TIMEOUT)
    if t.dry_run:
        t.run([f"{a.runtime}/bin/python", "-c", "<snapshot_download + manifest>", model_id,
               revision, tmp], timeout=timeout_s)
        out.change(f"model {model_id}@{revision} would be downloaded on the node")
        return True
    res = t.run([f"{a.runtime}/bin/python", "-c", _HUB_PULL, model_id, revision, tmp],
                timeout=timeout_s, check=False)
    digest = res.stdout.strip().splitlines()[-1] if res.ok and res.stdout.strip() else ""
    if not res.ok or len(digest) != 64:
        raise OperationError(f"{node.name}: snapshot_download {model_id}@{revision} failed: "
                             f"{facts_tail(res.stderr or res.stdout)}",
                             hint="check the node's access to the hub, or use model.source: "
                             "push")
    d12 = digest[:12]
    t.run(f"if [ -d {q(models + '/' + d12)} ]; then rm -rf {q(tmp)}; "
          f"else mv -T {q(tmp)} {q(models + '/' + d12)}; fi", timeout=DEFAULT_TIMEOUT)
    t.run(commands.atomic_symlink(f"models/{d12}", a.model_dir), timeout=DEFAULT_TIMEOUT)
    out.data["model"] = d12
    out.change(f"model -> models/{d12} ({model_id}@{revision}, downloaded on the node)")
    return True


def install_files(t: Transport, files: Sequence[Any], f: HostFacts, out: HostOutcome
                  ) -> list[Any]:
    """Upload the rendered files whose sha256 differs from the host's; return those."""
    changed = [rf for rf in files if f.file_sha256.get(rf.dest) != _sha(rf)]
    if not changed:
        return []
    dirs = sorted({os.path.dirname(rf.dest) for rf in changed})
    t.run(commands.mkdir_p(*dirs), timeout=DEFAULT_TIMEOUT)
    for rf in changed:
        t.put(_content(rf), rf.dest, mode=rf.mode, owner=getattr(rf, "owner", None),
              group=getattr(rf, "group", None), secret=bool(getattr(rf, "secret", False)))
        out.change(f"{rf.dest} " + ("created" if rf.dest not in f.file_sha256 else "updated"))
    return changed


def ensure_agent_service(t: Transport, f: HostFacts, *, unit_changed: bool, restart: bool,
                         out: HostOutcome, defer_restart: bool = False) -> bool:
    """daemon-reload if the unit changed, enable if needed, (re)start if anything changed or the
    unit is not active. With defer_restart, a serving agent is not restarted here: it is marked
    `restart_pending` for the rolling restart after the LB step. True when (re)started."""
    if unit_changed:
        t.run(commands.daemon_reload(), timeout=DEFAULT_TIMEOUT)
    if not f.unit_enabled(AGENT_UNIT):
        t.run(commands.systemctl("enable", AGENT_UNIT), timeout=DEFAULT_TIMEOUT)
        out.change(f"{AGENT_UNIT} enabled")
    if restart and defer_restart and f.unit_active(AGENT_UNIT):
        out.data["restart_pending"] = True
        out.change(f"{AGENT_UNIT} restart (rolling: drained on every LB first)")
        return False
    if restart or not f.unit_active(AGENT_UNIT):
        verb = "restart" if f.unit_active(AGENT_UNIT) else "start"
        t.run(commands.systemctl(verb, AGENT_UNIT), timeout=DEFAULT_TIMEOUT)
        out.change(f"{AGENT_UNIT} {verb}ed")
        return True
    out.note(f"{AGENT_UNIT} active, not restarted")
    return False


def wait_ready(t: Transport, node: Any, timeout_s: float, *, poll_s: float = 1.0,
               progress: Progress | None = None) -> float:
    """Poll the agent's /v2/health/ready on the node until 200, within timeout_s.
    Fails fast when the unit has failed. Returns the seconds waited."""
    if t.dry_run:
        return 0.0
    port = node.agent.port
    url = f"http://127.0.0.1:{port}/v2/health/ready"
    probe = (f"systemctl is-active {AGENT_UNIT} || true; "
             + commands.cmd_join(commands.curl_status(url, 2.0)) + " 2>/dev/null || true")
    t0 = time.monotonic()
    last = "no answer"
    polls = int(timeout_s / poll_s) + 2
    for i in range(polls):
        res = t.run(probe, timeout=15, readonly=True, check=False)
        state, _, rest = res.stdout.partition("\n")
        code, body = facts.parse_curl_status(rest)
        if code == 200:
            return time.monotonic() - t0
        last = facts.ready_reason(code, body)
        if state.strip() == "failed" or (state.strip() == "inactive" and i > 3):
            j = t.run(commands.journal_tail(AGENT_UNIT, 8), timeout=15, readonly=True,
                      check=False)
            raise OperationError(f"{node.name}: {AGENT_UNIT} is {state.strip()}: "
                                 f"{facts_tail(j.stdout, 4)}",
                                 hint=f"journalctl -u {AGENT_UNIT} on {node.name}")
        if progress:
            progress.step(f"waiting for ready ({last}, {time.monotonic() - t0:.0f} s)")
        if time.monotonic() - t0 > timeout_s:
            break
        time.sleep(poll_s)
    raise OperationError(f"{node.name}: not ready after {timeout_s:g} s (last answer: {last})",
                         hint=f"ofactl status --nodes {node.name}")


def deploy_node(t: Transport, node: Any, ctx: DeployContext,
                progress: Progress | None = None) -> HostOutcome:
    """All node steps in order; returns what changed."""
    out = HostOutcome()
    timings: dict[str, float] = {}
    out.data["steps_s"] = timings
    mark = [time.monotonic()]

    def step(name: str) -> None:
        now = time.monotonic()
        if timings or name != "runtime":
            timings[list(STEP_NAMES)[len(timings)]] = round(now - mark[0], 3)
        mark[0] = now
        if progress:
            progress.step(name)

    files = ctx.render(node.name)
    f = ctx.facts.get(node.name)
    model_manifest = (f"{node.agent.base_dir}/models/{ctx.model.digest12}/{MANIFEST_NAME}"
                      if ctx.model else None)
    if f is None:
        f = gather_facts(t, node, [rf.dest for rf in files],
                         [model_manifest] if model_manifest else [])
    step("runtime")
    ensure_runtime(t, node, f, ctx, out)
    restart = False
    step("release")
    if ctx.release is not None:
        restart |= push_release(t, node, f, ctx.release, out)
    step("model")
    if ctx.model is not None:
        restart |= push_model(t, node, f, ctx.model, out)
    elif ctx.hub_model is not None:
        restart |= pull_model_on_node(t, node, *ctx.hub_model, out)
    if restart and out.data.get("release") and out.data.get("model"):
        # which model this release runs with, for `ofactl rollback`; then drop snapshots that
        # nothing needs any more (never the live one or one a release records)
        from ofactl.rollback import record_model_cmd

        t.run(record_model_cmd(node.agent.base_dir, out.data["release"], out.data["model"]),
              timeout=DEFAULT_TIMEOUT)
        if any(c.startswith("model -> ") for c in out.changes):
            t.run(commands.prune_models(node.agent.base_dir, KEEP_MODELS),
                  timeout=DEFAULT_TIMEOUT)
    step("unit, env, token")
    changed = install_files(t, files, f, out)
    unit_changed = any(rf.dest.endswith(".service") for rf in changed)
    restart |= bool(changed)
    step("service")
    defer = ctx.rolling and bool(getattr(ctx.inv, "lbs", ()))
    started = ensure_agent_service(t, f, unit_changed=unit_changed, restart=restart, out=out,
                                   defer_restart=defer)
    if started:
        budget = ctx.ready_timeout_s or float(node.agent.ready_timeout_s)
        step(f"waiting for ready (budget {budget:g} s)")
        waited = wait_ready(t, node, budget, progress=progress)
        out.data["ready_after_s"] = round(waited, 2)
    else:
        step("done")
    timings[list(STEP_NAMES)[len(timings)]] = round(time.monotonic() - mark[0], 3)
    return out


STEP_NAMES = ("runtime", "release", "model", "files", "service", "ready")


# ------------------------------------------------------------------------------ LB steps


def push_lb_configs(t: Transport, lb: Any, files: Sequence[Any], f: HostFacts,
                    ctx: DeployContext, out: HostOutcome) -> None:
    """Changed LB files: upload to temp paths -> validate every one on the host -> back up and
    swap -> reload each affected service (enable --now the first time). A failed validation
    removes the temps and raises (live config untouched); a failed reload restores the backups,
    reloads again and raises."""
    changed = [rf for rf in files if f.file_sha256.get(rf.dest) != _sha(rf)]
    services = sorted({getattr(rf, "service", None) or "" for rf in files} - {""})
    if not changed:
        out.note("LB configs unchanged")
    validate = ctx.validator()
    tmps = {rf.dest: f"{rf.dest}.ofactl-new" for rf in changed}
    if changed:
        t.run(commands.mkdir_p(*sorted({os.path.dirname(rf.dest) for rf in changed})),
              timeout=DEFAULT_TIMEOUT)
    try:
        for rf in changed:
            t.put(_content(rf), tmps[rf.dest], mode=rf.mode, owner=getattr(rf, "owner", None),
                  group=getattr(rf, "group", None), secret=bool(getattr(rf, "secret", False)))
        for rf in changed:
            if t.dry_run:
                _dry_validate(t, lb, rf, validate)
                continue
            argv = validate(rf, tmps[rf.dest])
            if not argv:
                continue
            res = t.run(argv, timeout=DEFAULT_TIMEOUT, check=False)
            if not res.ok:
                raise OperationError(
                    f"{lb.name}: {rf.dest}: validation failed, live config left as it was: "
                    f"{facts_tail(res.stderr or res.stdout, 4)}",
                    hint="fix the inventory/template value, then deploy again")
    except OfactlError:
        t.run(commands.rm_rf(*tmps.values()), timeout=DEFAULT_TIMEOUT, check=False)
        raise
    for rf in changed:
        t.run(commands.backup(rf.dest) + " && " + f"mv -fT {q(tmps[rf.dest])} {q(rf.dest)}",
              timeout=DEFAULT_TIMEOUT)
        out.change(f"{rf.dest} " + ("created" if rf.dest not in f.file_sha256 else "updated"))
    touched = sorted({getattr(rf, "service", None) or "" for rf in changed} - {""})
    for svc in services:
        active, enabled = f.unit_active(svc), f.unit_enabled(svc)
        if f.units.get(svc, ("", ""))[1] in ("masked", "missing", "not-found"):
            out.note(f"{svc} is {f.units[svc][1]} on this host: config installed, not started")
            continue
        try:
            if not active:
                t.run(commands.enable_now(svc) if not enabled else commands.systemctl("start", svc),
                      timeout=DEFAULT_TIMEOUT)
                out.change(f"{svc} " + ("enabled and started" if not enabled else "started"))
            elif svc in touched:
                t.run(commands.systemctl("reload", svc), timeout=DEFAULT_TIMEOUT)
                if not t.dry_run:
                    chk = t.run(commands.is_active(svc), timeout=DEFAULT_TIMEOUT,
                                readonly=True, check=False)
                    if not chk.ok:
                        raise OperationError(f"{lb.name}: {svc} is {chk.stdout.strip()} "
                                             "after reload")
                out.change(f"{svc} reloaded")
            elif not enabled:
                t.run(commands.systemctl("enable", svc), timeout=DEFAULT_TIMEOUT)
                out.change(f"{svc} enabled")
        except OperationError as e:
            for rf in changed:
                if (getattr(rf, "service", None) or "") == svc:
                    t.run(commands.restore(rf.dest), timeout=DEFAULT_TIMEOUT, check=False)
            if active:
                t.run(commands.systemctl("reload", svc), timeout=DEFAULT_TIMEOUT, check=False)
            raise OperationError(f"{lb.name}: {svc} failed to take the new config; backup "
                                 f"restored: {e.message}",
                                 hint=f"journalctl -u {svc} on {lb.name}") from None


def _dry_validate(t: Transport, lb: Any, rf: Any, validate: Callable[[Any, str], Any]
                  ) -> None:
    """Dry run: check the rendered file with the real tool on the host, from a private temp
    file under /tmp that is removed right after (the live config is never touched)."""
    inner = getattr(t, "inner", None)
    if inner is None:
        return
    tmp = f"/tmp/.ofactl-dry-{uuid.uuid4().hex[:8]}-{os.path.basename(rf.dest)}"
    argv = validate(rf, tmp)
    if not argv:
        return
    inner.put(_content(rf), tmp, mode=0o600)
    try:
        res = inner.run(argv, timeout=DEFAULT_TIMEOUT, readonly=True, check=False)
    finally:
        inner.run(commands.rm_rf(tmp), timeout=DEFAULT_TIMEOUT, check=False)
    if not res.ok:
        raise OperationError(
            f"{lb.name}: {rf.dest}: validation failed (dry run), live config left as it was: "
            f"{facts_tail(res.stderr or res.stdout, 4)}",
            hint="fix the inventory/template value, then deploy again")


def deploy_lb(t: Transport, lb: Any, ctx: DeployContext,
              progress: Progress | None = None, drained: Iterable[str] = ()) -> HostOutcome:
    """Render this LB's files and push them with validate/backup/swap/reload."""
    out = HostOutcome()
    files = ctx.render(lb.name, drained)
    units = sorted({rf.service for rf in files if getattr(rf, "service", None)})
    f = ctx.facts.get(lb.name) or gather_facts(t, lb, [rf.dest for rf in files], units=units)
    if progress:
        progress.step("configs")
    push_lb_configs(t, lb, files, f, ctx, out)
    return out


# ------------------------------------------------------------------------------ the whole run


@dataclass
class DeployReport:
    """What `deploy` did: preflight rows, per-host results, timings, dry-run entries."""

    preflight: list[dict[str, Any]] = field(default_factory=list)
    results: list[HostResult] = field(default_factory=list)
    duration_s: float = 0.0
    dry_run: bool = False
    lock: str = ""
    stopped: str = ""  # why the run stopped early ("" when it ran through)
    dry_entries: list[DryRunEntry] = field(default_factory=list)
    release: str = ""
    model: str = ""
    rolling: dict[str, Any] = field(default_factory=dict)  # the rolling restart, if one ran
    rolling_dry: list[DryRunEntry] = field(default_factory=list)  # its steps, in a dry run

    @property
    def ok(self) -> bool:
        """No host failed and the run was not stopped."""
        return not self.stopped and all(r.ok for r in self.results)

    @property
    def changed(self) -> int:
        """Hosts with at least one change."""
        return sum(1 for r in self.results if r.status == "changed")

    def to_json(self) -> dict[str, Any]:
        """--json form."""
        return {"ok": self.ok, "dry_run": self.dry_run, "duration_s": round(self.duration_s, 3),
                "release": self.release, "model": self.model, "lock": self.lock,
                "stopped": self.stopped or None, "preflight": self.preflight,
                "hosts": [r.to_json() for r in self.results],
                **({"rolling_restart": self.rolling} if self.rolling else {}),
                "summary": {s: sum(1 for r in self.results if r.status == s)
                            for s in ("changed", "unchanged", "failed", "skipped")},
                **({"dry_run_actions": [e.__dict__ for e in self.dry_entries]}
                   if self.dry_run else {})}


def run_deploy(ctx: DeployContext, hosts: Sequence[Any], transports: Callable[[Any], Transport],
               *, parallel: int = 8, command: str = "deploy", lock_ttl_s: int = 3600,
               lock: bool = True) -> DeployReport:
    """Preflight -> lock -> nodes (parallel) -> LBs (one at a time). Never raises for a host's
    failure (it is in the report); raises OfactlError only for usage problems."""
    from ofactl.lock import FleetLock, lock_host

    t0 = time.monotonic()
    inv = ctx.inv
    conns: dict[str, Transport] = {}

    def tr(h: Any) -> Transport:
        if h.name not in conns:
            conns[h.name] = transports(h)
        return conns[h.name]

    dry = False
    report = DeployReport(release=ctx.release.id if ctx.release else "",
                          model=ctx.model.digest12 if ctx.model else "")
    try:
        # 1. preflight (also the facts every later step decides from)
        def pre(h: Any) -> HostOutcome:
            rendered = ctx.render(h.name)
            files = [rf.dest for rf in rendered]
            units = sorted({rf.service for rf in rendered if getattr(rf, "service", None)})
            extra = []
            if getattr(h, "role", "node") == "node" and ctx.model is not None:
                extra.append(f"{h.agent.base_dir}/models/{ctx.model.digest12}/{MANIFEST_NAME}")
            f, problems = preflight(tr(h), h, files, extra, units)
            ctx.facts[h.name] = f
            o = HostOutcome()
            o.data = preflight_row(h.name, f, problems)
            if problems:
                e = OperationError(f"{h.name}: " + "; ".join(problems),
                                   hint="fix the host (or deselect it with --nodes)")
                e.outcome = o  # type: ignore[attr-defined]
                raise e
            return o

        pres = run_parallel(hosts, pre, parallel, ctx.on_event)
        for h, r in zip(hosts, pres, strict=True):
            report.preflight.append(r.data if r.data else preflight_row(h.name, None, [], r.error))
        dry = any(tr(h).dry_run for h in hosts)
        report.dry_run = dry
        bad = [r for r in pres if not r.ok]
        if bad:
            report.stopped = f"preflight failed on {len(bad)} of {len(hosts)} host(s)"
            report.results = [HostResult(r.host, False, error=r.error, hint=r.hint,
                                         duration_s=r.duration_s) if not r.ok else
                              HostResult(r.host, True, skipped=True) for r in pres]
            return report
        # 2. lock
        held = None
        if lock:
            lh = lock_host(inv)
            held = FleetLock.acquire(tr(lh), command=command, ttl_s=lock_ttl_s,
                                     fleet=getattr(inv, "fleet", ""))
            report.lock = f"{lh.name}" + (f" (broke stale lock of {held.broke.describe()})"
                                          if held.broke else "")
        try:
            nodes = [h for h in hosts if getattr(h, "role", "node") == "node"]
            lbs = [h for h in hosts if getattr(h, "role", "node") == "lb"]

            def node_fn(n: Any) -> HostOutcome:
                return deploy_node(tr(n), n, ctx, Progress(n.name, ctx.on_event))

            results = run_parallel(nodes, node_fn, parallel, ctx.on_event)
            for lb in lbs:
                if report.stopped:
                    results.append(HostResult(lb.name, True, skipped=True))
                    continue
                r = run_one(lb, lambda h: deploy_lb(tr(h), h, ctx,
                                                    Progress(h.name, ctx.on_event)),
                            ctx.on_event)
                results.append(r)
                if not r.ok:
                    report.stopped = f"{lb.name}: LB config failed; later LBs left untouched"
            if not report.stopped:
                _rolling_restarts(ctx, results, transports, dry, report)
            order = {h.name: i for i, h in enumerate(hosts)}
            report.results = sorted(results, key=lambda r: order.get(r.host, 0))
            # The release the nodes run: an unchanged node keeps the id its release got when
            # it was first uploaded (same content, earlier time stamp), not this run's new id.
            on_nodes = {r.data["release"] for r in report.results if r.data.get("release")}
            if len(on_nodes) == 1:
                report.release = on_nodes.pop()
        finally:
            if held is not None:
                from ofactl.lock import audit

                audit(held.t, {
                    "command": command, "fleet": getattr(inv, "fleet", ""),
                    "release": report.release, "model": report.model,
                    "ok": report.ok and bool(report.results),
                    "changed": [r.host for r in report.results if r.status == "changed"],
                    "failed": [r.host for r in report.results if r.status == "failed"],
                    "interrupted": not report.results})
                held.release()
    finally:
        for t in conns.values():
            entries = getattr(t, "entries", None)
            if entries:
                report.dry_entries.extend(entries)
            t.close()
        report.dry_entries.extend(report.rolling_dry)
        report.duration_s = time.monotonic() - t0
    return report


def _rolling_restarts(ctx: DeployContext, results: list[HostResult],
                      transports: Callable[[Any], Transport], dry: bool,
                      report: DeployReport) -> None:
    """Restart the serving agents whose release, model or files changed, through the rolling
    machinery (drain on every LB, wait for in-flight work, restart, ready + smoke prediction,
    undrain), after the LB configs are in place. A failed node stays drained; the report says
    so and the deploy exits 1."""
    by_host = {r.host: r for r in results}
    pending = [r.host for r in results if r.ok and r.data.get("restart_pending")]
    if not pending:
        return
    if dry:
        # what the rolling restart would do, in order (it drains through every LB's nginx)
        lbs = [lb.name for lb in getattr(ctx.inv, "lbs", ())]
        reload = (f"{commands.cmd_join(commands.nginx_test())}; "
                  f"{commands.cmd_join(commands.nginx_reload())}")
        steps: list[tuple[str, str]] = []
        for name in pending:
            by_host[name].notes.append("dry run: would restart through the rolling machinery")
            steps += [(lb, f"# drain {name}: nginx.conf with {name} down; {reload}")
                      for lb in lbs]
            steps += [(name, "# wait until the agent reports no in-flight work"),
                      (name, commands.cmd_join(commands.systemctl("restart", AGENT_UNIT))),
                      (name, "# wait for /v2/health/ready + a smoke prediction")]
            steps += [(lb, f"# undrain {name}: nginx.conf as rendered; {reload}") for lb in lbs]
        report.rolling_dry = [DryRunEntry(host, "run", text) for host, text in steps]
        return
    from ofactl.rolling import restart_nodes

    def event(kind: str, data: dict[str, Any]) -> None:
        node = data.get("node")
        if ctx.on_event is not None and node in by_host:  # per-node progress lines only
            ctx.on_event(str(node), "step", _event_text(kind, data))

    rr = restart_nodes(ctx.inv, transports, pending, batch=ctx.batch, canary=ctx.canary,
                       max_fail=ctx.max_fail, on_event=event)
    report.rolling = rr.to_dict()
    for o in rr.outcomes:
        r = by_host[o.node]
        r.data.pop("restart_pending", None)
        if o.ok:
            r.notes.append(f"restarted (rolling, batch {o.batch}, {o.seconds:.1f} s)")
        else:
            r.ok = False
            r.error = f"{o.node}: rolling restart failed: {o.error}"
            r.hint = f"ofactl status --nodes {o.node}; the node stays drained on every LB"
    for name in rr.skipped:
        r = by_host[name]
        r.ok = False
        r.error = f"{name}: not restarted ({rr.stopped or 'rolling restart stopped'})"
        r.hint = "fix the failed node, then `ofactl deploy` again"
    if not rr.ok:
        report.stopped = f"rolling restart stopped: {rr.stopped or 'a node failed'}"


def _event_text(kind: str, data: dict[str, Any]) -> str:
    """One readable line for a rolling-restart event."""
    detail = ", ".join(f"{k}={v}" for k, v in data.items() if k != "node" and
                       isinstance(v, (str, int, float)))
    return f"rolling {kind}" + (f" ({detail})" if detail else "")


def select_hosts(inv: Any, nodes: str | None, cloud: str | None, role: str | None) -> list[Any]:
    """inventory.select with a usage error when nothing matches."""
    hosts = list(inv.select(nodes=nodes, cloud=cloud, role=role))
    if not hosts:
        raise UsageError("no host matches the selection "
                         f"(--nodes {nodes or '*'} --cloud {cloud or 'any'} --role "
                         f"{role or 'any'})", hint="ofactl inventory show")
    return hosts
