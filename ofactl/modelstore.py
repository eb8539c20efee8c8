"""Model snapshots on the control machine (`model pull`) and their verification on nodes
(`model verify`).

`pull_model` fills `model.local_dir` either from ModelScope (`snapshot_download` with the pinned
revision; `offline=True` -> local_files_only, i.e. only the local cache) or from a local directory
(`from_dir`, e.g. `ofactl model tiny`'s output), then writes the sha256 manifest beside it.
`verify_node` re-hashes the live snapshot on a node against the node's own manifest and compares
its digest with the control machine's.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ofactl import commands, facts
from ofactl.errors import OperationError, UsageError
from ofactl.executor import HostOutcome
from ofactl.manifest import MANIFEST_NAME, Manifest, digest_of, read_manifest, write_manifest
from ofactl.transport import Transport


@dataclass(frozen=True)
class PullResult:
    """What `model pull` produced."""

    path: Path
    model_id: str
    revision: str
    digest: str
    files: int
    size_bytes: int
    source: str  # hub | hub-cache | dir
    seconds: float
    random_weights: bool = False

    def to_json(self) -> dict[str, Any]:
        """--json form."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


def _result(path: Path, m: Manifest, source: str, t0: float) -> PullResult:
    size = sum(int(meta.get("size", 0)) for meta in m.files.values())
    return PullResult(path, m.model_id, m.revision, m.digest, len(m.files), size, source,
                      time.monotonic() - t0, m.random_weights)


def import_dir(src: Path, dest: Path, *, model_id: str, revision: str,
               force: bool = False) -> PullResult:
    """Copy a local model dir into dest and write its manifest. A source that carries an
    ofactl manifest must match it (its id/revision/random_weights are kept)."""
    t0 = time.monotonic()
    if not src.is_dir():
        raise UsageError(f"{src}: not a directory", hint="give a model directory to --from")
    src_manifest = None
    if (src / MANIFEST_NAME).exists():
        from ofactl.manifest import verify_manifest

        problems = verify_manifest(src)
        if problems:
            raise OperationError(f"{src}: does not match its own manifest: {problems[0]}",
                                 hint="rebuild or re-download the model")
        src_manifest = read_manifest(src)
    if src.resolve() != dest.resolve():
        if dest.exists():
            if not force and any(dest.iterdir()):
                raise UsageError(f"{dest}: exists and is not empty",
                                 hint="use --force to replace it")
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".ofactl-tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(".*", "__pycache__"))
        tmp.rename(dest)
    if src_manifest is not None:
        m = write_manifest(dest, src_manifest.model_id, src_manifest.revision,
                           src_manifest.random_weights)
        if m.digest != src_manifest.digest:
            raise OperationError(f"{dest}: copy differs from {src} (digest changed)")
    else:
        m = write_manifest(dest, model_id, revision, False)
    return _result(dest, m, "dir", t0)


def pull_from_hub(model_id: str, revision: str, dest: Path, *, offline: bool = False,
                  cache_dir: Path | None = None) -> PullResult:
    """snapshot_download(model_id, revision) into dest, then the manifest. offline=True uses
    only the local cache (local_files_only); online failures fall back to the cache once."""
    t0 = time.monotonic()
    try:
        from modelscope.hub.snapshot_download import snapshot_download
    except ImportError:
        raise UsageError("modelscope is not installed on this machine",
                         hint="use the runtime venv (.venv/bin/ofactl) or --from DIR") from None
    kwargs: dict[str, Any] = {"revision": revision, "local_dir": str(dest)}
    if cache_dir is not None:
        kwargs["cache_dir"] = str(cache_dir)
    source = "hub-cache" if offline else "hub"
    try:
        path = snapshot_download(model_id, local_files_only=offline, **kwargs)
    except Exception as first:  # noqa: BLE001 - modelscope raises many types
        if offline:
            raise OperationError(f"{model_id}@{revision}: not in the local cache: {first}",
                                 hint="run online once, or import a dir with --from") from None
        try:
            path = snapshot_download(model_id, local_files_only=True, **kwargs)
            source = "hub-cache"
        except Exception:  # noqa: BLE001
            raise OperationError(f"{model_id}@{revision}: download failed: {first}",
                                 hint="check network access to modelscope.cn, or --from DIR"
                                 ) from None
    root = Path(path)
    m = write_manifest(root, model_id, revision, False)
    return _result(root, m, source, t0)


# ------------------------------------------------------------------------------ verify on nodes


def tree_problems(manifest_raw: bytes | None, hashes: dict[str, str]) -> tuple[str, list[str]]:
    """Compare a node's manifest with the hashes of its files -> (digest, problems)."""
    if not manifest_raw:
        return "", [f"no {MANIFEST_NAME}"]
    try:
        data = json.loads(manifest_raw)
        files: dict[str, dict[str, Any]] = data["files"]
        digest = str(data["digest"])
    except (ValueError, KeyError, TypeError):
        return "", [f"{MANIFEST_NAME} unreadable"]
    problems = []
    if digest_of(files) != digest:
        problems.append("manifest digest does not match its file list")
    for rel, meta in sorted(files.items()):
        have = hashes.get(rel)
        if have is None:
            problems.append(f"{rel}: missing")
        elif have != meta.get("sha256"):
            problems.append(f"{rel}: sha256 mismatch")
    for rel in sorted(set(hashes) - set(files) - {MANIFEST_NAME}):
        problems.append(f"{rel}: not in manifest")
    return digest, problems


@dataclass
class VerifyResult:
    """One node's `model verify` answer."""

    node: str
    digest: str = ""
    problems: list[str] = field(default_factory=list)
    expected: str = ""

    @property
    def ok(self) -> bool:
        """Intact and (when known) the expected digest."""
        return not self.problems and (not self.expected or self.digest == self.expected)


def verify_node(t: Transport, node: Any, expected_digest: str = "") -> VerifyResult:
    """Re-hash {base}/model on the node and check it against its manifest."""
    live = node.agent.model_dir
    res = t.run(commands.hash_tree(live + "/"), timeout=600, readonly=True)
    hashes = facts.parse_sha256sum(res.stdout)
    raw = t.get(f"{live}/{MANIFEST_NAME}", timeout=30)
    digest, problems = tree_problems(raw, hashes)
    if expected_digest and digest and digest != expected_digest:
        problems.append(f"digest {digest[:12]} differs from the control machine's "
                        f"{expected_digest[:12]}")
    return VerifyResult(node.name, digest, problems, expected_digest)


def verify_outcome(t: Transport, node: Any, expected_digest: str = "") -> HostOutcome:
    """verify_node for the executor: raises OperationError listing problems."""
    r = verify_node(t, node, expected_digest)
    out = HostOutcome(data={"digest": r.digest, "problems": r.problems})
    if r.problems:
        shown = "; ".join(r.problems[:4]) + (f" (+{len(r.problems) - 4} more)"
                                             if len(r.problems) > 4 else "")
        raise _with_outcome(OperationError(
            f"{node.name}: model snapshot is not intact: {shown}",
            hint="ofactl deploy (pushes the missing/changed files again)"), out)
    out.note(f"model {r.digest[:12]} intact ({len(r.problems)} problems)")
    return out


def _with_outcome(e: OperationError, out: HostOutcome) -> OperationError:
    e.outcome = out  # type: ignore[attr-defined]
    return e
