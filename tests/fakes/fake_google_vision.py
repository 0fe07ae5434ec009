"""A fake Google Cloud Vision ``images:annotate`` endpoint on 127.0.0.1.

::

    with FakeGoogleVision(api_key="AIza-test") as fake:
        fake.fail_next(1, status=429, retry_after=2)
        provider = GoogleVisionProvider("AIza-test", guard, base_url=fake.url)

``POST /v1/images:annotate`` takes the key as the real API does, from the ``key`` query
parameter or the ``X-Goog-Api-Key`` header; a missing or wrong key is a 400
``INVALID_ARGUMENT`` / ``API_KEY_INVALID`` (or 403 ``PERMISSION_DENIED`` when missing),
in Google's error shape. The body must be ``{"requests": [{"image": {"content": base64},
"features": [{"type": …}]}]}``; each request is answered with the annotations its
features ask for (``labelAnnotations``, ``textAnnotations`` + ``fullTextAnnotation``,
``imagePropertiesAnnotation``, ``safeSearchAnnotation``). Content that is not an image
gives the per-image ``{"error": {"code": 3, "message": "Bad image data."}}`` inside a 200,
as the service does. :meth:`fail_next` scripts HTTP failures (429 ``RESOURCE_EXHAUSTED``,
503 ``UNAVAILABLE``, …, with ``Retry-After``); :meth:`image_error_next` scripts per-image
errors. Requests are recorded with the image content replaced by its decoded length and
the query string kept separately (``query``) so tests can see where the key travelled.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes.json_handler import FakeServer, JsonHandler

_STATUS_NAMES = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 429: "RESOURCE_EXHAUSTED",
                 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}

DEFAULT_LABELS: list[dict[str, Any]] = [
    {"mid": "/m/0bt9lr", "description": "Dog", "score": 0.9712, "topicality": 0.9712},
    {"mid": "/m/08t9c_", "description": "Grass", "score": 0.8823, "topicality": 0.8823},
]
DEFAULT_TEXT = "HELLO WORLD\nCONVEYOR 2024\n"
DEFAULT_COLORS: list[dict[str, Any]] = [
    {"color": {"red": 200, "green": 30, "blue": 30}, "score": 0.61, "pixelFraction": 0.52},
    {"color": {"red": 20, "green": 40, "blue": 220}, "score": 0.33, "pixelFraction": 0.41},
]
DEFAULT_SAFE_SEARCH = {"adult": "VERY_UNLIKELY", "spoof": "UNLIKELY", "medical": "VERY_UNLIKELY",
                       "violence": "VERY_UNLIKELY", "racy": "POSSIBLE"}


@dataclass
class RecordedRequest:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any
    status: int = 0
    at: float = field(default_factory=time.monotonic)


def google_error(status: int, message: str, reason: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": status, "message": message,
                             "status": _STATUS_NAMES.get(status, "UNKNOWN")}
    if reason:
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                             "reason": reason, "domain": "googleapis.com"}]
    return {"error": error}


class FakeGoogleVision(FakeServer):
    def __init__(
        self, *, api_key: str | None = None, echo_key_in_errors: bool = True,
        host: str = "127.0.0.1", port: int = 0,
    ) -> None:
        self.api_key = api_key
        # a careless server repeats the key it got: the client must still never show it
        self.echo_key_in_errors = echo_key_in_errors
        self.labels: list[dict[str, Any]] = [dict(x) for x in DEFAULT_LABELS]
        self.text = DEFAULT_TEXT
        self.colors: list[dict[str, Any]] = [dict(x) for x in DEFAULT_COLORS]
        self.safe_search: dict[str, str] = dict(DEFAULT_SAFE_SEARCH)
        self.requests: list[RecordedRequest] = []
        self._fail: list[tuple[int, float | None]] = []
        self._image_errors: list[tuple[int, str]] = []
        self._lock = threading.Lock()
        super().__init__(_make_handler(self), host, port)

    def fail_next(self, n: int, status: int = 503, retry_after: float | None = None) -> None:
        with self._lock:
            self._fail.extend([(status, retry_after)] * n)

    def image_error_next(self, n: int = 1, code: int = 3,
                         message: str = "Bad image data.") -> None:
        with self._lock:
            self._image_errors.extend([(code, message)] * n)

    def pop_failure(self) -> tuple[int, float | None] | None:
        with self._lock:
            return self._fail.pop(0) if self._fail else None

    def pop_image_error(self) -> tuple[int, str] | None:
        with self._lock:
            return self._image_errors.pop(0) if self._image_errors else None

    def annotate(self, request: dict[str, Any]) -> dict[str, Any]:
        """The ``responses[i]`` for one ``requests[i]``."""
        scripted = self.pop_image_error()
        if scripted is not None:
            return {"error": {"code": scripted[0], "message": scripted[1]}}
        image = request.get("image") if isinstance(request, dict) else None
        content = image.get("content") if isinstance(image, dict) else None
        try:
            data = base64.b64decode(content or "", validate=True)
        except (binascii.Error, ValueError):
            data = b""
        if not (data.startswith(b"\xff\xd8\xff") or data.startswith(b"\x89PNG")):
            return {"error": {"code": 3, "message": "Bad image data."}}
        features = request.get("features") or []
        kinds = {f.get("type") for f in features if isinstance(f, dict)}
        out: dict[str, Any] = {}
        if "LABEL_DETECTION" in kinds:
            limit = next((int(f.get("maxResults") or 10) for f in features
                          if isinstance(f, dict) and f.get("type") == "LABEL_DETECTION"), 10)
            out["labelAnnotations"] = self.labels[:limit]
        if "TEXT_DETECTION" in kinds and self.text:
            words = self.text.split()
            out["textAnnotations"] = [
                {"locale": "en", "description": self.text,
                 "boundingPoly": {"vertices": [{"x": 10, "y": 10}, {"x": 300, "y": 10},
                                               {"x": 300, "y": 80}, {"x": 10, "y": 80}]}},
                *({"description": w, "boundingPoly": {"vertices": []}} for w in words),
            ]
            out["fullTextAnnotation"] = {"pages": [], "text": self.text}
        if "IMAGE_PROPERTIES" in kinds:
            out["imagePropertiesAnnotation"] = {"dominantColors": {"colors": self.colors}}
            out["cropHintsAnnotation"] = {"cropHints": []}
        if "SAFE_SEARCH_DETECTION" in kinds:
            out["safeSearchAnnotation"] = dict(self.safe_search)
        return out


def _make_handler(fake: FakeGoogleVision) -> type[JsonHandler]:
    class Handler(JsonHandler):
        server_version = "ESF"
        record: RecordedRequest | None = None

        def do_POST(self) -> None:
            self.record = None
            parts = urlsplit(self.path)
            query = parse_qs(parts.query)
            headers = {k.lower(): v for k, v in self.headers.items()}
            raw = self._raw_body()
            try:
                body: Any = json.loads(raw) if raw.strip() else None
            except ValueError:
                body = None
            self.record = RecordedRequest(parts.path, query, headers, _summarise(body))
            with fake._lock:
                fake.requests.append(self.record)

            if parts.path != "/v1/images:annotate":
                self._send(404, google_error(404, f"Method not found: {parts.path}"))
                return
            given = next(iter(query.get("key") or []), None) or headers.get("x-goog-api-key")
            if fake.api_key is not None:
                if not given:
                    self._send(403, google_error(
                        403, "Method doesn't allow unregistered callers (callers without "
                        "established identity). Please use API Key or other form of API "
                        "consumer identity to call this API.", "SERVICE_DISABLED"))
                    return
                if given != fake.api_key:
                    shown = f" ({given})" if fake.echo_key_in_errors else ""
                    self._send(400, google_error(
                        400, f"API key not valid{shown}. Please pass a valid API key.",
                        "API_KEY_INVALID"))
                    return
            failure = fake.pop_failure()
            if failure is not None:
                status, retry_after = failure
                extra = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
                shown = f" for key {given}" if fake.echo_key_in_errors and given else ""
                self._send(status, google_error(status, f"Fake failure{shown}."), extra)
                return
            requests = body.get("requests") if isinstance(body, dict) else None
            if not isinstance(requests, list) or not requests:
                self._send(400, google_error(400, "Invalid JSON payload: no requests."))
                return
            for request in requests:
                features = request.get("features") if isinstance(request, dict) else None
                if not isinstance(features, list) or not features:
                    self._send(400, google_error(400, "At least one feature is required."))
                    return
            self._send(200, {"responses": [fake.annotate(r) for r in requests]})

    return Handler


def _summarise(body: Any) -> Any:
    if not isinstance(body, dict) or not isinstance(body.get("requests"), list):
        return body
    requests = []
    for request in body["requests"]:
        if isinstance(request, dict) and isinstance(request.get("image"), dict):
            content = request["image"].get("content")
            try:
                size = len(base64.b64decode(content or "", validate=True))
            except (binascii.Error, ValueError):
                size = -1
            request = {**request, "image": {"content": f"<{size} bytes>"}}
        requests.append(request)
    return {**body, "requests": requests}


if __name__ == "__main__":
    server = FakeGoogleVision()
    print(server.url, flush=True)
    server.serve_until_interrupted()
