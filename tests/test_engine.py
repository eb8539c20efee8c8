"""The agent engine on the tiny model through ModelScope's real OFA pipeline; image decoding."""

from __future__ import annotations

import io
import json
import math
import struct
import zlib
from pathlib import Path

import pytest
from ofa_agent import images
from ofa_agent.engine import LABELS, Pair, Prediction, read_model_info
from PIL import Image

TOL = 1e-5


def _img(size: tuple[int, int], color: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", size, color)


def _gradient(size: tuple[int, int]) -> Image.Image:
    img = Image.new("RGB", size)
    img.putdata([((x * 7) % 256, (y * 5) % 256, (x + y) % 256)
                 for y in range(size[1]) for x in range(size[0])])
    return img


# Texts of very different token lengths, with and without a premise, different images.
PAIRS = [
    Pair(_img((100, 80), (200, 30, 30)), "a dog"),
    Pair(_gradient((64, 64)), "two people are walking a red dog on the street near the water "
         "while a man is sitting on a blue car and a woman is playing with a ball"),
    Pair(_img((30, 300), (0, 30, 230)), "a cat is inside", premise="a woman with a cat"),
    Pair(_gradient((200, 50)), "x", premise="two men standing outside near the grass and "
         "a table with one green ball on it"),
    Pair(_img((1, 1), (255, 255, 255)), "Red?!", premise="A DOG."),
]


def _close(a: Prediction, b: Prediction) -> None:
    assert a.label == b.label
    assert a.answer == b.answer
    for lab in LABELS:
        assert abs(a.probabilities[lab] - b.probabilities[lab]) <= TOL, (lab, a, b)


@pytest.mark.runtime
def test_engine_reports_device_dtype_versions_and_model(tiny_engine, tiny_model_dir: Path) -> None:
    manifest = json.loads((tiny_model_dir / "ofactl-manifest.json").read_text())
    assert tiny_engine.device == "cpu"
    assert tiny_engine.dtype == "float32"
    assert tiny_engine.model_info == {
        "id": "ofactl/ofa-ve-tiny-random",
        "revision": "random-seed0",
        "digest": manifest["digest"],
        "random_weights": True,
    }
    assert set(tiny_engine.versions) == {"torch", "modelscope", "transformers", "python"}
    assert tiny_engine.versions["modelscope"] == "1.40.2"
    assert tiny_engine.gpu_memory() is None


@pytest.mark.runtime
def test_probabilities_are_a_distribution_over_the_three_labels(tiny_engine) -> None:
    preds = tiny_engine.predict(PAIRS)
    assert len(preds) == len(PAIRS)
    answers = {"entailment": "yes", "contradiction": "no", "neutral": "maybe"}
    for p in preds:
        assert tuple(p.probabilities) == LABELS
        assert all(0.0 < v < 1.0 for v in p.probabilities.values())
        assert math.isclose(sum(p.probabilities.values()), 1.0, abs_tol=1e-9)
        assert p.label == max(p.probabilities, key=lambda k: p.probabilities[k])
        assert p.answer == answers[p.label]
    # Real numbers, not the stock generation path's constant 1.0: they differ between inputs.
    assert len({round(p.probabilities["entailment"], 6) for p in preds}) == len(preds)


@pytest.mark.runtime
def test_batch_equals_single_calls(tiny_engine) -> None:
    singles = [tiny_engine.predict([p])[0] for p in PAIRS]
    for batch in (PAIRS, list(reversed(PAIRS)), PAIRS[1:3], PAIRS + PAIRS):
        preds = tiny_engine.predict(batch)
        for pair, pred in zip(batch, preds, strict=True):
            _close(pred, singles[PAIRS.index(pair)])


@pytest.mark.runtime
def test_prepared_pairs_equal_raw_pairs(tiny_engine) -> None:
    # The agent preprocesses outside the forward (Engine.prepare); the answers must not change,
    # in a batch that mixes prepared and raw pairs, and a Prepared may be used twice.
    singles = [tiny_engine.predict([p])[0] for p in PAIRS]
    prepared = [tiny_engine.prepare(p) for p in PAIRS]
    mixed = [x if i % 2 else prepared[i] for i, x in enumerate(PAIRS)]
    for batch in (prepared, mixed, prepared):
        for i, pred in enumerate(tiny_engine.predict(batch)):
            _close(pred, singles[i])
    with pytest.raises(ValueError, match="text: must be a non-empty string"):
        tiny_engine.prepare(Pair(_img((8, 8), (1, 2, 3)), "  "))


@pytest.mark.runtime
def test_fast_path_equals_ofa_traverse_scoring(tiny_engine) -> None:
    # The single-token shortcut must give the very numbers of OFA's full traverse scoring.
    assert tiny_engine._single_token_answers
    fast = tiny_engine._scores(PAIRS)
    full = tiny_engine._scores_traverse(PAIRS)
    assert fast.shape == full.shape == (len(PAIRS), 3)
    assert (fast - full).abs().max().item() <= 1e-5


@pytest.mark.runtime
def test_matches_the_stock_traverse_pipeline(tiny_engine, tiny_model_dir: Path) -> None:
    from modelscope.pipelines import pipeline
    from modelscope.utils.constant import Tasks

    stock = pipeline(Tasks.visual_entailment, model=str(tiny_model_dir), device="cpu")
    for pair in PAIRS:
        data = {"image": pair.image, "text": pair.text}
        if pair.premise is not None:
            data["text2"] = pair.premise
        out = stock(data)
        pred = tiny_engine.predict([pair])[0]
        assert pred.answer == out["labels"]
        assert abs(max(pred.probabilities.values()) - out["scores"]) <= TOL


@pytest.mark.runtime
def test_engine_sets_what_it_needs_on_a_hub_style_configuration(tiny_engine,
                                                               tiny_model_dir: Path,
                                                               tmp_path: Path) -> None:
    # The hub's large model ships generation mode, no prompt type, no answer2label: the engine
    # must still score the three answers the same way.
    from ofa_agent.engine import Engine

    hub = tmp_path / "hub-style"
    hub.mkdir()
    for f in tiny_model_dir.iterdir():
        if f.name not in ("configuration.json", "answer2label.json", "ofactl-manifest.json"):
            (hub / f.name).symlink_to(f)
    cfg = json.loads((tiny_model_dir / "configuration.json").read_text())
    cfg["model"].update({"gen_type": "generation", "beam_search": {"beam_size": 5}})
    for key in ("prompt_type", "answer2label", "valid_batch_size"):
        cfg["model"].pop(key)
    (hub / "configuration.json").write_text(json.dumps(cfg))
    before = sorted(p.name for p in hub.iterdir())
    engine = Engine(hub, device="cpu")
    try:
        assert engine.model_info["id"] == "hub-style"
        assert engine.model_info["digest"] is None
        for a, b in zip(engine.predict(PAIRS), tiny_engine.predict(PAIRS), strict=True):
            _close(a, b)
    finally:
        engine.close()
    assert sorted(p.name for p in hub.iterdir()) == before  # the snapshot is left untouched


@pytest.mark.runtime
def test_warmup_and_empty_batch(tiny_engine) -> None:
    assert tiny_engine.warmup(3) > 0
    assert tiny_engine.predict([]) == []


@pytest.mark.runtime
def test_bad_text_and_settings_are_refused(tiny_engine, tiny_model_dir: Path) -> None:
    from ofa_agent.engine import Engine

    img = _img((8, 8), (0, 0, 0))
    with pytest.raises(ValueError, match=r"^text: must be a non-empty string$"):
        tiny_engine.predict([Pair(img, "   ")])
    with pytest.raises(ValueError, match=r"^premise: must be a non-empty string when given$"):
        tiny_engine.predict([Pair(img, "a dog", premise="")])
    with pytest.raises(ValueError, match=r"^dtype: float16 needs CUDA \(autocast\); on CPU only "
                                         r"float32 is supported$"):
        Engine(tiny_model_dir, device="cpu", dtype="float16")
    with pytest.raises(ValueError, match=r"^dtype: must be one of float32, float16, bfloat16, "
                                         r"got 'int8'$"):
        Engine(tiny_model_dir, dtype="int8")
    with pytest.raises(ValueError, match=r"^device: must be one of auto, cpu, cuda, cuda:N, "
                                         r"got 'tpu'$"):
        Engine(tiny_model_dir, device="tpu")


def test_read_model_info_falls_back_to_configuration(tmp_path: Path) -> None:
    (tmp_path / "configuration.json").write_text(
        json.dumps({"model": {"type": "ofa"}, "ofactl": {"random_weights": True}}))
    assert read_model_info(tmp_path) == {
        "id": tmp_path.name, "revision": "unknown", "digest": None, "random_weights": True}


# -- images ----------------------------------------------------------------------------------


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"])
def test_decode_supported_formats_to_rgb(fmt: str) -> None:
    img = images.decode_image(_encode(_gradient((20, 10)), fmt))
    assert img.mode == "RGB"
    assert img.size == (20, 10)


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "1", "CMYK"])
def test_decode_converts_modes(mode: str) -> None:
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    img = images.decode_image(_encode(_gradient((9, 9)).convert(mode), fmt))
    assert img.mode == "RGB"


def test_decode_rejects_each_bad_input_class() -> None:
    with pytest.raises(images.NotAnImageError, match=r"^image is empty \(0 bytes\)$"):
        images.decode_image(b"")
    with pytest.raises(images.NotAnImageError,
                       match=r"^not an image \(expected one of: BMP, GIF, JPEG, PNG, TIFF, "
                             r"WEBP\)$"):
        images.decode_image(b"hello, this is text")
    ppm = _encode(_gradient((4, 4)), "PPM")
    with pytest.raises(images.UnsupportedImageError,
                       match=r"^unsupported image format PPM \(expected one of: "):
        images.decode_image(ppm)
    png = _encode(_gradient((64, 64)), "PNG")
    with pytest.raises(images.TruncatedImageError, match=r"^PNG image is truncated or corrupt"):
        images.decode_image(png[: len(png) // 2])
    with pytest.raises(images.ImageTooLargeError,
                       match=r"^image is 64x64 = 4096 pixels, over the limit of 4000 pixels$"):
        images.decode_image(png, max_pixels=4000)


def test_decompression_bomb_is_refused_before_decoding() -> None:
    # 100000 x 100000 pixels announced by a few bytes: refused from the header alone.
    bomb = _png_header_only(100_000, 100_000)
    assert len(bomb) < 100
    with pytest.raises(images.ImageTooLargeError) as err:
        images.decode_image(bomb)
    assert isinstance(err.value, ValueError)
    assert err.value.kind == "image_too_large"
    # under Pillow's own bomb threshold but over ours
    with pytest.raises(images.ImageTooLargeError,
                       match=r"^image is 8000x8000 = 64000000 pixels, over the limit of "
                             r"40000000 pixels$"):
        images.decode_image(_png_header_only(8000, 8000))
