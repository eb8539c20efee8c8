"""Session fixtures for the real OFA runtime: a tiny random-weight model and an engine on it.

Usage::

    def test_something(tiny_model_dir):      # Path of a tiny model dir (built once per session)
        ...
    def test_predict(tiny_engine):           # ofa_agent.engine.Engine on it (cpu, float32)
        ...

Both skip (with the reason) when torch/modelscope are not installed; with CI=true they fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def _need_runtime() -> None:
    try:
        import modelscope  # type: ignore[import-untyped]  # noqa: F401
        import torch  # noqa: F401
    except ImportError as e:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"the agent runtime is missing in CI ({e})")
        pytest.skip(f"agent runtime not installed ({e}); bash scripts/install-runtime.sh")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight OFA model directory (preset tiny, seed 0), built once per session."""
    _need_runtime()
    # modelscope would otherwise write its caches under ~/.modelscope
    cache = tmp_path_factory.mktemp("modelscope-cache")
    os.environ.setdefault("MODELSCOPE_CACHE", str(cache))
    os.environ.setdefault("MODELSCOPE_HOME", str(cache))
    from ofactl.modelbuild import build_model_dir

    out = tmp_path_factory.mktemp("models") / "ofa-ve-tiny"
    build_model_dir(out, preset="tiny", seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir: Path) -> Iterator[Any]:
    """The agent's Engine on the tiny model (cpu, float32), loaded once per session."""
    from ofa_agent.engine import Engine

    engine = Engine(tiny_model_dir, device="cpu", dtype="float32")
    yield engine
    engine.close()

