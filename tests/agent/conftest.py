"""Shared fixtures for the agent's service tests (fake engine; no torch needed)."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))

from fakes import FakeEngine, factory  # noqa: E402

from ofa_agent.app import Agent, create_app  # noqa: E402
from ofa_agent.config import Settings  # noqa: E402


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def png_bytes(size: tuple[int, int] = (8, 8), color: str = "red", fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
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


def settings_for(model_dir: Path, **kw: Any) -> Settings:
    base: dict[str, Any] = dict(model_dir=model_dir, node_name="node-t", warmup=1,
                                max_queue_delay_ms=5)
    base.update(kw)
    return Settings(**base)


@asynccontextmanager
async def running(
    settings: Settings, engine: FakeEngine, *, wait_ready: bool = True
) -> AsyncIterator[tuple[Agent, httpx.AsyncClient]]:
    """The app with its lifespan started, and an in-process client."""
    app = create_app(settings, factory(engine))
    agent: Agent = app.state.agent
    await agent.start()
    try:
        if wait_ready:
            for _ in range(500):
                if agent.warmed or agent.load_error:
                    break
                await asyncio.sleep(0.01)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
            yield agent, client
    finally:
        await agent.stop()
