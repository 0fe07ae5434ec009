"""The photo-analysis port (seed 002's ``AIProviderBase``): one image in, one JSON dict out.

Every provider (local, openai, aws_rekognition, google_vision) implements
:class:`AIProviderBase`. The photos pipeline calls :meth:`AIProviderBase.process_image` from
a worker process, never from the upload request. Results are cached by
``(content sha256, name, version)``: bump ``version`` whenever a provider's output changes
so that "process missing" redoes the photos analysed by the older version.

Providers raise :class:`~conveyor.errors.TransientError` for anything worth retrying
(timeouts, 429, 5xx; with ``retry_after`` when the service says so) and
:class:`~conveyor.errors.PermanentError` for what will fail again (bad credentials, an image
the service refuses). They never put a secret in an error message.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PhotoInput:
    """One photo, already decoded safely (in the sandboxed decoder) by the pipeline."""

    jpeg: bytes  # canonical RGB JPEG: sRGB, EXIF orientation applied, longest side ≤ 4096
    width: int  # of the original image
    height: int
    source_format: str  # "JPEG", "PNG", "HEIF", ...
    exif: dict[str, Any] = field(default_factory=dict)  # see conveyor.media.exif
    filename: str = "photo.jpg"
    url: str | None = None  # a signed URL to the canonical JPEG, for providers that fetch

    def __repr__(self) -> str:  # never dump megabytes into a log line
        return (f"PhotoInput({self.filename!r}, {self.width}x{self.height}, "
                f"{len(self.jpeg)} bytes)")


@dataclass
class ProviderResult:
    """What a provider found, plus what the audit trail records about the call."""

    results: dict[str, Any]
    model: str | None = None  # the model or API that produced it
    cost_usd: float = 0.0
    confidence: float | None = None


class AIProviderBase(ABC):
    """The contract every photo-analysis provider implements."""

    name: str  # "local", "openai", "aws_rekognition", "google_vision"
    version: str  # part of the result cache key

    @abstractmethod
    def process_image(self, image: PhotoInput) -> ProviderResult:
        """Analyse one photo. Runs in a worker process; may take seconds."""

    def warm_up(self) -> None:  # noqa: B027  (optional hook: load models once per worker)
        """Load models or open connections before the first photo."""

    def close(self) -> None:  # noqa: B027  (optional hook)
        """Release clients and connections."""
