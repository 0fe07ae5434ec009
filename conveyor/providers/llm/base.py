"""The vision-LLM port: one call that returns JSON matching a schema, with its cost."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class ImageInput:
    """An image for the model: either the bytes (sent inline as a data URL) or a URL the
    model server can fetch itself (e.g. a signed storage URL)."""

    data: bytes | None = None
    mime: str = "image/jpeg"
    url: str | None = None

    def __post_init__(self) -> None:
        if (self.data is None) == (self.url is None):
            raise ValueError("ImageInput needs exactly one of data= or url=")

    @classmethod
    def from_bytes(cls, data: bytes, mime: str = "image/jpeg") -> ImageInput:
        return cls(data=data, mime=mime)

    @classmethod
    def from_url(cls, url: str) -> ImageInput:
        return cls(url=url)

    def as_url(self) -> str:
        """The ``image_url.url`` value: the given URL or ``data:<mime>;base64,...``."""
        if self.url is not None:
            return self.url
        assert self.data is not None
        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode('ascii')}"

    def __repr__(self) -> str:  # never dump megabytes of image into a log line
        if self.url is not None:
            return f"ImageInput(url={self.url[:60]!r})"
        return f"ImageInput(data=<{len(self.data or b'')} bytes>, mime={self.mime!r})"


@dataclass
class LLMResponse:
    """The parsed JSON answer and what it cost.

    ``cost_known`` is False when the model has no entry in the price table (a local model,
    a new model): ``cost_usd`` is then 0.0 and must not be read as "free".
    """

    data: dict[str, Any]
    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    duration_ms: int
    cost_known: bool = True
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


class VisionLLM(Protocol):
    name: str
    model: str

    def complete_json(
        self,
        *,
        system: str,
        prompt: str,
        schema: dict[str, Any],
        schema_name: str,
        image: ImageInput | None = None,
    ) -> LLMResponse:
        """Ask for JSON matching ``schema``; raise ``TransientError`` (incl. code
        ``llm_bad_output`` for unparsable output) or ``PermanentError``."""
        ...
