"""Labels, text, dominant colours and SafeSearch from Google Cloud Vision's REST API.

One ``POST {google_vision_base_url}/v1/images:annotate`` per photo with the features
``LABEL_DETECTION``, ``TEXT_DETECTION``, ``IMAGE_PROPERTIES`` and ``SAFE_SEARCH_DETECTION``,
the photo inline (base64, at most 2048 px on its longest side).

The API key (``CONVEYOR_GOOGLE_VISION_API_KEY``) is sent in the ``X-Goog-Api-Key`` header,
which the API accepts exactly like the ``?key=`` query parameter, so that it is never part
of a URL: URLs end up in HTTP client logs (httpx logs every request line at INFO), proxies
and tracebacks. Every error message is scrubbed of the key all the same.

The call goes through :func:`conveyor.providers.http.request_json` under the
:class:`~conveyor.providers.base.CallGuard` key ``"vision_google_vision"``: 429 and 5xx are
retried in-call (honouring ``Retry-After``) and then raised as
:class:`~conveyor.errors.TransientError` with ``retry_after``; other 4xx (a bad key, a
disabled API) are :class:`~conveyor.errors.PermanentError`. A per-image ``error`` object in
a 200 answer is a ``PermanentError`` (``provider_rejected``: bad image data…), except for
the gRPC codes that mean "try again" (DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED,
INTERNAL, UNAVAILABLE), which are transient.

``results``::

    {
      "labels": [{"name": str, "confidence": float, "mid": str | None}],  # score 0..1
      "text": {"text": str, "locale": str | None,
               "lines": [{"text": str, "confidence": None}]},
      "colors": [{"hex": "#rrggbb", "fraction": float, "score": float}],  # by score
      "safe_search": {"adult": str, "spoof": str, "medical": str,          # likelihood
                      "violence": str, "racy": str},                       # names, e.g.
                                                                           # "VERY_UNLIKELY"
    }

Cost: list price per 1,000 units after the free tier, USD 1.50 per feature; SafeSearch is
free together with label detection (:data:`PRICE_PER_PHOTO_USD`).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx

from conveyor.errors import (
    ConveyorError,
    NotConfigured,
    PermanentError,
    ProviderUnavailable,
    TransientError,
)
from conveyor.providers.base import CallGuard
from conveyor.providers.http import request_json
from conveyor.providers.vision.base import AIProviderBase, PhotoInput, ProviderResult
from conveyor.providers.vision.imaging import fit_jpeg

if TYPE_CHECKING:
    from conveyor.config import Settings

PROVIDER = "vision_google_vision"
PRICE_PER_PHOTO_USD = 3 * 0.0015
MAX_SIDE = 2048
MAX_BYTES = 7 * 1024 * 1024  # base64 inflates it by 4/3; the request limit is 10 MB
MAX_LABELS = 50
FEATURES: tuple[dict[str, Any], ...] = (
    {"type": "LABEL_DETECTION", "maxResults": MAX_LABELS},
    {"type": "TEXT_DETECTION"},
    {"type": "IMAGE_PROPERTIES"},
    {"type": "SAFE_SEARCH_DETECTION"},
)
SAFE_SEARCH_KEYS = ("adult", "spoof", "medical", "violence", "racy")
#: google.rpc.Code values worth retrying: DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED,
#: INTERNAL, UNAVAILABLE.
TRANSIENT_RPC_CODES = frozenset({4, 8, 10, 13, 14})
_MESSAGE_CHARS = 200


class GoogleVisionProvider(AIProviderBase):
    """:class:`AIProviderBase` over ``images:annotate``."""

    name = "google_vision"
    version = "1"

    def __init__(
        self,
        api_key: str,
        guard: CallGuard,
        *,
        base_url: str = "https://vision.googleapis.com",
        timeout_s: float = 30.0,
        max_tries: int = 3,
        backoff_base_s: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not api_key:
            raise NotConfigured(
                "the google_vision photo provider needs CONVEYOR_GOOGLE_VISION_API_KEY",
                code="not_configured",
            )
        self._key = api_key
        self.guard = guard
        self.base_url = base_url.rstrip("/")
        self.max_tries = max_tries
        self.backoff_base_s = backoff_base_s
        self._sleep = sleep
        self._client = httpx.Client(
            headers={"Accept": "application/json", "X-Goog-Api-Key": api_key},
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            transport=transport,
            follow_redirects=False,
        )

    @classmethod
    def from_settings(cls, settings: Settings, guard: CallGuard) -> GoogleVisionProvider:
        key = settings.google_vision_api_key
        return cls(
            key.get_secret_value() if key else "",
            guard,
            base_url=settings.google_vision_base_url,
            timeout_s=settings.google_vision_timeout_s,
        )

    def __repr__(self) -> str:  # no key in reprs
        return f"GoogleVisionProvider(base_url={self.base_url!r})"

    def close(self) -> None:
        self._client.close()

    def build_request(self, jpeg: bytes) -> dict[str, Any]:
        """The JSON body of ``images:annotate`` for one photo."""
        return {
            "requests": [{
                "image": {"content": base64.b64encode(jpeg).decode("ascii")},
                "features": [dict(f) for f in FEATURES],
            }]
        }

    def process_image(self, image: PhotoInput) -> ProviderResult:
        data = fit_jpeg(image.jpeg, max_side=MAX_SIDE, max_bytes=MAX_BYTES)
        try:
            payload, _ = request_json(
                self._client,
                "POST",
                f"{self.base_url}/v1/images:annotate",
                provider=PROVIDER,
                guard=self.guard,
                max_tries=self.max_tries,
                backoff_base_s=self.backoff_base_s,
                sleep=self._sleep,
                json=self.build_request(data),
            )
        except ConveyorError as exc:
            raise self._scrubbed(exc) from None
        if not isinstance(payload, dict):
            raise TransientError("google_vision: the answer was not a JSON object",
                                 code="provider_bad_response")
        responses = payload.get("responses")
        if not isinstance(responses, list) or not responses or not isinstance(
            responses[0], dict
        ):
            raise TransientError("google_vision: the answer had no responses",
                                 code="provider_bad_response")
        answer: dict[str, Any] = responses[0]
        error = answer.get("error")
        if isinstance(error, dict) and error:
            raise self._scrubbed(_image_error(error))
        results = {
            "labels": parse_labels(answer),
            "text": parse_text(answer),
            "colors": parse_colors(answer),
            "safe_search": parse_safe_search(answer),
        }
        return ProviderResult(results=results, model="google-cloud-vision-v1",
                              cost_usd=round(PRICE_PER_PHOTO_USD, 6))

    def _scrubbed(self, exc: ConveyorError) -> ConveyorError:
        """The same error with the API key masked out of its message."""
        if self._key not in exc.message:
            return exc
        message = exc.message.replace(self._key, "***")
        if isinstance(exc, ProviderUnavailable):
            return ProviderUnavailable(message, code=exc.code, retry_after=exc.retry_after)
        if isinstance(exc, TransientError):
            return TransientError(message, code=exc.code, retry_after=exc.retry_after)
        if isinstance(exc, PermanentError):
            return PermanentError(message, code=exc.code)
        return ConveyorError(message, code=exc.code)


# --------------------------------------------------------------------------- parsing


def _image_error(error: dict[str, Any]) -> ConveyorError:
    try:
        rpc = int(error.get("code") or 0)
    except (TypeError, ValueError):
        rpc = 0
    message = " ".join(str(error.get("message") or "no message").split())[:_MESSAGE_CHARS]
    text = f"google_vision: the image was not analysed (code {rpc}): {message}"
    if rpc in TRANSIENT_RPC_CODES:
        return TransientError(
            text, code="provider_rate_limited" if rpc == 8 else "provider_unavailable"
        )
    return PermanentError(text, code="provider_rejected")


def _score(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    if number != number:  # NaN
        return 0.0
    return round(min(1.0, max(0.0, number)), 4)


def parse_labels(answer: dict[str, Any]) -> list[dict[str, Any]]:
    labels: list[dict[str, Any]] = []
    raw = answer.get("labelAnnotations")
    for label in raw if isinstance(raw, list) else []:
        if isinstance(label, dict) and isinstance(label.get("description"), str):
            mid = label.get("mid")
            labels.append({
                "name": label["description"],
                "confidence": _score(label.get("score")),
                "mid": mid if isinstance(mid, str) else None,
            })
    labels.sort(key=lambda item: (-item["confidence"], item["name"]))
    return labels


def parse_text(answer: dict[str, Any]) -> dict[str, Any]:
    text, locale = "", None
    full = answer.get("fullTextAnnotation")
    raw = answer.get("textAnnotations")
    if isinstance(full, dict) and isinstance(full.get("text"), str):
        text = full["text"]
    if isinstance(raw, list) and raw and isinstance(raw[0], dict):
        first = raw[0]
        if not text and isinstance(first.get("description"), str):
            text = first["description"]
        if isinstance(first.get("locale"), str):
            locale = first["locale"]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return {
        "text": "\n".join(lines),
        "locale": locale,
        "lines": [{"text": line, "confidence": None} for line in lines],
    }


def _channel(color: dict[str, Any], key: str) -> int:
    try:
        value = float(color.get(key) or 0.0)
    except (TypeError, ValueError):
        return 0
    if value != value:
        return 0
    return round(min(255.0, max(0.0, value)))


def parse_colors(answer: dict[str, Any]) -> list[dict[str, Any]]:
    props = answer.get("imagePropertiesAnnotation")
    dominant = props.get("dominantColors") if isinstance(props, dict) else None
    raw = dominant.get("colors") if isinstance(dominant, dict) else None
    colors: list[dict[str, Any]] = []
    for item in raw if isinstance(raw, list) else []:
        if not isinstance(item, dict) or not isinstance(item.get("color"), dict):
            continue
        c = item["color"]
        colors.append({
            "hex": f"#{_channel(c, 'red'):02x}{_channel(c, 'green'):02x}"
                   f"{_channel(c, 'blue'):02x}",
            "fraction": _score(item.get("pixelFraction")),
            "score": _score(item.get("score")),
        })
    colors.sort(key=lambda item: (-item["score"], item["hex"]))
    return colors


def parse_safe_search(answer: dict[str, Any]) -> dict[str, str]:
    raw = answer.get("safeSearchAnnotation")
    raw = raw if isinstance(raw, dict) else {}
    return {
        key: raw[key] if isinstance(raw.get(key), str) else "UNKNOWN"
        for key in SAFE_SEARCH_KEYS
    }
