"""The HTTP service on the fake engine: endpoints, health states, drain, auth, metrics."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from agent_fakes import FakeEngine, label_for
from agent_helpers import b64, png_bytes, running, settings_for

pytestmark = pytest.mark.anyio
AUTH = {"Authorization": "Bearer s3cret-token"}


def form(text: str = "a red square", premise: str | None = None) -> dict:
    data = {"text": text}
    if premise is not None:
        data["premise"] = premise
    return {"files": {"image": ("x.png", png_bytes(), "image/png")}, "data": data}


async def test_predict_multipart_answer_shape(model_dir: Path) -> None:
    async with running(settings_for(model_dir), FakeEngine()) as (_agent, c):
        r = await c.post("/v1/predict", **form("a dog", premise="a picture"))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["label"] == label_for("a dog" + "a picture")
        assert body["answer"] in ("yes", "no", "maybe")
        assert sum(body["probabilities"].values()) == pytest.approx(1.0)
        assert set(body["probabilities"]) == {"entailment", "contradiction", "neutral"}
        assert body["node"] == "node-t"
        assert body["model"] == {"id": "test/ofa", "revision": "v0", "digest": "d" * 64}
        assert set(body["timings"]) >= {"queue_ms", "inference_ms"}


async def test_predict_json_and_batch_in_order(model_dir: Path) -> None:
    engine = FakeEngine()
    async with running(settings_for(model_dir, max_batch_size=8), engine) as (_a, c):
        img = b64(png_bytes())
        r = await c.post("/v1/predict", json={"image": img, "text": "one"})
        assert r.status_code == 200 and r.json()["label"] == label_for("one")
        texts = [f"text number {i}" + "!" * i for i in range(5)]
        r = await c.post("/v1/predict/batch",
                         json={"items": [{"image": img, "text": t} for t in texts]})
        assert r.status_code == 200, r.text
        assert [x["label"] for x in r.json()["results"]] == [label_for(t) for t in texts]
        assert engine.batches[-1] == 5  # one forward for the batch request


# --- health states ------------------------------------------------------------------------
async def test_health_while_loading_then_ready(model_dir: Path) -> None:
    engine = FakeEngine(load_s=0.3)
    async with running(settings_for(model_dir), engine, wait_ready=False) as (agent, c):
        assert (await c.get("/v2/health/live")).json() == {"live": True}
        r = await c.get("/v2/health/ready")
        assert r.status_code == 503
        assert r.json() == {"ready": False, "reason": "loading the model"}
        r = await c.post("/v1/predict", **form())
        assert r.status_code == 503
        assert r.json()["error"] == {
            "code": "not_ready",
            "message": "the agent cannot serve predictions: loading the model",
        }
        assert (await c.get("/v1/info")).json()["state"] == "starting"
        for _ in range(200):
            if agent.warmed:
                break
            await asyncio.sleep(0.01)
        r = await c.get("/v2/health/ready")
        assert r.status_code == 200 and r.json() == {"ready": True}
        assert engine.warmups == 1


async def test_v2_model_ready_and_metadata(model_dir: Path) -> None:
    engine = FakeEngine(load_s=0.3)
    async with running(settings_for(model_dir), engine, wait_ready=False) as (agent, c):
        r = await c.get("/v2/models/ofa-ve/ready")
        assert r.status_code == 503
        assert r.json() == {"name": "ofa-ve", "ready": False, "reason": "loading the model"}
        for _ in range(200):
            if agent.warmed:
                break
            await asyncio.sleep(0.01)
        for name in ("ofa-ve", "ofa"):  # the alias and the last part of the model id test/ofa
            r = await c.get(f"/v2/models/{name}/ready")
            assert r.status_code == 200 and r.json() == {"name": name, "ready": True}
        meta = (await c.get("/v2/models/ofa-ve")).json()
        assert (meta["name"], meta["versions"], meta["id"], meta["device"]) == (
            "ofa-ve", ["v0"], "test/ofa", "cpu")
        assert [i["name"] for i in meta["inputs"]] == ["image", "text", "premise"]
        r = await c.get("/v2/models/bert/ready")
        assert r.status_code == 404
        assert r.json()["error"] == {
            "code": "unknown_model",
            "message": "no model 'bert' here; this agent serves 'ofa' or 'ofa-ve'"}
        assert (await c.get("/v2/models/bert")).status_code == 404
        agent.drain("admin")
        r = await c.get("/v2/models/ofa-ve/ready")
        assert r.status_code == 503 and r.json()["reason"] == "draining"


async def test_cuda_configured_but_cpu_is_not_ready(model_dir: Path) -> None:
    async with running(settings_for(model_dir, device="cuda"), FakeEngine(device="cpu")) as (
        _a, c,
    ):
        r = await c.get("/v2/health/ready")
        assert r.status_code == 503
        assert r.json()["reason"] == "configured for device cuda but running on cpu"
        info = (await c.get("/v1/info")).json()
        assert info["device"] == "cpu" and info["configured_device"] == "cuda"
        assert info["state"] == "failed"


async def test_cuda_device_ready_and_gpu_metrics(model_dir: Path) -> None:
    async with running(settings_for(model_dir, device="cuda"), FakeEngine(device="cuda:0")) as (
        _a, c,
    ):
        assert (await c.get("/v2/health/ready")).status_code == 200
        text = (await c.get("/metrics")).text
        assert "ofa_agent_gpu_memory_used_bytes 1000.0" in text
        assert "ofa_agent_gpu_memory_total_bytes 8000.0" in text


async def test_load_failure_is_reported_not_ready(model_dir: Path) -> None:
    from ofa_agent.app import create_app

    def broken(_s: object) -> tuple:
        raise FileNotFoundError("configuration.json missing")

    app = create_app(settings_for(model_dir), broken)
    agent = app.state.agent
    await agent.start()
    await asyncio.sleep(0.1)
    ok, reason = agent.readiness()
    assert not ok
    assert reason == "model load failed: FileNotFoundError: configuration.json missing"
    assert agent.state == "failed"
    await agent.stop()


async def test_admin_drain_and_undrain(model_dir: Path, token_file: Path) -> None:
    s = settings_for(model_dir, token_file=token_file)
    async with running(s, FakeEngine()) as (_a, c):
        r = await c.post("/admin/drain", headers=AUTH)
        assert r.status_code == 200 and r.json()["state"] == "draining"
        r = await c.get("/v2/health/ready")
        assert r.status_code == 503 and r.json()["reason"] == "draining"
        # still served while draining: the LB may route a few more
        assert (await c.post("/v1/predict", **form())).status_code == 200
        r = await c.post("/admin/undrain", headers=AUTH)
        assert r.json() == {"state": "ready", "ready": True, "reason": "ready"}
        assert (await c.get("/v2/health/ready")).status_code == 200


async def test_drain_with_requests_in_flight_loses_none(model_dir: Path, token_file: Path) -> None:
    gate = threading.Event()
    engine = FakeEngine(gate=gate)
    s = settings_for(model_dir, token_file=token_file, max_batch_size=4)
    async with running(s, engine) as (agent, c):
        tasks = [asyncio.ensure_future(c.post("/v1/predict", **form(f"t{i}"))) for i in range(10)]
        await asyncio.sleep(0.2)
        assert agent.pending >= 10
        assert (await c.post("/admin/drain", headers=AUTH)).status_code == 200
        assert (await c.get("/v2/health/ready")).status_code == 503
        late = asyncio.ensure_future(c.post("/v1/predict", **form("late")))
        gate.set()
        answers = await asyncio.gather(*tasks, late)
        assert [r.status_code for r in answers] == [200] * 11
        assert agent.pending == 0


# --- auth ---------------------------------------------------------------------------------
async def test_admin_needs_a_configured_token(model_dir: Path) -> None:
    async with running(settings_for(model_dir), FakeEngine()) as (_a, c):
        r = await c.post("/admin/drain", headers=AUTH)
        assert r.status_code == 403
        assert r.json()["error"]["message"] == (
            "admin endpoints are disabled: the agent has no --token-file"
        )


async def test_admin_token_missing_wrong_right(model_dir: Path, token_file: Path) -> None:
    async with running(settings_for(model_dir, token_file=token_file), FakeEngine()) as (_a, c):
        r = await c.post("/admin/drain")
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
        assert r.json()["error"]["message"] == (
            "missing bearer token (Authorization: Bearer <token>)"
        )
        r = await c.post("/admin/drain", headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401 and r.json()["error"]["message"] == "invalid bearer token"
        assert "s3cret" not in r.text
        assert (await c.post("/admin/drain", headers=AUTH)).status_code == 200
        # predict is open without --require-token
        assert (await c.post("/v1/predict", **form())).status_code == 200


async def test_require_token_for_predict(model_dir: Path, token_file: Path) -> None:
    s = settings_for(model_dir, token_file=token_file, require_token=True)
    async with running(s, FakeEngine()) as (_a, c):
        assert (await c.post("/v1/predict", **form())).status_code == 401
        assert (await c.post("/v1/predict", headers=AUTH, **form())).status_code == 200
        # health and metrics stay open for load balancers and Prometheus
        assert (await c.get("/v2/health/ready")).status_code == 200
        assert (await c.get("/metrics")).status_code == 200


# --- backpressure and deadlines ----------------------------------------------------------
async def test_queue_full_answers_429_with_retry_after(model_dir: Path) -> None:
    gate = threading.Event()
    s = settings_for(model_dir, max_batch_size=1, max_queue=2, max_queue_delay_ms=0)
    async with running(s, FakeEngine(gate=gate)) as (_a, c):
        tasks = [asyncio.ensure_future(c.post("/v1/predict", **form("t0")))]
        await asyncio.sleep(0.1)  # t0 is in the forward, blocked on the gate
        tasks += [asyncio.ensure_future(c.post("/v1/predict", **form(f"t{i}"))) for i in (1, 2)]
        await asyncio.sleep(0.1)
        r = await c.post("/v1/predict", **form("one too many"))
        assert r.status_code == 429
        assert int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"]["code"] == "queue_full"
        gate.set()
        assert [t.status_code for t in await asyncio.gather(*tasks)] == [200] * 3
        text = (await c.get("/metrics")).text
        assert 'ofa_agent_requests_total{outcome="rejected"} 1.0' in text


async def test_deadline_answers_504(model_dir: Path) -> None:
    s = settings_for(model_dir, request_timeout_s=0.2, max_queue_delay_ms=0)
    async with running(s, FakeEngine(delay_s=0.5)) as (_a, c):
        r = await c.post("/v1/predict", **form())
        assert r.status_code == 504
        assert r.json()["error"] == {
            "code": "deadline_exceeded",
            "message": "no answer within the request deadline of 0.2 s",
        }
        text = (await c.get("/metrics")).text
        assert 'ofa_agent_requests_total{outcome="timeout"} 1.0' in text


async def test_engine_failure_is_500_and_agent_keeps_serving(model_dir: Path) -> None:
    engine = FakeEngine(fail=True)
    async with running(settings_for(model_dir), engine) as (_a, c):
        r = await c.post("/v1/predict", **form())
        assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
        engine.fail = False
        assert (await c.post("/v1/predict", **form())).status_code == 200


@dataclass
class PreparingEngine(FakeEngine):
    """A fake with the real engine's `prepare` hook: it records the thread that ran it."""

    prepared_on: set[str] = field(default_factory=set)

    def prepare(self, pair):
        if pair.text == "refused by the preprocessor":
            raise ValueError("the preprocessor refused it")
        self.prepared_on.add(threading.current_thread().name)
        return pair


async def test_preprocessing_runs_on_the_prepare_pool_not_the_forward(model_dir: Path) -> None:
    engine = PreparingEngine()
    async with running(settings_for(model_dir, prepare_threads=2), engine) as (_a, c):
        r = await c.post("/v1/predict", **form("a dog"))
        assert r.status_code == 200 and r.json()["label"] == label_for("a dog")
        assert engine.prepared_on and all(n.startswith("ofa-prepare") for n in engine.prepared_on)
        assert not engine.threads & engine.prepared_on  # the forward ran on another thread
        r = await c.post("/v1/predict", **form("refused by the preprocessor"))
        assert r.status_code == 422, r.text
        assert r.json()["error"] == {"code": "invalid_field",
                                     "message": "text: the preprocessor refused it"}
        img = b64(png_bytes())
        r = await c.post("/v1/predict/batch", json={"items": [
            {"image": img, "text": "fine"}, {"image": img, "text": "refused by the preprocessor"}]})
        assert r.status_code == 422
        assert r.json()["error"]["message"] == "items[1]: the preprocessor refused it"
        assert (await c.post("/v1/predict", **form("still serving"))).status_code == 200


# --- info and metrics ---------------------------------------------------------------------
async def test_info_fields(model_dir: Path) -> None:
    s = settings_for(model_dir, release="20261124000000-abcdef12")
    async with running(s, FakeEngine()) as (_a, c):
        info = (await c.get("/v1/info")).json()
        assert info["node"] == "node-t"
        assert info["release"] == "20261124000000-abcdef12"
        assert info["model"] == {"id": "test/ofa", "revision": "v0", "digest": "d" * 64,
                                 "random_weights": True}
        assert info["device"] == "cpu" and info["dtype"] == "float32"
        assert info["versions"] == {"fake": "1"}
        assert info["batching"]["max_batch_size"] == 8
        assert info["batching"]["max_queue_delay_ms"] == 5
        assert info["batching"]["max_queue"] == 64
        assert info["state"] == "ready" and info["inflight"] == 0


async def test_metrics_names(model_dir: Path) -> None:
    async with running(settings_for(model_dir, release="r1"), FakeEngine()) as (_a, c):
        await c.post("/v1/predict", **form())
        await c.post("/v1/predict", json={"text": "no image"})
        r = await c.get("/metrics")
        assert r.headers["content-type"].startswith("text/plain")
        text = r.text
        for needle in (
            'ofa_agent_requests_total{outcome="ok"} 1.0',
            'ofa_agent_requests_total{outcome="client_error"} 1.0',
            'ofa_agent_request_duration_seconds_bucket{le="0.01"}',
            'ofa_agent_request_duration_seconds_bucket{le="10.0"}',
            "ofa_agent_queue_seconds_count 1.0",
            "ofa_agent_batch_size_count 1.0",
            "ofa_agent_inflight 0.0",
            "ofa_agent_queue_depth 0.0",
            "ofa_agent_ready 1.0",
            'ofa_agent_model_info{device="cpu",digest="' + "d" * 64
            + '",dtype="float32",model_id="test/ofa",release="r1",revision="v0"} 1.0',
        ):
            assert needle in text, needle
        assert "gpu_memory" not in text


async def test_openapi_documents_both_bodies(model_dir: Path) -> None:
    async with running(settings_for(model_dir), FakeEngine()) as (_a, c):
        spec = (await c.get("/openapi.json")).json()
        content = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
        assert set(content) == {"multipart/form-data", "application/json"}
        assert "/v1/predict/batch" in spec["paths"]
