"""RapidOCR (PP-OCR models shipped inside the wheel) on onnxruntime: runs offline."""

from __future__ import annotations

import logging
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image

from conveyor.errors import PermanentError
from conveyor.providers.ocr.base import OcrLine, OcrResult


class RapidOcrEngine:
    name = "rapidocr"

    def __init__(self, threads: int = 1) -> None:
        from rapidocr import RapidOCR  # heavy import: only in processes that run OCR

        logging.getLogger("RapidOCR").setLevel(logging.WARNING)
        params: dict[str, Any] = {
            "Global.log_level": "warning",
            "EngineConfig.onnxruntime.intra_op_num_threads": threads,
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
        }
        try:
            self._engine = RapidOCR(params=params)
        except Exception:  # older/newer releases name the settings differently
            self._engine = RapidOCR()
        self.model = f"rapidocr-{_version()}"

    def read(self, path: Path) -> OcrResult:
        started = time.perf_counter()
        with Image.open(path) as im:
            width, height = im.size
        try:
            out = self._engine(str(path))
        except Exception as exc:
            raise PermanentError(f"OCR could not read the image: {exc}", code="ocr_failed") from exc
        lines: list[OcrLine] = []
        txts = getattr(out, "txts", None) or ()
        scores = getattr(out, "scores", None) or ()
        boxes = getattr(out, "boxes", None)
        for i, text in enumerate(txts):
            box: tuple[tuple[float, float], ...] = ()
            if boxes is not None and i < len(boxes):
                box = tuple((float(p[0]), float(p[1])) for p in boxes[i])
            lines.append(OcrLine(text=str(text).strip(), score=float(scores[i]), box=box))
        return OcrResult(
            lines=[ln for ln in lines if ln.text],
            model=self.model,
            duration_ms=int((time.perf_counter() - started) * 1000),
            image_width=width,
            image_height=height,
        )


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("rapidocr")
    except Exception:
        return "unknown"


def build_ocr(name: str, threads: int = 1) -> RapidOcrEngine:
    """The OCR engine of this process: one per (name, threads), shared by every step that
    reads text (records covers, the local photo analyser), so the model loads once."""
    return _shared_ocr(name, int(threads))


@lru_cache(maxsize=4)
def _shared_ocr(name: str, threads: int) -> RapidOcrEngine:
    if name == "rapidocr":
        return RapidOcrEngine(threads=threads)
    raise ValueError(f"unknown CONVEYOR_OCR_PROVIDER {name!r} (available: rapidocr)")
