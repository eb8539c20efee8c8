"""The real `python -m ofa_agent` on 127.0.0.1 with the real tiny OFA model (runtime needed).

Batch-versus-single parity over HTTP, real probabilities, metrics, bad input on the real
process, SIGTERM drain under load with no request lost, and CUDA-configured-on-CPU readiness.
"""

from __future__ import annotations

import io
import signal
import socket
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from agent_helpers import AgentProcess, b64
from PIL import Image

pytestmark = pytest.mark.runtime

TEXTS = [
    "a dog",
    "two people are walking a large brown dog along a sunny street next to the water",
    "red",
    "a small child is holding a yellow umbrella in the rain",
    "the picture shows a cat sleeping on a sofa",
]


def image(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40 + 13 * i, 30 + 7 * i), ((60 * i) % 256, 120, (200 - 30 * i) % 256)
              ).save(buf, "PNG")
    return buf.getvalue()


def agent_cmd(model_dir: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "ofa_agent", "--model-dir", str(model_dir), "--node-name",
            "it-node", "--warmup", "2", *flags]


@pytest.fixture(scope="module")
def agent(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    log = tmp_path_factory.mktemp("agent") / "agent.log"
    proc = AgentProcess(
        agent_cmd(tiny_model_dir, "--max-batch-size", "8", "--max-queue-delay-ms", "20",
                  "--max-body-bytes", "200000"), log)
    try:
        proc.wait_ready(180)
        yield proc
    finally:
        proc.stop()


def test_batch_equals_single_calls_over_http(agent: AgentProcess) -> None:
    items = [{"image": b64(image(i)), "text": t, **({"premise": "a photo"} if i % 2 else {})}
             for i, t in enumerate(TEXTS)]
    with httpx.Client(base_url=agent.url, timeout=60) as c:
        singles = []
        for i, it in enumerate(items):
            files = {"image": (f"{i}.png", image(i), "image/png")}
            data = {"text": it["text"], **({"premise": it["premise"]} if "premise" in it else {})}
            r = c.post("/v1/predict", files=files, data=data)
            assert r.status_code == 200, r.text
            singles.append(r.json())
        r = c.post("/v1/predict/batch", json={"items": items})
        assert r.status_code == 200, r.text
        batch = r.json()["results"]
    assert len(batch) == len(singles)
    assert max(b["timings"]["batch_size"] for b in batch) == len(items)  # one forward
    for s, b in zip(singles, batch, strict=True):
        assert b["label"] == s["label"]
        assert b["answer"] == s["answer"]
        for k in ("entailment", "contradiction", "neutral"):
            assert b["probabilities"][k] == pytest.approx(s["probabilities"][k], abs=1e-4)
        assert sum(b["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
        assert b["label"] == max(b["probabilities"], key=b["probabilities"].get)
        assert b["node"] == "it-node"


def test_concurrent_single_requests_are_batched(agent: AgentProcess) -> None:
    def one(i: int) -> dict:
        r = httpx.post(agent.url + "/v1/predict", timeout=60,
                       json={"image": b64(image(i % 5)), "text": TEXTS[i % 5]})
        assert r.status_code == 200, r.text
        return r.json()

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(one, range(24)))
    assert max(a["timings"]["batch_size"] for a in answers) > 1
    # the same pair gives the same label whatever batch it landed in
    for i, a in enumerate(answers):
        assert a["label"] == answers[i % 5]["label"]


def test_info_metrics_and_health(agent: AgentProcess, tiny_model_dir: Path) -> None:
    import json

    manifest = json.loads((tiny_model_dir / "ofactl-manifest.json").read_text())
    with httpx.Client(base_url=agent.url, timeout=10) as c:
        info = c.get("/v1/info").json()
        assert info["model"]["digest"] == manifest["digest"]
        assert info["model"]["random_weights"] is True
        assert info["device"] == "cpu" and info["state"] == "ready"
        assert {"torch", "modelscope"} <= set(info["versions"])
        assert c.get("/v2/health/live").json() == {"live": True}
        assert c.get("/v2/health/ready").json() == {"ready": True}
        text = c.get("/metrics").text
    for name in ("ofa_agent_requests_total{outcome=\"ok\"}", "ofa_agent_request_duration_seconds",
                 "ofa_agent_queue_seconds", "ofa_agent_batch_size_bucket", "ofa_agent_inflight",
                 "ofa_agent_queue_depth", "ofa_agent_ready 1.0",
                 f'digest="{manifest["digest"]}"'):
        assert name in text, name


def test_bad_input_on_the_real_process(agent: AgentProcess) -> None:
    with httpx.Client(base_url=agent.url, timeout=10) as c:
        r = c.post("/v1/predict", files={"image": ("x.png", b"not an image")}, data={"text": "t"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "not_an_image"
        r = c.post("/v1/predict", content=b"{", headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    # a chunked body (no Content-Length) is cut off at the limit while it is read
    with socket.create_connection(("127.0.0.1", agent.port), timeout=10) as s:
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 65536
        try:
            for _ in range(8):  # 512 KiB > 200000 bytes
                s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        except OSError:
            pass  # the agent may answer and close before we finish sending
        answer = b""
        while b"body_too_large" not in answer:
            data = s.recv(65536)
            if not data:
                break
            answer += data
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"body_too_large" in answer
    assert httpx.get(agent.url + "/v2/health/ready", timeout=5).status_code == 200


def test_sigterm_drain_under_load_loses_no_request(tiny_model_dir: Path, tmp_path: Path) -> None:
    proc = AgentProcess(
        agent_cmd(tiny_model_dir, "--max-batch-size", "4", "--drain-grace-s", "0.5",
                  "--drain-timeout-s", "30"), tmp_path / "agent.log")
    try:
        proc.wait_ready(180)

        def one(i: int) -> int:
            body = {"image": b64(image(i % 5)), "text": TEXTS[i % 5]}
            return httpx.post(proc.url + "/v1/predict", json=body, timeout=60).status_code

        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(one, i) for i in range(32)]
            time.sleep(0.2)
            t0 = time.monotonic()
            proc.proc.send_signal(signal.SIGTERM)
            time.sleep(0.1)
            r = httpx.get(proc.url + "/v2/health/ready", timeout=5)
            assert r.status_code == 503 and r.json()["reason"] == "draining (shutting down)"
            statuses = [f.result() for f in futures]
        assert statuses == [200] * 32, statuses
        assert proc.proc.wait(30) == 0, proc.log()[-2000:]
        assert time.monotonic() - t0 < 30
    finally:
        proc.stop()


def test_cuda_configured_on_a_cpu_machine_is_not_ready(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = AgentProcess(agent_cmd(tiny_model_dir, "--device", "cuda", "--warmup", "1"),
                        tmp_path / "agent.log")
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                info = httpx.get(proc.url + "/v1/info", timeout=2).json()
                if info["state"] != "starting":
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        r = httpx.get(proc.url + "/v2/health/ready", timeout=5)
        assert r.status_code == 503
        assert r.json()["reason"] == "configured for device cuda but running on cpu"
    finally:
        proc.stop()
