"""Decode and validate untrusted image bytes with Pillow.

Every failure is an `ImageError` (a ValueError) whose subclass names the class of bad input, so
the HTTP layer can map each to its 4xx and a message that says what was wrong.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageFile, UnidentifiedImageError

# Formats the agent accepts; anything else Pillow can identify is "unsupported".
SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"})
DEFAULT_MAX_PIXELS = 40_000_000


class ImageError(ValueError):
    """The bytes are not a usable image; `kind` is a short machine-readable reason."""

    kind = "bad_image"


class NotAnImageError(ImageError):
    """Pillow cannot identify the bytes as any image format."""

    kind = "not_an_image"


class UnsupportedImageError(ImageError):
    """An image, but in a format or mode the agent does not accept."""

    kind = "unsupported_image"


class TruncatedImageError(ImageError):
    """The header is fine but the pixel data is cut short or corrupt."""

    kind = "truncated_image"


class ImageTooLargeError(ImageError):
    """More pixels than the limit (decompression bombs land here before any pixel is decoded)."""

    kind = "image_too_large"


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    """Raise ImageTooLargeError when width x height exceeds max_pixels (or is empty)."""
    if width <= 0 or height <= 0:
        raise UnsupportedImageError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height} pixels, over the limit of "
            f"{max_pixels} pixels"
        )


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode image bytes into a loaded RGB PIL image, or raise an ImageError subclass."""
    if not data:
        raise NotAnImageError("image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Our own pixel limit is checked below, before decoding; Pillow's warning is noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"image is a decompression bomb ({e})") from None
    except UnidentifiedImageError:
        raise NotAnImageError(
            "not an image (expected one of: " + ", ".join(sorted(SUPPORTED_FORMATS)) + ")"
        ) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise NotAnImageError(f"not a readable image ({e})") from None
    fmt = img.format or "unknown"
    if fmt not in SUPPORTED_FORMATS:
        raise UnsupportedImageError(
            f"unsupported image format {fmt} (expected one of: "
            + ", ".join(sorted(SUPPORTED_FORMATS)) + ")"
        )
    check_pixels(img.width, img.height, max_pixels)
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # someone flipped Pillow's global; we never accept them
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"image is a decompression bomb ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        msg = str(e) or type(e).__name__
        raise TruncatedImageError(f"{fmt} image is truncated or corrupt ({msg})") from None
    try:
        return img if img.mode == "RGB" else img.convert("RGB")
    except (OSError, ValueError) as e:
        raise UnsupportedImageError(f"{fmt} image in mode {img.mode} cannot be converted to "
                                    f"RGB ({e})") from None


def load_image_file(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read and decode an image file (OSError when it cannot be read, ImageError when bad)."""
    with open(path, "rb") as f:
        data = f.read()
    return decode_image(data, max_pixels=max_pixels)
