"""The OCR port: an image file in, text lines with scores and boxes out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class OcrLine:
    text: str
    score: float  # 0..1, the recogniser's own confidence
    box: tuple[tuple[float, float], ...]  # polygon corners in image pixels

    @property
    def height(self) -> float:
        ys = [p[1] for p in self.box]
        return max(ys) - min(ys) if ys else 0.0

    @property
    def top(self) -> float:
        return min((p[1] for p in self.box), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "score": round(self.score, 4),
                "box": [[round(x, 1), round(y, 1)] for x, y in self.box]}


@dataclass(frozen=True)
class OcrResult:
    lines: list[OcrLine]
    model: str
    duration_ms: int
    image_width: int
    image_height: int

    @property
    def text(self) -> str:
        return "\n".join(line.text for line in self.lines)


class OcrEngine(Protocol):
    name: str

    def read(self, path: Path) -> OcrResult: ...
