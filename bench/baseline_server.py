"""The baseline: the common FastAPI example for this model, one stock pipeline call per request.

    python bench/baseline_server.py --model-dir DIR [--host 127.0.0.1] [--port 8100]

What "the common example" does, and what this does too: build ModelScope's stock
`pipeline(Tasks.visual_entailment, model=DIR)` once at start, then a plain `def` endpoint
(FastAPI runs it in its thread pool) that decodes the upload with Pillow and calls
`pipe({"image": img, "text": text})` for that one request. No batching, no queue bound, no
readiness, no drain. Used by bench/agent_bench.py as configuration (b).
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
from typing import Annotated

import uvicorn
from fastapi import FastAPI, File, Form, UploadFile
from PIL import Image


def build_app(model_dir: str, device: str = "cpu") -> FastAPI:
    """Load the stock pipeline and return the one-call-per-request app."""
    cache = os.path.join(tempfile.gettempdir(), "ofa-baseline-modelscope")
    os.environ.setdefault("MODELSCOPE_CACHE", cache)
    os.environ.setdefault("MODELSCOPE_HOME", cache)
    from modelscope.outputs import OutputKeys
    from modelscope.pipelines import pipeline
    from modelscope.utils.constant import Tasks

    pipe = pipeline(Tasks.visual_entailment, model=model_dir, device=device)
    app = FastAPI(title="ofa baseline (stock pipeline, one call per request)")

    @app.get("/health")
    def health() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/predict")
    def predict(
        image: Annotated[UploadFile, File()],
        text: Annotated[str, Form()],
        premise: Annotated[str | None, Form()] = None,
    ) -> dict[str, object]:
        img = Image.open(io.BytesIO(image.file.read())).convert("RGB")
        inputs: dict[str, object] = {"image": img, "text": text}
        if premise:
            inputs["text2"] = premise
        out = pipe(inputs)
        label, score = out[OutputKeys.LABELS], out[OutputKeys.SCORES]
        label = label[0] if isinstance(label, list | tuple) else label
        score = score[0] if isinstance(score, list | tuple) else score
        return {"label": label, "score": float(score)}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    app = build_app(args.model_dir, args.device)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
