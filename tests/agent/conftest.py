"""Fixtures for the agent's service tests (fake engine; no torch needed)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A model directory with only a manifest (the fake engine needs nothing else)."""
    d = tmp_path / "model"
    d.mkdir()
    (d / "ofactl-manifest.json").write_text(
        '{"format": 1, "model_id": "test/ofa", "revision": "v0", "random_weights": true, '
        '"files": {}, "digest": "' + "d" * 64 + '"}'
    )
    return d


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    p = tmp_path / "token"
    p.write_text("s3cret-token\n")
    return p
