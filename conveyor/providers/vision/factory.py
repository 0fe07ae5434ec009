"""Seed 002's provider factory: ``CONVEYOR_AI_PROVIDER`` picks the photo analyser.

- ``local`` (default): dimensions, EXIF, colours, hashes, quality, OCR; offline; needs
  nothing; no network, so no CallGuard key.
- ``openai``: caption, tags, objects, text from a vision LLM; needs ``llm_base_url``;
  CallGuard key ``llm`` (shared with the records pipeline: one server, one quota).
- ``aws_rekognition``: labels and text lines; needs boto3 and AWS credentials; CallGuard key
  ``vision_aws_rekognition``.
- ``google_vision``: labels, text, colours, SafeSearch; needs ``google_vision_api_key``;
  CallGuard key ``vision_google_vision``.

A provider that lacks its configuration raises :class:`~conveyor.errors.NotConfigured`
when it is built (at worker start), not on the first photo.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor.providers.base import CallGuard
from conveyor.providers.vision.base import AIProviderBase

if TYPE_CHECKING:
    from conveyor.config import Settings

PROVIDERS: tuple[str, ...] = ("local", "openai", "aws_rekognition", "google_vision")

#: CallGuard keys of the providers that call a network service (for the rate table).
GUARD_KEYS: dict[str, str] = {
    "openai": "llm",
    "aws_rekognition": "vision_aws_rekognition",
    "google_vision": "vision_google_vision",
}


def build_ai_provider(settings: Settings, guard: CallGuard) -> AIProviderBase:
    """The photo provider named by ``settings.ai_provider`` (case and ``-``/``_`` ignored).

    Raises ``ValueError`` for an unknown name and ``NotConfigured`` for a known provider
    whose settings (URL, key, boto3) are missing.
    """
    name = (settings.ai_provider or "local").strip().lower().replace("-", "_")
    if name == "local":
        from conveyor.providers.vision.local import LocalProvider

        return LocalProvider(ocr_provider=settings.ocr_provider)
    if name == "openai":
        from conveyor.providers.vision.openai import OpenAIVisionProvider

        return OpenAIVisionProvider.from_settings(settings, guard)
    if name == "aws_rekognition":
        from conveyor.providers.vision.aws_rekognition import RekognitionProvider

        return RekognitionProvider.from_settings(settings, guard)
    if name == "google_vision":
        from conveyor.providers.vision.google_vision import GoogleVisionProvider

        return GoogleVisionProvider.from_settings(settings, guard)
    raise ValueError(
        f"unknown CONVEYOR_AI_PROVIDER {settings.ai_provider!r}; "
        f"valid names: {', '.join(PROVIDERS)}"
    )
