"""The offline photo analyser: everything measurable without a network or a big model.

``results`` (every key is always present)::

    {
      "dimensions": {"width": int, "height": int,          # PhotoInput.width/height
                     "megapixels": float,                    # 2 decimals
                     "orientation": "landscape" | "portrait" | "square"},  # square: within 2 %
      "format": str,                                         # source format: "JPEG", "HEIF"…
      "exif": {...},                                         # PhotoInput.exif as given
                                                             # (see conveyor.media.exif)
      "colors": [{"hex": "#rrggbb", "fraction": float}],     # ≤ 5, largest first
      "hashes": {"ahash": str, "dhash": str, "phash": str},  # 16 hex chars each
      "quality": {
        "sharpness": {"laplacian_var": float, "score": float},            # score 0..1
        "exposure": {"mean": float, "shadows_clipped": float,
                     "highlights_clipped": float, "score": float,
                     "label": "under" | "ok" | "over"},
      },
      "text": {"text": str,                                  # lines joined by "\\n"
               "lines": [{"text": str, "confidence": float,  # 0..1
                          "box": [[x, y], …]}],              # canonical-JPEG pixels
               "model": str},                                # e.g. "rapidocr-3.4.0"
    }

Hashes, colours and quality are computed on a copy at most 512 px on its longest side
(libjpeg decodes at reduced scale, so a 4096 px photo costs a few milliseconds); OCR reads
the canonical JPEG itself. Near-duplicates are found by the photos pipeline, which compares
``hashes.phash`` across an owner's photos with :func:`conveyor.media.hashes.hamming`.

The provider makes no network call and costs nothing; ``ProviderResult.confidence`` is
None (there is no single answer to be confident about).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from conveyor.media import hashes
from conveyor.providers.ocr.base import OcrEngine, OcrResult
from conveyor.providers.vision.base import AIProviderBase, PhotoInput, ProviderResult
from conveyor.providers.vision.imaging import open_jpeg

#: Longest side of the working copy used for hashes, colours and quality.
ANALYSIS_SIDE = 512


def orientation_of(width: int, height: int) -> str:
    if abs(width - height) <= 0.02 * max(width, height, 1):
        return "square"
    return "landscape" if width > height else "portrait"


class LocalProvider(AIProviderBase):
    """Dimensions, EXIF, colours, perceptual hashes, sharpness, exposure and OCR, offline."""

    name = "local"
    version = "1"

    def __init__(
        self, *, ocr: OcrEngine | None = None, ocr_provider: str = "rapidocr",
        ocr_threads: int = 1,
    ) -> None:
        self._ocr = ocr
        self._ocr_provider = ocr_provider
        self._ocr_threads = ocr_threads
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LocalProvider(ocr={self._ocr_provider!r})"

    def warm_up(self) -> None:
        """Load the OCR model (a few seconds) so the first photo does not pay for it."""
        self._engine()

    def _engine(self) -> OcrEngine:
        with self._lock:
            if self._ocr is None:
                from conveyor.providers.ocr.rapid import build_ocr  # loads onnxruntime

                self._ocr = build_ocr(self._ocr_provider, threads=self._ocr_threads)
            return self._ocr

    def process_image(self, image: PhotoInput) -> ProviderResult:
        small = open_jpeg(image.jpeg, max_side=ANALYSIS_SIDE)
        ocr = self._read_text(image.jpeg)
        width, height = int(image.width), int(image.height)
        results: dict[str, Any] = {
            "dimensions": {
                "width": width,
                "height": height,
                "megapixels": round(width * height / 1e6, 2),
                "orientation": orientation_of(width, height),
            },
            "format": image.source_format,
            "exif": dict(image.exif),
            "colors": hashes.dominant_colors(small),
            "hashes": {
                "ahash": hashes.ahash(small),
                "dhash": hashes.dhash(small),
                "phash": hashes.phash(small),
            },
            "quality": {
                "sharpness": hashes.sharpness(small),
                "exposure": hashes.exposure(small),
            },
            "text": {
                "text": ocr.text,
                "lines": [
                    {
                        "text": line.text,
                        "confidence": round(line.score, 4),
                        "box": [[round(x, 1), round(y, 1)] for x, y in line.box],
                    }
                    for line in ocr.lines
                ],
                "model": ocr.model,
            },
        }
        return ProviderResult(results=results, model=f"local-{self.version}+{ocr.model}")

    def _read_text(self, jpeg: bytes) -> OcrResult:
        engine = self._engine()
        fd, name = tempfile.mkstemp(prefix="conveyor-photo-", suffix=".jpg")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(jpeg)
            return engine.read(Path(name))
        finally:
            with contextlib.suppress(OSError):
                os.unlink(name)

    def close(self) -> None:
        self._ocr = None
