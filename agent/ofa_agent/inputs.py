"""Request parsing and validation: every bad input becomes an ApiError with a 4xx and a sentence.

Body size is enforced while reading (a lying or missing Content-Length does not help), images
are checked for their pixel count from the header before any pixel is decoded (decompression
bombs), and nothing here lets an exception escape as a 500.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from PIL import Image
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from . import images
from .errors import ApiError


@dataclass(frozen=True)
class RawItem:
    """One pair as received: undecoded image bytes and validated texts."""

    image: bytes
    text: str
    premise: str | None = None


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int
    max_image_pixels: int
    max_text_chars: int
    max_items: int


def too_large(limit: int) -> ApiError:
    return ApiError(
        413, "body_too_large", f"the request body is larger than the limit of {limit} bytes"
    )


async def read_body(
    chunks: AsyncIterator[bytes], content_length: str | None, limit: int
) -> bytes:
    """Read the body, refusing (413) as soon as it passes `limit` bytes."""
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise ApiError(
                400, "bad_request", f"Content-Length is not a number: {content_length!r}"
            ) from None
        if declared > limit:
            raise too_large(limit)
    buf = bytearray()
    async for chunk in chunks:
        buf += chunk
        if len(buf) > limit:
            raise too_large(limit)
    return bytes(buf)


# --- texts --------------------------------------------------------------------------------
def check_text(value: Any, field: str, max_chars: int, *, required: bool) -> str | None:
    """Validate a text field: a non-empty string of at most max_chars characters."""
    if value is None:
        if required:
            raise ApiError(422, "missing_field", f"field {field!r} is required")
        return None
    if not isinstance(value, str):
        raise ApiError(
            422, "invalid_field", f"field {field!r} must be a string, got {type(value).__name__}"
        )
    text = value.strip()
    if not text:
        if not required:
            return None
        raise ApiError(422, "empty_text", f"field {field!r} is empty")
    if len(text) > max_chars:
        raise ApiError(
            422, "text_too_long",
            f"field {field!r} has {len(text)} characters; the limit is {max_chars}",
        )
    return text


# --- JSON ---------------------------------------------------------------------------------
def _json_body(body: bytes) -> Any:
    if not body:
        raise ApiError(400, "invalid_json", "the request body is empty; expected a JSON object")
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_json", "the request body is not UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise ApiError(
            400, "invalid_json", f"malformed JSON at line {exc.lineno} column {exc.colno}: "
            f"{exc.msg}"
        ) from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "the JSON body is nested too deeply") from None


def _b64(value: Any, field: str) -> bytes:
    if not isinstance(value, str):
        if value is None:
            raise ApiError(422, "missing_field", f"field {field!r} is required")
        raise ApiError(
            422, "invalid_field",
            f"field {field!r} must be a base64 string, got {type(value).__name__}",
        )
    data = value.strip()
    if data.startswith("data:") and "," in data:  # a data: URL
        data = data.split(",", 1)[1]
    data = "".join(data.split())
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(
            400, "invalid_base64", f"field {field!r} is not valid base64"
        ) from None
    if not raw:
        raise ApiError(422, "empty_image", f"field {field!r} is empty")
    return raw


def _item_from_obj(obj: Any, where: str, limits: Limits) -> RawItem:
    if not isinstance(obj, dict):
        raise ApiError(
            422, "invalid_field", f"{where} must be a JSON object, got {type(obj).__name__}"
        )
    unknown = sorted(set(obj) - {"image", "text", "premise"})
    if unknown:
        raise ApiError(
            422, "invalid_field",
            f"{where} has unknown field(s) {', '.join(map(repr, unknown))}; "
            "expected image, text, premise",
        )
    pre = f"{where}." if where != "body" else ""
    text = check_text(obj.get("text"), pre + "text", limits.max_text_chars, required=True)
    premise = check_text(obj.get("premise"), pre + "premise", limits.max_text_chars,
                         required=False)
    image = _b64(obj.get("image"), pre + "image")
    assert text is not None
    return RawItem(image, text, premise)


# --- multipart ----------------------------------------------------------------------------
def _multipart_fields(body: bytes, content_type: str) -> dict[str, tuple[bytes, bool]]:
    """name -> (data, is_file) for each part; repeated names are refused."""
    _ctype, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "invalid_multipart", "multipart Content-Type without a boundary")
    parts: dict[str, tuple[bytes, bool]] = {}
    state: dict[str, Any] = {"headers": {}, "field": b"", "value": b"", "data": [], "end": False}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def on_part_begin() -> None:
        state["headers"], state["data"] = {}, []

    def on_part_data(data: bytes, start: int, end: int) -> None:
        state["data"].append(data[start:end])

    def on_part_end() -> None:
        disposition = state["headers"].get(b"content-disposition")
        if disposition is None:
            raise ApiError(400, "invalid_multipart", "a multipart part has no Content-Disposition")
        _d, opts = parse_options_header(disposition)
        name = opts.get(b"name")
        if not name:
            raise ApiError(400, "invalid_multipart", "a multipart part has no name")
        key = name.decode("utf-8", "replace")
        if key in parts:
            raise ApiError(422, "invalid_field", f"field {key!r} is given more than once")
        parts[key] = (b"".join(state["data"]), b"filename" in opts)

    def on_end() -> None:
        state["end"] = True

    parser = MultipartParser(
        boundary,
        callbacks={  # type: ignore[arg-type]
            "on_header_field": on_header_field, "on_header_value": on_header_value,
            "on_header_end": on_header_end, "on_part_begin": on_part_begin,
            "on_part_data": on_part_data, "on_part_end": on_part_end, "on_end": on_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise ApiError(400, "invalid_multipart", f"malformed multipart body: {exc}") from None
    if not state["end"]:
        raise ApiError(
            400, "invalid_multipart",
            "malformed multipart body: it ends before the closing boundary",
        )
    return parts


def _form_text(parts: dict[str, tuple[bytes, bool]], name: str) -> str | None:
    if name not in parts:
        return None
    try:
        return parts[name][0].decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(422, "invalid_field", f"field {name!r} is not UTF-8 text") from None


def _item_from_form(body: bytes, content_type: str, limits: Limits) -> RawItem:
    parts = _multipart_fields(body, content_type)
    unknown = sorted(set(parts) - {"image", "text", "premise"})
    if unknown:
        raise ApiError(
            422, "invalid_field",
            f"unknown form field(s) {', '.join(map(repr, unknown))}; expected image, text, "
            "premise",
        )
    if "image" not in parts:
        raise ApiError(422, "missing_field", "field 'image' is required (a file part)")
    image, is_file = parts["image"]
    if not is_file:
        raise ApiError(
            422, "invalid_field", "field 'image' must be a file part (with a filename)"
        )
    if not image:
        raise ApiError(422, "empty_image", "field 'image' is empty")
    text = check_text(_form_text(parts, "text"), "text", limits.max_text_chars, required=True)
    premise = check_text(_form_text(parts, "premise"), "premise", limits.max_text_chars,
                         required=False)
    assert text is not None
    return RawItem(image, text, premise)


# --- entry points -------------------------------------------------------------------------
def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def parse_single(body: bytes, content_type: str | None, limits: Limits) -> RawItem:
    """POST /v1/predict: multipart (image, text, premise) or JSON with a base64 image."""
    media = _media_type(content_type)
    if media == "multipart/form-data":
        assert content_type is not None
        return _item_from_form(body, content_type, limits)
    if media == "application/json" or media.endswith("+json"):
        return _item_from_obj(_json_body(body), "body", limits)
    raise ApiError(
        415, "unsupported_media_type",
        f"Content-Type {media or '(none)'!r} is not accepted; use multipart/form-data or "
        "application/json",
    )


def parse_batch(body: bytes, content_type: str | None, limits: Limits) -> list[RawItem]:
    """POST /v1/predict/batch: JSON {"items": [{image, text, premise}, ...]}."""
    media = _media_type(content_type)
    if media != "application/json" and not media.endswith("+json"):
        raise ApiError(
            415, "unsupported_media_type",
            f"Content-Type {media or '(none)'!r} is not accepted; use application/json",
        )
    obj = _json_body(body)
    if not isinstance(obj, dict) or "items" not in obj:
        raise ApiError(422, "missing_field", "the body must be a JSON object with an 'items' list")
    items = obj["items"]
    if not isinstance(items, list):
        raise ApiError(
            422, "invalid_field", f"field 'items' must be a list, got {type(items).__name__}"
        )
    if not items:
        raise ApiError(422, "empty_batch", "field 'items' is empty")
    if len(items) > limits.max_items:
        raise ApiError(
            413, "too_many_items",
            f"{len(items)} items in one request; the limit is {limits.max_items}",
        )
    return [_item_from_obj(it, f"items[{i}]", limits) for i, it in enumerate(items)]


# --- images -------------------------------------------------------------------------------
def decode_image(data: bytes, max_pixels: int, where: str = "image") -> Image.Image:
    """Decode image bytes to RGB (ofa_agent.images), mapping each bad-image class to a 422."""
    try:
        return images.decode_image(data, max_pixels=max_pixels)
    except images.ImageError as exc:
        raise ApiError(422, exc.kind, f"{where}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any other decoder failure is still the client's bytes
        raise ApiError(422, "bad_image", f"{where}: cannot decode the image ({exc})") from None
