"""Small image helpers shared by the photo providers (the input is already a safe JPEG)."""

from __future__ import annotations

import io

from PIL import Image

from conveyor.errors import MediaError

#: Canonical JPEGs are at most 4096x4096 (``conveyor.media.image.MAX_SIDE``); anything
#: claiming more is not one of ours.
_MAX_PIXELS = 4096 * 4096 + 1


def open_jpeg(jpeg: bytes, *, max_side: int | None = None) -> Image.Image:
    """Decode a canonical JPEG to RGB, at most ``max_side`` px on its longest side.

    With ``max_side``, libjpeg decodes at 1/2, 1/4 or 1/8 scale first (``draft``), so a
    4096 px photo costs a fraction of a full decode. Raises ``MediaError`` if the bytes are
    not a JPEG this module will decode.
    """
    try:
        im = Image.open(io.BytesIO(jpeg), formats=("JPEG",))
        width, height = im.size
        if width * height > _MAX_PIXELS:
            raise MediaError(
                f"the photo is {width}x{height}; a canonical JPEG is at most 4096 px a side",
                code="image_too_large",
            )
        if max_side is not None and max(im.size) > max_side:
            im.draft("RGB", (max_side, max_side))
        im.load()
        rgb = im.convert("RGB") if im.mode != "RGB" else im
        if max_side is not None and max(rgb.size) > max_side:
            rgb = rgb.copy()
            rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        return rgb
    except MediaError:
        raise
    except Exception as exc:
        raise MediaError(
            f"the photo could not be decoded as a JPEG ({type(exc).__name__})",
            code="image_corrupt",
        ) from None


def fit_jpeg(jpeg: bytes, *, max_side: int, max_bytes: int) -> bytes:
    """``jpeg`` itself when it is within ``max_side`` and ``max_bytes``, else a smaller
    re-encode (quality 85, then lower, then smaller) that is."""
    try:
        with Image.open(io.BytesIO(jpeg), formats=("JPEG",)) as probe:
            size = probe.size
    except Exception as exc:
        raise MediaError(
            f"the photo could not be decoded as a JPEG ({type(exc).__name__})",
            code="image_corrupt",
        ) from None
    if max(size) <= max_side and len(jpeg) <= max_bytes:
        return jpeg
    im = open_jpeg(jpeg, max_side=max_side)
    side = max_side
    for _ in range(8):
        for quality in (85, 75, 60):
            out = io.BytesIO()
            im.save(out, "JPEG", quality=quality)
            if out.tell() <= max_bytes:
                return out.getvalue()
        side = int(side * 0.75)
        im = im.copy()
        im.thumbnail((side, side), Image.Resampling.LANCZOS)
    raise MediaError("the photo cannot be made small enough for the provider",
                     code="image_too_large")
