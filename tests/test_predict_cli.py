"""`ofactl predict`: in-process on the tiny model, or against an endpoint (mock transport)."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from typer.testing import CliRunner

from ofactl.cli import agent_cmd, app

runner = CliRunner()


@pytest.fixture
def pics(tmp_path: Path) -> Path:
    Image.new("RGB", (120, 90), (10, 100, 200)).save(tmp_path / "a.jpg")
    Image.new("RGB", (40, 60), (200, 10, 10)).save(tmp_path / "b.png")
    (tmp_path / "not-image.jpg").write_bytes(b"hello, this is text")
    return tmp_path


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return runner.invoke(app, ["predict", *args], env=env)


def error_line(result: Any) -> str:
    return [ln for ln in result.output.splitlines() if ln.startswith("error:")][0]


# -- in-process --------------------------------------------------------------------------------


@pytest.mark.runtime
def test_single_json_equals_the_engine(tiny_model_dir: Path, tiny_engine, pics: Path) -> None:
    from ofa_agent.engine import Pair
    from ofa_agent.images import load_image_file

    r = invoke(str(pics / "a.jpg"), "a dog on the grass", "--premise", "a man outside",
               "--model", str(tiny_model_dir), "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    expected = tiny_engine.predict(
        [Pair(load_image_file(str(pics / "a.jpg")), "a dog on the grass", "a man outside")])[0]
    assert out["label"] == expected.label and out["answer"] == expected.answer
    for lab, p in expected.probabilities.items():
        assert abs(out["probabilities"][lab] - p) < 1e-6
    assert math.isclose(sum(out["probabilities"].values()), 1.0, abs_tol=1e-9)
    assert out["model"]["id"] == "ofactl/ofa-ve-tiny-random"
    assert out["model"]["random_weights"] is True
    assert out["node"] == "local"
    assert set(out["timings"]) == {"inference_ms", "batch_size"}


@pytest.mark.runtime
def test_single_table(tiny_model_dir: Path, pics: Path) -> None:
    r = invoke(str(pics / "b.png"), "a red cat", "--model", str(tiny_model_dir))
    assert r.exit_code == 0, r.output
    for word in ("entailment", "contradiction", "neutral", "hypothesis: 'a red cat'",
                 "ofactl/ofa-ve-tiny-random@random-seed0", "random weights"):
        assert word in r.stdout


@pytest.mark.runtime
def test_file_jsonl_batches_in_order(tiny_model_dir: Path, tiny_engine, pics: Path) -> None:
    from ofa_agent.engine import Pair
    from ofa_agent.images import load_image_file

    rows = [
        {"image": "a.jpg", "text": "a dog"},
        None,  # blank line
        {"image": "b.png", "text": "two cats on a table near the water", "premise": "a car"},
        {"image": str(pics / "a.jpg"), "text": "people walking"},
    ]
    f = pics / "pairs.jsonl"
    f.write_text("\n".join("" if r is None else json.dumps(r) for r in rows) + "\n")
    r = invoke("--file", str(f), "--model", str(tiny_model_dir), "--batch-size", "2", "--json")
    assert r.exit_code == 0, r.output
    lines = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert [ln["line"] for ln in lines] == [1, 3, 4]
    assert [ln["text"] for ln in lines] == ["a dog", "two cats on a table near the water",
                                            "people walking"]
    assert lines[1]["premise"] == "a car"
    assert [ln["timings"]["batch_size"] for ln in lines] == [2, 2, 1]
    pairs = [Pair(load_image_file(str(pics / "a.jpg")), "a dog"),
             Pair(load_image_file(str(pics / "b.png")), "two cats on a table near the water",
                  "a car"),
             Pair(load_image_file(str(pics / "a.jpg")), "people walking")]
    for got, exp in zip(lines, tiny_engine.predict(pairs), strict=True):
        assert got["label"] == exp.label
        assert abs(got["probabilities"]["neutral"] - exp.probabilities["neutral"]) < 1e-5
    table = invoke("--file", str(f), "--model", str(tiny_model_dir))
    assert table.exit_code == 0, table.output
    assert "3 pairs via ofactl/ofa-ve-tiny-random@random-seed0" in table.stdout


@pytest.mark.runtime
def test_bad_image_in_process(tiny_model_dir: Path, pics: Path) -> None:
    r = invoke(str(pics / "not-image.jpg"), "a dog", "--model", str(tiny_model_dir))
    assert r.exit_code == 2
    assert error_line(r) == (f"error: {pics / 'not-image.jpg'}: not an image (expected one of: "
                             "BMP, GIF, JPEG, PNG, TIFF, WEBP)")
    assert "Traceback" not in r.output


@pytest.mark.runtime
def test_device_and_dtype_errors(tiny_model_dir: Path, pics: Path) -> None:
    r = invoke(str(pics / "a.jpg"), "a dog", "--model", str(tiny_model_dir), "--device", "cpu",
               "--dtype", "bfloat16")
    assert r.exit_code == 2, r.output
    assert error_line(r) == ("error: --dtype: bfloat16 needs CUDA (autocast); on CPU only "
                             "float32 is supported")
    import torch

    if not torch.cuda.is_available():
        r = invoke(str(pics / "a.jpg"), "a dog", "--model", str(tiny_model_dir), "--device",
                   "cuda")
        assert r.exit_code == 2, r.output
        assert error_line(r) == "error: --device cuda: CUDA is not available on this machine"


# -- usage and input errors (no model needed) --------------------------------------------------


@pytest.mark.parametrize(("args", "message"), [
    (["missing.jpg", "a dog", "--model", "m"], "error: missing.jpg: image file not found"),
    (["a.jpg", "  ", "--model", "m"], "error: TEXT: must be a non-empty string, got '  '"),
    (["a.jpg", "a dog", "--premise", "", "--model", "m"],
     "error: --premise: must be a non-empty string, got ''"),
    (["a.jpg"], "error: give IMAGE and TEXT (or --file FILE.jsonl)"),
    (["a.jpg", "a dog"],
     "error: give --model DIR (run the model here) or --endpoint URL (ask a node)"),
    (["a.jpg", "a dog", "--model", "m", "--endpoint", "http://x"],
     "error: give either --model DIR or --endpoint URL, not both"),
    (["a.jpg", "a dog", "--file", "f.jsonl", "--model", "m"],
     "error: give either IMAGE TEXT [--premise P] or --file FILE.jsonl, not both"),
    (["a.jpg", "a dog", "--model", "nowhere"], "error: --model: nowhere: not a directory"),
    (["a.jpg", "a dog", "--endpoint", "ftp://x"],
     "error: --endpoint: must start with http:// or https://, got 'ftp://x'"),
    (["a.jpg", "a dog", "--endpoint", "http://x", "--token-env", "OFACTL_TEST_NO_SUCH_VAR"],
     "error: --token-env: $OFACTL_TEST_NO_SUCH_VAR is not set or empty"),
])
def test_usage_errors_exit_2(pics: Path, monkeypatch: pytest.MonkeyPatch, args: list[str],
                             message: str) -> None:
    monkeypatch.chdir(pics)
    r = invoke(*args)
    assert r.exit_code == 2, r.output
    assert error_line(r) == message


@pytest.mark.parametrize(("content", "message"), [
    ('{"image": "a.jpg", "text": "ok"}\n{"image": "a.jpg", "text": \n',
     "pairs.jsonl:2: not valid JSON (Expecting value at column 28)"),
    ('["a.jpg", "x"]\n', "pairs.jsonl:1: expected a JSON object, got list"),
    ('{"image": "a.jpg", "text": "x", "hypothesis": "y"}\n',
     "pairs.jsonl:1: unknown key(s) hypothesis (expected image, text, premise)"),
    ('{"image": "a.jpg", "text": ""}\n', "pairs.jsonl:1: text: must be a non-empty string, got ''"),
    ('{"text": "x"}\n', "pairs.jsonl:1: image: must be a path string, got None"),
    ('\n{"image": "nope.png", "text": "x"}\n', "pairs.jsonl:2: nope.png: image file not found"),
    ("\n\n", "pairs.jsonl: no pairs in the file"),
])
def test_jsonl_errors_name_the_line(pics: Path, monkeypatch: pytest.MonkeyPatch, content: str,
                                    message: str) -> None:
    monkeypatch.chdir(pics)
    (pics / "pairs.jsonl").write_text(content)
    r = invoke("--file", "pairs.jsonl", "--endpoint", "http://agent")
    assert r.exit_code == 2, r.output
    assert error_line(r) == "error: " + message


# -- endpoint (mock transport) -----------------------------------------------------------------

ANSWER = {
    "label": "entailment", "answer": "yes",
    "probabilities": {"entailment": 0.7, "contradiction": 0.2, "neutral": 0.1},
    "node": "node-1", "model": {"id": "m", "revision": "r", "digest": "d"},
    "timings": {"queue_ms": 1.0, "inference_ms": 5.0},
}


class FakeEndpoint:
    """Requests seen by the mock transport, and replies to give (default: 200 ANSWER)."""

    def __init__(self) -> None:
        self.seen: list[httpx.Request] = []
        self.replies: list[httpx.Response] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.seen.append(request)
        return self.replies.pop(0) if self.replies else httpx.Response(200, json=ANSWER)


@pytest.fixture
def endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeEndpoint]:
    fake = FakeEndpoint()
    monkeypatch.setattr(agent_cmd, "HTTP_TRANSPORT", httpx.MockTransport(fake.handle))
    yield fake


def test_endpoint_posts_multipart_with_token(pics: Path, endpoint: FakeEndpoint) -> None:
    r = invoke(str(pics / "a.jpg"), "a dog", "--premise", "a man", "--endpoint",
               "http://10.0.0.5:8000/", "--token-env", "MY_TOKEN", "--json",
               env={"MY_TOKEN": "s3cret"})
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["node"] == "node-1"
    (req,) = endpoint.seen
    assert str(req.url) == "http://10.0.0.5:8000/v1/predict"
    assert req.method == "POST"
    assert req.headers["authorization"] == "Bearer s3cret"
    body = req.content
    assert req.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert b'name="text"\r\n\r\na dog\r\n' in body
    assert b'name="premise"\r\n\r\na man\r\n' in body
    assert b'name="image"; filename="a.jpg"' in body
    assert (pics / "a.jpg").read_bytes() in body
    assert "s3cret" not in r.output


def test_endpoint_file_uses_the_batch_endpoint(pics: Path, endpoint: FakeEndpoint) -> None:
    f = pics / "pairs.jsonl"
    f.write_text('{"image": "a.jpg", "text": "one"}\n{"image": "b.png", "text": "two", '
                 '"premise": "p"}\n{"image": "a.jpg", "text": "three"}\n')
    endpoint.replies.append(httpx.Response(200, json={"results": [ANSWER, ANSWER]}))
    r = invoke("--file", str(f), "--endpoint", "http://agent", "--batch-size", "2", "--json",
               env={"OFA_AGENT_TOKEN": "tok"})
    assert r.exit_code == 0, r.output
    assert [json.loads(ln)["line"] for ln in r.stdout.splitlines()] == [1, 2, 3]
    batch, single = endpoint.seen
    assert all(req.headers["authorization"] == "Bearer tok" for req in endpoint.seen)
    assert str(batch.url) == "http://agent/v1/predict/batch"
    assert json.loads(batch.content) == {"items": [
        {"image": base64.b64encode((pics / "a.jpg").read_bytes()).decode(), "text": "one"},
        {"image": base64.b64encode((pics / "b.png").read_bytes()).decode(), "text": "two",
         "premise": "p"}]}
    assert str(single.url) == "http://agent/v1/predict"  # a last chunk of one goes single


def test_endpoint_batch_error_names_the_line(pics: Path, endpoint: FakeEndpoint) -> None:
    f = pics / "pairs.jsonl"
    f.write_text('{"image": "a.jpg", "text": "one"}\n\n{"image": "b.png", "text": "two"}\n')
    endpoint.replies.append(httpx.Response(422, json={"error": {
        "code": "not_an_image", "message": "items[1].image: not an image"}}))
    r = invoke("--file", str(f), "--endpoint", "http://agent")
    assert r.exit_code == 2, r.output
    assert error_line(r) == ("error: lines 1-3: http://agent/v1/predict/batch: 422 not_an_image: "
                             "line 3: image: not an image")


@pytest.mark.parametrize(("status", "body", "code", "message"), [
    (400, {"error": {"code": "bad_image", "message": "image: not an image"}}, 2,
     "error: http://agent/v1/predict: 400 bad_image: image: not an image"),
    (413, {"error": {"code": "too_large", "message": "body over 8388608 bytes"}}, 2,
     "error: http://agent/v1/predict: 413 too_large: body over 8388608 bytes"),
    (401, {"error": {"code": "unauthorized", "message": "missing bearer token"}}, 1,
     "error: http://agent/v1/predict: 401 unauthorized: missing bearer token"),
    (429, {"error": {"code": "queue_full", "message": "queue is full"}}, 1,
     "error: http://agent/v1/predict: 429 queue_full: queue is full"),
    (500, None, 1, "error: http://agent/v1/predict: 500: oops"),
    (200, {"unexpected": True}, 1,
     "error: http://agent/v1/predict: unexpected answer '{\"unexpected\":true}'"),
])
def test_endpoint_errors(pics: Path, endpoint: FakeEndpoint, status: int, body: Any, code: int,
                         message: str) -> None:
    reply = (httpx.Response(status, json=body) if body is not None
             else httpx.Response(status, text="oops"))
    endpoint.replies.append(reply)
    r = invoke(str(pics / "a.jpg"), "a dog", "--endpoint", "http://agent")
    assert r.exit_code == code, r.output
    assert error_line(r) == message


def test_endpoint_unreachable_exits_1(pics: Path) -> None:
    r = invoke(str(pics / "a.jpg"), "a dog", "--endpoint", "http://127.0.0.1:9",
               "--timeout", "2")
    assert r.exit_code == 1, r.output
    assert error_line(r).startswith("error: http://127.0.0.1:9/v1/predict: ")
    assert "hint: check the URL and that the agent is up" in r.output
