"""Every class of bad input gets its 4xx and a JSON message saying what was wrong; never a 500."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest
from agent_fakes import FakeEngine
from agent_helpers import b64, png_bytes, running, settings_for
from ofa_agent.errors import ApiError
from ofa_agent.inputs import read_body
from PIL import Image

pytestmark = pytest.mark.anyio


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height with almost no data: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def ppm_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PPM")
    return buf.getvalue()


def noisy_png() -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((32, 32), 60).convert("RGB").save(buf, "PNG")
    return buf.getvalue()


PNG = png_bytes((16, 16))
NOISY = noisy_png()
CASES = [
    # (id, how to send, status, code, message)
    ("not-an-image", {"json": {"image": b64(b"hello, not an image"), "text": "t"}}, 422,
     "not_an_image", "image: not an image (expected one of: BMP, GIF, JPEG, PNG, TIFF, WEBP)"),
    ("unsupported-format", {"json": {"image": b64(ppm_bytes()), "text": "t"}}, 422,
     "unsupported_image",
     "image: unsupported image format PPM (expected one of: BMP, GIF, JPEG, PNG, TIFF, WEBP)"),
    ("truncated", {"json": {"image": b64(NOISY[: len(NOISY) // 2]), "text": "t"}}, 422,
     "truncated_image", "image: PNG image is truncated or corrupt (image file is truncated)"),
    ("pixel-bomb", {"json": {"image": b64(png_header_only(30000, 30000)), "text": "t"}}, 422,
     "image_too_large", None),
    ("over-pixel-limit", {"json": {"image": b64(png_bytes((200, 100))), "text": "t"}}, 422,
     "image_too_large",
     "image: image is 200x100 = 20000 pixels, over the limit of 10000 pixels"),
    ("empty-text", {"json": {"image": b64(PNG), "text": "   "}}, 422, "empty_text",
     "field 'text' is empty"),
    ("long-text", {"json": {"image": b64(PNG), "text": "x" * 65}}, 422, "text_too_long",
     "field 'text' has 65 characters; the limit is 64"),
    ("long-premise", {"json": {"image": b64(PNG), "text": "t", "premise": "p" * 70}}, 422,
     "text_too_long", "field 'premise' has 70 characters; the limit is 64"),
    ("missing-text", {"json": {"image": b64(PNG)}}, 422, "missing_field",
     "field 'text' is required"),
    ("missing-image", {"json": {"text": "t"}}, 422, "missing_field",
     "field 'image' is required"),
    ("text-wrong-type", {"json": {"image": b64(PNG), "text": 42}}, 422, "invalid_field",
     "field 'text' must be a string, got int"),
    ("image-wrong-type", {"json": {"image": [1, 2], "text": "t"}}, 422, "invalid_field",
     "field 'image' must be a base64 string, got list"),
    ("body-not-object", {"json": ["image", "text"]}, 422, "invalid_field",
     "body must be a JSON object, got list"),
    ("unknown-field", {"json": {"image": b64(PNG), "text": "t", "hypothesis": "h"}}, 422,
     "invalid_field", "body has unknown field(s) 'hypothesis'; expected image, text, premise"),
    ("bad-base64", {"json": {"image": "not*base64!", "text": "t"}}, 400, "invalid_base64",
     "field 'image' is not valid base64"),
    ("malformed-json", {"content": b'{"image": "abc", "text": ', "headers":
                        {"content-type": "application/json"}}, 400, "invalid_json",
     "malformed JSON at line 1 column 26: Expecting value"),
    ("empty-json", {"content": b"", "headers": {"content-type": "application/json"}}, 400,
     "invalid_json", "the request body is empty; expected a JSON object"),
    ("non-utf8-json", {"content": b'{"text": "\xff"}', "headers":
                       {"content-type": "application/json"}}, 400, "invalid_json",
     "the request body is not UTF-8 JSON"),
    ("unsupported-media-type", {"content": b"image=...", "headers":
                                {"content-type": "text/plain"}}, 415, "unsupported_media_type",
     "Content-Type 'text/plain' is not accepted; use multipart/form-data or application/json"),
    ("multipart-no-boundary", {"content": b"--x\r\n", "headers":
                               {"content-type": "multipart/form-data"}}, 400,
     "invalid_multipart", "multipart Content-Type without a boundary"),
    ("multipart-truncated", {"content": b'--xyz\r\nContent-Disposition: form-data; name="text"'
                             b"\r\n\r\nhello", "headers":
                             {"content-type": "multipart/form-data; boundary=xyz"}}, 400,
     "invalid_multipart", "malformed multipart body: it ends before the closing boundary"),
    ("multipart-garbage", {"content": b"this is not multipart at all", "headers":
                           {"content-type": "multipart/form-data; boundary=xyz"}}, 400,
     "invalid_multipart", None),
    ("multipart-image-not-a-file", {"data": {"image": "abc", "text": "t"},
                                    "files": {"dummy": ("d", b"", "text/plain")}}, 422,
     "invalid_field", "unknown form field(s) 'dummy'; expected image, text, premise"),
    ("multipart-image-as-field", {"data": {"image": "abc", "text": "t"},
                                  "files": {"premise": (None, b"p")}}, 422,
     "invalid_field", "field 'image' must be a file part (with a filename)"),
    ("multipart-missing-image", {"data": {"text": "t"}, "files": {"premise": (None, b"p")}},
     422, "missing_field", "field 'image' is required (a file part)"),
    ("multipart-empty-image", {"data": {"text": "t"}, "files": {"image": ("x.png", b"")}},
     422, "empty_image", "field 'image' is empty"),
    ("multipart-empty-text", {"data": {"text": ""}, "files": {"image": ("x.png", PNG)}},
     422, "empty_text", "field 'text' is empty"),
    ("multipart-not-an-image", {"data": {"text": "t"},
                                "files": {"image": ("x.png", b"GIF89a-not-really")}},
     422, "not_an_image", None),
    ("body-too-large", {"json": {"image": b64(b"x" * 5000), "text": "t"}}, 413,
     "body_too_large", "the request body is larger than the limit of 4096 bytes"),
]


@pytest.mark.parametrize(
    ("how", "status", "code", "message"),
    [c[1:] for c in CASES], ids=[c[0] for c in CASES],
)
async def test_bad_input(model_dir: Path, how: dict, status: int, code: str,
                         message: str | None) -> None:
    s = settings_for(model_dir, max_text_chars=64, max_image_pixels=10_000,
                     max_body_bytes=4096)
    async with running(s, FakeEngine()) as (_agent, c):
        r = await c.post("/v1/predict", **how)
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert err["code"] == code
        if message is not None:
            assert err["message"] == message
        else:
            assert err["message"]
        # the agent keeps serving
        ok = await c.post("/v1/predict", json={"image": b64(PNG), "text": "fine"})
        assert ok.status_code == 200


BATCH_CASES = [
    ("not-a-list", {"items": {"image": "x"}}, 422, "field 'items' must be a list, got dict"),
    ("no-items", {"things": []}, 422, "the body must be a JSON object with an 'items' list"),
    ("empty", {"items": []}, 422, "field 'items' is empty"),
    ("too-many", {"items": [{"image": b64(PNG), "text": "t"}] * 4}, 413,
     "4 items in one request; the limit is 3"),
    ("bad-item", {"items": [{"image": b64(PNG), "text": "t"}, "nope"]}, 422,
     "items[1] must be a JSON object, got str"),
    ("bad-item-text", {"items": [{"image": b64(PNG), "text": "t"}, {"image": b64(PNG)}]}, 422,
     "field 'items[1].text' is required"),
    ("bad-item-image", {"items": [{"image": b64(PNG), "text": "t"},
                                  {"image": b64(b"nope"), "text": "t"}]}, 422,
     "items[1].image: not an image (expected one of: BMP, GIF, JPEG, PNG, TIFF, WEBP)"),
]


@pytest.mark.parametrize(("body", "status", "message"), [c[1:] for c in BATCH_CASES],
                         ids=[c[0] for c in BATCH_CASES])
async def test_bad_batch(model_dir: Path, body: dict, status: int, message: str) -> None:
    engine = FakeEngine()
    async with running(settings_for(model_dir, max_items=3), engine) as (_a, c):
        r = await c.post("/v1/predict/batch", json=body)
        assert r.status_code == status, r.text
        assert r.json()["error"]["message"] == message
        assert engine.batches == []  # a bad item fails the whole request before any forward


async def test_unknown_route_and_method_are_json(model_dir: Path) -> None:
    async with running(settings_for(model_dir), FakeEngine()) as (_a, c):
        r = await c.get("/v1/nope")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        r = await c.get("/v1/predict")
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


async def _chunks(*parts: bytes):  # type: ignore[no-untyped-def]
    for p in parts:
        yield p


async def test_body_limit_is_enforced_while_reading_not_from_content_length() -> None:
    # A client that lies in Content-Length (or sends none, chunked) is cut off at the limit.
    for declared in ("10", None):
        with pytest.raises(ApiError) as err:
            await read_body(_chunks(b"a" * 60, b"b" * 60), declared, 100)
        assert err.value.status == 413
    assert await read_body(_chunks(b"a" * 50, b"b" * 50), None, 100) == b"a" * 50 + b"b" * 50
    with pytest.raises(ApiError) as err:  # a declared size over the limit: refused unread
        await read_body(_chunks(), "101", 100)
    assert err.value.status == 413
    with pytest.raises(ApiError) as err:
        await read_body(_chunks(), "ten", 100)
    assert err.value.message == "Content-Length is not a number: 'ten'"
