"""The FastAPI app factory and the Agent that holds the service state.

The app answers /v2/health/live as soon as the socket listens; the model loads in the background
(lifespan startup starts it and returns), warms up, and only then does /v2/health/ready turn 200.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from .batcher import Batcher, BatchStats, Result
from .config import Settings
from .errors import ApiError, DeadlineExceeded, NotReady
from .inputs import Limits, RawItem, decode_image, parse_batch, parse_single, read_body
from .metrics import Metrics

MODEL_ALIAS = "ofa-ve"  # the name /v2/models/{name} always answers to
log = logging.getLogger("ofa_agent")

# (settings) -> (engine, pair type): the engine has predict/warmup/device/dtype/model_info/
# versions/gpu_memory (see engine.py); the pair type is called as Pair(image, text, premise).
EngineFactory = Callable[[Settings], tuple[Any, Callable[..., Any]]]


def default_engine_factory(settings: Settings) -> tuple[Any, Callable[..., Any]]:
    """Load the real engine (imports torch + modelscope; seconds)."""
    if settings.torch_threads > 0:
        import torch

        torch.set_num_threads(settings.torch_threads)
    from .engine import Engine, Pair

    engine = Engine(str(settings.model_dir), device=settings.device, dtype=settings.dtype)
    return engine, Pair


async def run_in_daemon_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run fn in a daemon thread and await it.

    The model load and warm-up take seconds to minutes; in asyncio's default executor a SIGTERM
    during them would make interpreter exit wait for them and overrun the drain timeout.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Any] = loop.create_future()

    def done(result: Any, exc: BaseException | None) -> None:
        if fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)

    def target() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            loop.call_soon_threadsafe(done, None, exc)
        else:
            loop.call_soon_threadsafe(done, result, None)

    threading.Thread(target=target, name="ofa-load", daemon=True).start()
    return await fut


def read_manifest_info(model_dir: Path) -> dict[str, Any]:
    """Model id/revision/digest from ofactl-manifest.json, before the engine is loaded."""
    try:
        data = json.loads((model_dir / "ofactl-manifest.json").read_text(encoding="utf-8"))
        return {
            "id": data.get("model_id"),
            "revision": data.get("revision"),
            "digest": data.get("digest"),
            "random_weights": bool(data.get("random_weights", False)),
        }
    except (OSError, ValueError, AttributeError):
        return {"id": None, "revision": None, "digest": None, "random_weights": None}


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


class Agent:
    """State of one agent process: engine, batcher, readiness, drain, auth, metrics."""

    def __init__(self, settings: Settings, engine_factory: EngineFactory | None = None) -> None:
        self.settings = settings
        self.engine_factory = engine_factory or default_engine_factory
        self.metrics = Metrics()
        self.limits = Limits(
            settings.max_body_bytes, settings.max_image_pixels, settings.max_text_chars,
            settings.max_items,
        )
        self.token = settings.read_token()
        if settings.token_problem() is not None:
            log.warning("%s; admin endpoints are disabled", settings.token_problem())
        self.engine: Any = None
        self.pair_type: Callable[..., Any] | None = None
        self.batcher: Batcher | None = None
        self.model = read_manifest_info(settings.model_dir)
        self.warmed = False
        self.warmup_ms: float | None = None
        self.load_error: str | None = None
        self.draining = False
        self.drain_source: str | None = None  # "admin" or "signal"
        self.inflight = 0
        self.preparing = 0  # predict requests admitted but not queued yet (read by the batcher)
        self.started_at = time.time()
        self._load_task: asyncio.Task[None] | None = None
        # Decode + preprocess run here, overlapping the forward. One thread by default: on a
        # small CPU node every extra thread is one more contender for the GIL that the forward
        # thread must win back after each torch op (measured: 1 thread 231 req/s, 2 threads
        # 209, asyncio's default pool of 6 184 on the tiny model, 2 cores).
        self._prepare_pool = ThreadPoolExecutor(
            max_workers=settings.prepare_threads, thread_name_prefix="ofa-prepare"
        )

    # --- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Start loading the model in the background; returns at once."""
        self.batcher = Batcher(
            self._predict_batch,
            max_batch_size=self.settings.max_batch_size,
            max_queue_delay_ms=self.settings.max_queue_delay_ms,
            max_queue=self.settings.max_queue,
            stats=BatchStats(
                on_batch=self.metrics.observe_batch,
                on_queue_time=self.metrics.queue_seconds.observe,
            ),
            incoming=lambda: self.preparing,
        )
        self._load_task = asyncio.get_running_loop().create_task(self._load(), name="ofa-load")

    async def _load(self) -> None:
        s = self.settings
        t0 = time.monotonic()
        try:
            log.info("loading model from %s (device %s, dtype %s)", s.model_dir, s.device, s.dtype)
            engine, pair_type = await run_in_daemon_thread(self.engine_factory, s)
            self.engine, self.pair_type = engine, pair_type
            self.model = {**self.model, **dict(getattr(engine, "model_info", {}) or {})}
            log.info("model loaded in %.1f s on %s", time.monotonic() - t0, engine.device)
            if s.warmup > 0:
                self.warmup_ms = float(await run_in_daemon_thread(engine.warmup, s.warmup))
                log.info("warm-up: %d inferences in %.0f ms", s.warmup, self.warmup_ms)
            self.warmed = True
            assert self.batcher is not None
            self.batcher.start()
            self.metrics.model_info.labels(
                model_id=str(self.model.get("id")), revision=str(self.model.get("revision")),
                digest=str(self.model.get("digest")), device=str(engine.device),
                dtype=str(engine.dtype), release=s.release,
            ).set(1)
            ready, reason = self.readiness()
            if ready:
                log.info("ready")
            else:
                log.warning("not ready: %s", reason)
        except Exception as exc:  # noqa: BLE001 - reported through readiness, the process stays
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("model load failed")

    async def stop(self) -> None:
        """Lifespan shutdown: answer what is still queued with 503 and stop the batcher."""
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        if self.batcher is not None:
            await self.batcher.close()
        self._prepare_pool.shutdown(wait=False, cancel_futures=True)

    # --- health -------------------------------------------------------------------------
    def readiness(self) -> tuple[bool, str]:
        """(ready, reason): loaded, warmed, not draining, on the expected device."""
        if self.load_error is not None:
            return False, f"model load failed: {self.load_error}"
        if self.engine is None:
            return False, "loading the model"
        if not self.warmed:
            return False, "warming up"
        if self.draining:
            return False, "draining" + (" (shutting down)" if self.drain_source == "signal" else "")
        device = str(self.engine.device)
        if self.settings.device == "cuda" and not device.startswith("cuda"):
            return False, f"configured for device cuda but running on {device}"
        return True, "ready"

    @property
    def state(self) -> str:
        if self.draining:
            return "draining"
        if self.load_error is not None:
            return "failed"
        if not self.warmed:
            return "starting"
        ready, _ = self.readiness()
        return "ready" if ready else "failed"

    def drain(self, source: str) -> None:
        """Readiness turns 503 at once; requests keep being served."""
        if not self.draining or source == "signal":
            self.drain_source = source
        self.draining = True
        self.metrics.ready.set(0)
        log.info("draining (%s): %d in flight, %d queued", source, self.inflight,
                 self.batcher.pending if self.batcher else 0)

    @property
    def pending(self) -> int:
        """Predict requests in progress plus pairs queued or running."""
        return self.inflight + (self.batcher.pending if self.batcher else 0)

    # --- auth ---------------------------------------------------------------------------
    def check_token(self, request: Request, *, admin: bool) -> None:
        """Bearer token check: always for admin, for predict with --require-token."""
        if not admin and not self.settings.require_token:
            return
        if self.token is None:
            raise ApiError(
                403, "admin_disabled",
                "admin endpoints are disabled: the agent has no --token-file",
            )
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        challenge = {"WWW-Authenticate": "Bearer"}
        if scheme.lower() != "bearer" or not value.strip():
            raise ApiError(
                401, "unauthorized", "missing bearer token (Authorization: Bearer <token>)",
                challenge,
            )
        if not hmac.compare_digest(value.strip().encode(), self.token.encode()):
            raise ApiError(401, "unauthorized", "invalid bearer token", challenge)

    # --- predict ------------------------------------------------------------------------
    def _predict_batch(self, pairs: list[Any]) -> list[Any]:
        return list(self.engine.predict(pairs))

    def _decode(self, items: list[RawItem]) -> list[Any]:
        """Decode each image and, when the engine can, run its preprocessor here.

        This runs in a worker thread of its own, outside the forward lock: the next requests'
        resize/normalise/tokenise overlaps the batch in its forward instead of adding to it.
        """
        assert self.pair_type is not None
        prepare = getattr(self.engine, "prepare", None)
        pairs = []
        for i, item in enumerate(items):
            where = "image" if len(items) == 1 else f"items[{i}].image"
            img = decode_image(item.image, self.limits.max_image_pixels, where)
            pair = self.pair_type(img, item.text, item.premise)
            if prepare is not None:
                try:
                    pair = prepare(pair)
                except ValueError as exc:  # the preprocessor refused the text
                    field = "text" if len(items) == 1 else f"items[{i}]"
                    raise ApiError(422, "invalid_field", f"{field}: {exc}") from None
            pairs.append(pair)
        return pairs

    def _answer(self, result: Result) -> dict[str, Any]:
        p = result.prediction
        return {
            "label": p.label,
            "answer": p.answer,
            "probabilities": {k: float(v) for k, v in p.probabilities.items()},
            "node": self.settings.node_name,
            "model": {k: self.model.get(k) for k in ("id", "revision", "digest")},
            "timings": {
                "queue_ms": round(result.queue_ms, 3),
                "inference_ms": round(result.inference_ms, 3),
                "batch_size": result.batch_size,
            },
        }

    async def handle_predict(self, request: Request, *, batch: bool) -> Response:
        """One predict request end to end; every failure becomes a JSON error answer."""
        t0 = time.monotonic()
        self.inflight += 1
        self.preparing += 1
        queued = False
        self.metrics.inflight.inc()
        status, n_items = 500, 0
        try:
            self.check_token(request, admin=False)
            if self.engine is None or not self.warmed or self.batcher is None:
                raise NotReady(self.readiness()[1])
            body = await _read(request, self.limits.max_body_bytes)
            ctype = request.headers.get("content-type")
            items = (
                parse_batch(body, ctype, self.limits) if batch
                else [parse_single(body, ctype, self.limits)]
            )
            n_items = len(items)
            pairs = await asyncio.get_running_loop().run_in_executor(
                self._prepare_pool, self._decode, items
            )
            remaining = self.settings.request_timeout_s - (time.monotonic() - t0)
            if remaining <= 0:
                raise DeadlineExceeded(self.settings.request_timeout_s)
            self.preparing -= 1
            queued = True
            results = await self.batcher.predict_many(
                pairs, remaining, self.settings.request_timeout_s
            )
            answers = [self._answer(r) for r in results]
            status = 200
            return JSONResponse({"results": answers} if batch else answers[0])
        except ApiError as err:
            status = err.status
            return error_response(err)
        except Exception:  # noqa: BLE001 - an engine failure: 500, the agent keeps serving
            log.exception("predict failed")
            status = 500
            return error_response(
                ApiError(500, "internal_error", "inference failed; see the agent's log")
            )
        finally:
            if not queued:
                self.preparing -= 1
            elapsed = time.monotonic() - t0
            self.inflight -= 1
            self.metrics.inflight.dec()
            self.metrics.observe_request(status, elapsed)
            log.info("%s %d items=%d %.1fms", request.url.path, status, n_items, elapsed * 1000)


async def _read(request: Request, limit: int) -> bytes:
    try:
        return await read_body(request.stream(), request.headers.get("content-length"), limit)
    except ApiError:
        raise
    except Exception as exc:  # noqa: BLE001 - the client went away or sent broken framing
        raise ApiError(400, "bad_request", f"could not read the request body: {exc}") from None


# --- OpenAPI documentation of the hand-parsed bodies -------------------------------------
class ModelRef(BaseModel):
    id: str | None
    revision: str | None
    digest: str | None


class Timings(BaseModel):
    queue_ms: float
    inference_ms: float
    batch_size: int


class PredictAnswer(BaseModel):
    label: str
    answer: str
    probabilities: dict[str, float]
    node: str
    model: ModelRef
    timings: Timings


class BatchAnswer(BaseModel):
    results: list[PredictAnswer]


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorAnswer(BaseModel):
    error: ErrorDetail


_ITEM_SCHEMA = {
    "type": "object",
    "required": ["image", "text"],
    "properties": {
        "image": {"type": "string", "format": "byte", "description": "base64 image bytes"},
        "text": {"type": "string", "description": "the hypothesis"},
        "premise": {"type": "string", "description": "optional premise text"},
    },
}
_PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image", "text"],
                    "properties": {
                        "image": {"type": "string", "format": "binary"},
                        "text": {"type": "string"},
                        "premise": {"type": "string"},
                    },
                }
            },
            "application/json": {"schema": _ITEM_SCHEMA},
        },
    }
}
_BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["items"],
                    "properties": {"items": {"type": "array", "items": _ITEM_SCHEMA}},
                }
            }
        },
    }
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorAnswer, "description": text}
    for code, text in {
        400: "malformed JSON, multipart or base64",
        401: "missing or wrong bearer token",
        413: "body over --max-body-bytes, or too many batch items",
        415: "unsupported Content-Type",
        422: "missing/invalid field, empty or over-long text, bad/too-large image",
        429: "queue full (Retry-After)",
        503: "model not loaded yet or shutting down (Retry-After)",
        504: "request deadline exceeded",
    }.items()
}


def create_app(settings: Settings, engine_factory: EngineFactory | None = None) -> FastAPI:
    """Build the app; the model loads when its lifespan starts."""
    agent = Agent(settings, engine_factory)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await agent.start()
        yield
        await agent.stop()

    app = FastAPI(
        title="ofa-agent",
        version="0.1.0",
        description="OFA visual entailment with dynamic micro-batching (ofactl node agent).",
        lifespan=lifespan,
    )
    app.state.agent = agent

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(
            ApiError(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(ApiError(422, "invalid_request", str(exc.errors())[:500]))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(ApiError(500, "internal_error", "internal error; see the log"))

    @app.post(
        "/v1/predict", openapi_extra=_PREDICT_BODY,
        responses={200: {"model": PredictAnswer}, **_ERRORS},
        summary="Entailment for one image + hypothesis (multipart or JSON with base64 image)",
    )
    async def predict(request: Request) -> Response:
        return await agent.handle_predict(request, batch=False)

    @app.post(
        "/v1/predict/batch", openapi_extra=_BATCH_BODY,
        responses={200: {"model": BatchAnswer}, **_ERRORS},
        summary="Several pairs in one request; answers in order",
    )
    async def predict_batch(request: Request) -> Response:
        return await agent.handle_predict(request, batch=True)

    @app.get("/v2/health/live", summary="Liveness: the process and its event loop answer")
    async def live() -> dict[str, Any]:
        return {"live": True}

    @app.get(
        "/v2/health/ready",
        summary="Readiness: model loaded, warmed up, not draining, expected device",
        responses={503: {"description": '{"ready": false, "reason": "..."}'}},
    )
    async def ready() -> JSONResponse:
        ok, reason = agent.readiness()
        if ok:
            return JSONResponse({"ready": True})
        return JSONResponse({"ready": False, "reason": reason}, status_code=503)

    def model_names() -> set[str]:
        """Names /v2/models/{name} answers to: the alias and the model id's last part."""
        model_id = str(agent.model.get("id") or "")
        return {MODEL_ALIAS, model_id.rsplit("/", 1)[-1]} - {""}

    def known_model(name: str) -> None:
        names = model_names()
        if name not in names:
            raise ApiError(404, "unknown_model",
                           f"no model {name!r} here; this agent serves "
                           + " or ".join(repr(n) for n in sorted(names)))

    @app.get(
        "/v2/models/{name}/ready",
        summary="Model readiness (KServe v2 protocol): as /v2/health/ready, for this model",
        responses={404: {"description": "unknown model name"},
                   503: {"description": '{"ready": false, "reason": "..."}'}},
    )
    async def model_ready(name: str) -> JSONResponse:
        known_model(name)
        ok, reason = agent.readiness()
        if ok:
            return JSONResponse({"name": name, "ready": True})
        return JSONResponse({"name": name, "ready": False, "reason": reason}, status_code=503)

    @app.get(
        "/v2/models/{name}",
        summary="Model metadata (KServe v2 protocol): name, versions, platform, inputs, outputs",
        responses={404: {"description": "unknown model name"}},
    )
    async def model_metadata(name: str) -> dict[str, Any]:
        known_model(name)
        eng = agent.engine
        return {
            "name": name,
            "versions": [str(agent.model.get("revision"))],
            "platform": "modelscope-ofa-pytorch",
            "id": agent.model.get("id"),
            "digest": agent.model.get("digest"),
            "device": str(eng.device) if eng is not None else None,
            "inputs": [
                {"name": "image", "datatype": "BYTES", "shape": [-1]},
                {"name": "text", "datatype": "BYTES", "shape": [-1]},
                {"name": "premise", "datatype": "BYTES", "shape": [-1], "optional": True},
            ],
            "outputs": [
                {"name": "label", "datatype": "BYTES", "shape": [-1]},
                {"name": "probabilities", "datatype": "FP64", "shape": [-1, 3]},
            ],
        }

    @app.get("/v1/info", summary="Node, model, device, versions, batching, state")
    async def info() -> dict[str, Any]:
        eng = agent.engine
        _ok, reason = agent.readiness()
        return {
            "node": settings.node_name,
            "release": settings.release,
            "model": agent.model,
            "device": str(eng.device) if eng is not None else None,
            "configured_device": settings.device,
            "dtype": str(eng.dtype) if eng is not None else settings.dtype,
            "versions": dict(getattr(eng, "versions", {}) or {}),
            "torch_threads": settings.torch_threads or None,
            "batching": settings.batching,
            "state": agent.state,
            "reason": reason,
            "inflight": agent.inflight,
            "queued": agent.batcher.queued if agent.batcher else 0,
            "warmup_ms": agent.warmup_ms,
            "uptime_s": round(time.time() - agent.started_at, 1),
        }

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        m = agent.metrics
        m.ready.set(1 if agent.readiness()[0] else 0)
        m.queue_depth.set(agent.batcher.queued if agent.batcher else 0)
        if agent.engine is not None and hasattr(agent.engine, "gpu_memory"):
            try:
                m.set_gpu_memory(agent.engine.gpu_memory())
            except Exception:  # noqa: BLE001 - a failed reading must not break the scrape
                log.debug("gpu_memory failed", exc_info=True)
        body, ctype = m.render()
        return Response(body, media_type=ctype)

    @app.post("/admin/drain", summary="Readiness 503 now; keep serving (bearer token)")
    async def drain(request: Request) -> dict[str, Any]:
        agent.check_token(request, admin=True)
        agent.drain("admin")
        return {"state": agent.state, "inflight": agent.inflight,
                "queued": agent.batcher.queued if agent.batcher else 0}

    @app.post("/admin/undrain", summary="Leave an admin drain (bearer token)")
    async def undrain(request: Request) -> dict[str, Any]:
        agent.check_token(request, admin=True)
        if agent.drain_source == "signal":
            raise ApiError(409, "shutting_down", "the agent is shutting down (SIGTERM); "
                           "undrain is refused")
        agent.draining = False
        agent.drain_source = None
        ready, reason = agent.readiness()
        agent.metrics.ready.set(1 if ready else 0)
        return {"state": agent.state, "ready": ready, "reason": reason}

    return app
