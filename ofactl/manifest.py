"""The sha256 manifest kept beside every model snapshot (ModelScope checks hashes only at
download time, so ofactl keeps its own and verifies offline)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST_NAME = "ofactl-manifest.json"
FORMAT = 1
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def digest_of(files: dict[str, dict[str, Any]]) -> str:
    """The snapshot digest: sha256 over sorted `path NUL sha256 LF` lines."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{rel}\0{files[rel]['sha256']}\n".encode())
    return h.hexdigest()


def _walk(root: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name == MANIFEST_NAME or name.startswith("."):
                continue
            out.append(str((Path(dirpath) / name).relative_to(root)))
    return sorted(out)


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest."""

    model_id: str
    revision: str
    random_weights: bool
    files: dict[str, dict[str, Any]]
    digest: str

    def to_json(self) -> dict[str, Any]:
        """The on-disk JSON form."""
        return {
            "format": FORMAT,
            "model_id": self.model_id,
            "revision": self.revision,
            "random_weights": self.random_weights,
            "files": self.files,
            "digest": self.digest,
        }


def build_manifest(root: Path, model_id: str, revision: str, random_weights: bool) -> Manifest:
    """Hash every file under root (hidden files and the manifest itself excluded)."""
    files = {
        rel: {"sha256": sha256_file(root / rel), "size": (root / rel).stat().st_size}
        for rel in _walk(root)
    }
    return Manifest(model_id, revision, random_weights, files, digest_of(files))


def write_manifest(
    root: Path, model_id: str, revision: str, random_weights: bool = False
) -> Manifest:
    """Build the manifest of root and write it atomically as root/ofactl-manifest.json."""
    m = build_manifest(root, model_id, revision, random_weights)
    tmp = root / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(m.to_json(), indent=2, sort_keys=True) + "\n")
    tmp.replace(root / MANIFEST_NAME)
    return m


def read_manifest(root: Path) -> Manifest:
    """Parse root/ofactl-manifest.json; ValueError with the reason when it is unusable."""
    path = root / MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(
            f"{path}: no manifest (make one with `ofactl model pull --from`)"
        ) from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
    try:
        files = data["files"]
        m = Manifest(str(data["model_id"]), str(data["revision"]),
                     bool(data.get("random_weights", False)), files, str(data["digest"]))
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: malformed manifest (missing {e})") from None
    if digest_of(files) != m.digest:
        raise ValueError(f"{path}: digest does not match its own file list")
    return m


def verify_manifest(root: Path) -> list[str]:
    """Re-hash root against its manifest; return problems (empty when intact)."""
    try:
        m = read_manifest(root)
    except ValueError as e:
        return [str(e)]
    problems = []
    present = set(_walk(root))
    for rel, meta in sorted(m.files.items()):
        p = root / rel
        if rel not in present:
            problems.append(f"{rel}: missing")
        elif p.stat().st_size != meta["size"] or sha256_file(p) != meta["sha256"]:
            problems.append(f"{rel}: sha256 mismatch")
    for rel in sorted(present - set(m.files)):
        problems.append(f"{rel}: not in manifest")
    return problems
