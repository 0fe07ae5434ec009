"""Caption and tags from any OpenAI-compatible vision model (OpenAI, vLLM, Ollama, …).

The call goes through the project's one OpenAI-compatible client
(:func:`conveyor.providers.llm.openai_compat.build_llm`): same settings (``llm_base_url``,
``llm_api_key``, ``llm_model``, ``llm_timeout_s``, ``llm_prices``), same structured output
(``response_format: json_schema``, strict), same in-call retries and the same
:class:`~conveyor.providers.base.CallGuard` key, ``"llm"``: the records and photos
pipelines share one rate limit and one circuit breaker for the one model server.

The photo is sent inline as a JPEG data URL at most 2048 px on its longest side (vision
models downscale to about that anyway), or, with ``llm_image_mode = "signed_url"`` and a
``PhotoInput.url``, by its signed URL.

``results``::

    {
      "caption": str,                       # one sentence
      "tags": [str],                        # lower-case, unique, at most 25
      "objects": [{"name": str, "confidence": float}],   # 0..1; may be empty
      "text": str,                          # legible text in the photo; "" when none
    }

``ProviderResult.model`` is the model that answered, ``cost_usd`` comes from the client's
price table (0.0 for a model without a price), ``confidence`` is the model's own 0..1
estimate.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from conveyor.errors import NotConfigured, TransientError
from conveyor.providers.base import CallGuard
from conveyor.providers.llm.base import ImageInput, VisionLLM
from conveyor.providers.llm.openai_compat import build_llm
from conveyor.providers.vision.base import AIProviderBase, PhotoInput, ProviderResult
from conveyor.providers.vision.imaging import fit_jpeg

if TYPE_CHECKING:
    from conveyor.config import Settings

MAX_SIDE = 2048
MAX_BYTES = 8 * 1024 * 1024
MAX_TAGS = 25
MAX_OBJECTS = 25

SYSTEM = (
    "You describe photos for a personal photo library. Answer only with JSON matching the "
    "schema. Be factual: describe what is visible, do not guess names of people."
)
PROMPT = (
    "Describe this photo. caption: one plain sentence. tags: up to 15 short lower-case "
    "keywords (subjects, scene, setting, activity, style). objects: the distinct things "
    "you can see, each with your confidence from 0 to 1 (empty list if none stand out). "
    "text: any legible text in the photo, exactly as written (empty string if none). "
    "confidence: how sure you are of the caption, from 0 to 1."
)
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "caption": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "objects": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "confidence": {"type": "number"}},
                "required": ["name", "confidence"],
                "additionalProperties": False,
            },
        },
        "text": {"type": "string"},
        "confidence": {"type": "number"},
    },
    "required": ["caption", "tags", "objects", "text", "confidence"],
    "additionalProperties": False,
}


def _unit(value: Any) -> float | None:
    """A 0..1 float from a number (percentages 1..100 are scaled), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    if not math.isfinite(number) or number < 0:
        return None
    if number > 1.0:
        number = number / 100.0 if number <= 100.0 else 1.0
    return round(number, 4)


def parse_answer(data: dict[str, Any]) -> tuple[dict[str, Any], float | None]:
    """The model's JSON as ``(results, confidence)``; tolerant of small deviations, but
    an answer without a caption is ``TransientError(code="llm_bad_output")``."""
    caption = data.get("caption")
    if not isinstance(caption, str) or not caption.strip():
        raise TransientError("openai vision: the model's answer had no caption",
                             code="llm_bad_output")
    tags: list[str] = []
    raw_tags = data.get("tags")
    for tag in raw_tags if isinstance(raw_tags, list) else []:
        if isinstance(tag, str):
            clean = " ".join(tag.lower().split()).strip(" #.,;")
            if clean and clean not in tags:
                tags.append(clean[:60])
    objects: list[dict[str, Any]] = []
    raw_objects = data.get("objects")
    for obj in raw_objects if isinstance(raw_objects, list) else []:
        if isinstance(obj, dict) and isinstance(obj.get("name"), str) and obj["name"].strip():
            objects.append({"name": obj["name"].strip()[:80],
                            "confidence": _unit(obj.get("confidence"))})
        elif isinstance(obj, str) and obj.strip():
            objects.append({"name": obj.strip()[:80], "confidence": None})
    text = data.get("text")
    results = {
        "caption": " ".join(caption.split()),
        "tags": tags[:MAX_TAGS],
        "objects": objects[:MAX_OBJECTS],
        "text": text.strip() if isinstance(text, str) else "",
    }
    return results, _unit(data.get("confidence"))


class OpenAIVisionProvider(AIProviderBase):
    """Caption, tags, objects and text from a vision LLM behind the OpenAI-compatible API."""

    name = "openai"
    version = "1"

    def __init__(self, llm: VisionLLM, *, image_mode: str = "data_url") -> None:
        self.llm = llm
        self.image_mode = image_mode

    @classmethod
    def from_settings(cls, settings: Settings, guard: CallGuard) -> OpenAIVisionProvider:
        llm = build_llm(settings, guard)
        if llm is None:
            raise NotConfigured(
                "the openai photo provider needs CONVEYOR_LLM_BASE_URL (any OpenAI-compatible "
                "server, e.g. https://api.openai.com/v1) and usually CONVEYOR_LLM_API_KEY",
                code="not_configured",
            )
        return cls(llm, image_mode=settings.llm_image_mode)

    def __repr__(self) -> str:
        return f"OpenAIVisionProvider(model={self.llm.model!r})"

    def _image(self, image: PhotoInput) -> ImageInput:
        if self.image_mode == "signed_url" and image.url:
            return ImageInput.from_url(image.url)
        return ImageInput.from_bytes(fit_jpeg(image.jpeg, max_side=MAX_SIDE, max_bytes=MAX_BYTES))

    def process_image(self, image: PhotoInput) -> ProviderResult:
        response = self.llm.complete_json(
            system=SYSTEM,
            prompt=PROMPT,
            schema=SCHEMA,
            schema_name="photo_description",
            image=self._image(image),
        )
        results, confidence = parse_answer(response.data)
        return ProviderResult(
            results=results,
            model=response.model,
            cost_usd=response.cost_usd,
            confidence=confidence,
        )

    def close(self) -> None:
        close = getattr(self.llm, "close", None)
        if callable(close):
            close()
