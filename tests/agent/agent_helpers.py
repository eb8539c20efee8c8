"""Helpers for the agent's service tests: images, settings, an in-process running app."""

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
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))

from agent_fakes import FakeEngine, factory  # noqa: E402
from ofa_agent.app import Agent, create_app  # noqa: E402
from ofa_agent.config import Settings  # noqa: E402


def png_bytes(size: tuple[int, int] = (8, 8), color: str = "red", fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


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


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AgentProcess:
    """An agent process on 127.0.0.1 (real uvicorn, real signals); log goes to a file."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None,
                 ) -> None:
        import subprocess

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        full_env = {**os.environ, **(env or {})}
        self.proc = subprocess.Popen(
            [*argv, "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT, env=full_env,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        import time

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"agent not ready after {timeout_s} s:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        import subprocess

        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self._log.close()
