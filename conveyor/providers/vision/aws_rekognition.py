"""Labels and text from AWS Rekognition (``DetectLabels`` + ``DetectText``) through boto3.

Needs the ``scale`` extra (``pip install 'conveyor[scale]'``, which brings boto3).
Credentials come from boto3's standard chain (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and ``~/.aws``, SSO,
container and instance roles); Conveyor never stores them. Settings: ``aws_region``
(``CONVEYOR_AWS_REGION``) and ``aws_endpoint_url`` (``CONVEYOR_AWS_ENDPOINT_URL``, for a
VPC endpoint, LocalStack or a test server).

The photo is sent inline (``Image={"Bytes": …}``), at most 2048 px on its longest side and
under Rekognition's 5 MB limit. Each API call asks the
:class:`~conveyor.providers.base.CallGuard` for a token under the key
``"vision_aws_rekognition"`` and reports its outcome. botocore's own retries are off (so the
guard sees every request); this module retries in-call once on throttling, 5xx and
connection errors, then raises :class:`~conveyor.errors.TransientError` (``retry_after``
from a ``Retry-After`` header when the service sent one). Access denied, bad credentials and
images Rekognition refuses are :class:`~conveyor.errors.PermanentError`. No message ever
contains the access key, the secret or the session token.

``results``::

    {
      "labels": [{"name": str, "confidence": float,      # 0..1 (Rekognition's % / 100)
                  "parents": [str], "instances": int}],  # most confident first
      "text": {"text": str,                              # LINE detections joined by "\\n"
               "lines": [{"text": str, "confidence": float,
                          "box": [[x, y], …]}]},         # canonical-JPEG pixels
      "label_model_version": str | None,
      "text_model_version": str | None,
    }

Cost: list price of the first million images a month, USD 0.001 per API call, two calls a
photo (:data:`PRICE_PER_CALL_USD`).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from PIL import Image

from conveyor.errors import ConveyorError, NotConfigured, PermanentError, TransientError
from conveyor.providers.base import CallGuard
from conveyor.providers.http import (
    DEFAULT_MAX_RETRY_AFTER_S,
    RETRY_AFTER_REPORT_CAP_S,
    backoff_delay,
    parse_retry_after,
)
from conveyor.providers.vision.base import AIProviderBase, PhotoInput, ProviderResult
from conveyor.providers.vision.imaging import fit_jpeg

if TYPE_CHECKING:
    from conveyor.config import Settings

PROVIDER = "vision_aws_rekognition"
PRICE_PER_CALL_USD = 0.001
MAX_SIDE = 2048
MAX_BYTES = 5 * 1024 * 1024
MAX_LABELS = 50
MIN_CONFIDENCE = 55.0

#: Error codes worth retrying (besides any HTTP 5xx).
TRANSIENT_CODES = frozenset({
    "ThrottlingException",
    "ProvisionedThroughputExceededException",
    "LimitExceededException",
    "InternalServerError",
    "ServiceUnavailableException",
    "ServiceUnavailable",
    "RequestTimeout",
    "RequestTimeoutException",
    "SlowDown",
})
#: Error codes that mean "the credentials are wrong or not allowed".
AUTH_CODES = frozenset({
    "AccessDeniedException",
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "MissingAuthenticationTokenException",
    "IncompleteSignature",
    "ExpiredTokenException",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
})
_MESSAGE_CHARS = 200


def _import_boto3() -> Any:
    try:
        import boto3
    except ImportError:
        raise NotConfigured(
            "the aws_rekognition photo provider needs boto3: pip install 'conveyor[scale]'",
            code="not_configured",
        ) from None
    return boto3


class RekognitionProvider(AIProviderBase):
    """:class:`AIProviderBase` over Rekognition's DetectLabels and DetectText."""

    name = "aws_rekognition"
    version = "1"

    def __init__(
        self,
        guard: CallGuard,
        *,
        region: str = "us-east-1",
        endpoint_url: str | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
        max_tries: int = 2,
        backoff_base_s: float = 0.5,
        max_retry_after_s: float = DEFAULT_MAX_RETRY_AFTER_S,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        boto3 = _import_boto3()
        from botocore.config import Config

        self.guard = guard
        self.region = region
        self.endpoint_url = endpoint_url or None
        self.max_tries = max(1, max_tries)
        self.backoff_base_s = backoff_base_s
        self.max_retry_after_s = max_retry_after_s
        self._sleep = sleep
        self._session = boto3.session.Session(region_name=region)
        self._client = self._session.client(
            "rekognition",
            region_name=region,
            endpoint_url=self.endpoint_url,
            config=Config(
                connect_timeout=connect_timeout_s,
                read_timeout=read_timeout_s,
                retries={"total_max_attempts": 1, "mode": "standard"},
                user_agent_extra="conveyor",
            ),
        )

    @classmethod
    def from_settings(cls, settings: Settings, guard: CallGuard) -> RekognitionProvider:
        return cls(guard, region=settings.aws_region, endpoint_url=settings.aws_endpoint_url)

    def __repr__(self) -> str:
        return f"RekognitionProvider(region={self.region!r}, endpoint_url={self.endpoint_url!r})"

    def close(self) -> None:
        close = getattr(self._client, "close", None)
        if callable(close):
            close()

    # ------------------------------------------------------------------ analysis

    def process_image(self, image: PhotoInput) -> ProviderResult:
        data = fit_jpeg(image.jpeg, max_side=MAX_SIDE, max_bytes=MAX_BYTES)
        width, height = _jpeg_size(image.jpeg)
        labels = self._call(
            "DetectLabels", "detect_labels",
            Image={"Bytes": data}, MaxLabels=MAX_LABELS, MinConfidence=MIN_CONFIDENCE,
        )
        text = self._call("DetectText", "detect_text", Image={"Bytes": data})
        results = {
            "labels": parse_labels(labels),
            "text": parse_text(text, width, height),
            "label_model_version": _str_or_none(labels.get("LabelModelVersion")),
            "text_model_version": _str_or_none(text.get("TextModelVersion")),
        }
        return ProviderResult(
            results=results,
            model="aws-rekognition",
            cost_usd=round(2 * PRICE_PER_CALL_USD, 6),
        )

    def _call(self, operation: str, method: str, **params: Any) -> dict[str, Any]:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionError,
            ConnectTimeoutError,
            HTTPClientError,
            NoCredentialsError,
            PartialCredentialsError,
            ReadTimeoutError,
        )

        last: TransientError | None = None
        for attempt in range(self.max_tries):
            self.guard.before_call(PROVIDER)
            try:
                response = getattr(self._client, method)(**params)
            except ClientError as exc:
                error = self._classify(operation, exc)
                if isinstance(error, TransientError):
                    self.guard.after_call(PROVIDER, False, error.retry_after)
                    last = error
                else:
                    self.guard.after_call(PROVIDER, True, None)  # it answered: no outage
                    raise error from None
            except (ConnectTimeoutError, ReadTimeoutError) as exc:
                self.guard.after_call(PROVIDER, False, None)
                last = TransientError(
                    f"rekognition {operation}: timed out ({type(exc).__name__})",
                    code="provider_timeout",
                )
            except (ConnectionError, HTTPClientError) as exc:
                self.guard.after_call(PROVIDER, False, None)
                last = TransientError(
                    f"rekognition {operation}: connection failed ({type(exc).__name__})",
                    code="provider_unavailable",
                )
            except (NoCredentialsError, PartialCredentialsError):
                self.guard.after_call(PROVIDER, True, None)
                raise PermanentError(
                    "rekognition: no usable AWS credentials (set AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run with an IAM role)",
                    code="provider_auth",
                ) from None
            except BotoCoreError as exc:
                self.guard.after_call(PROVIDER, False, None)
                last = TransientError(
                    f"rekognition {operation}: {type(exc).__name__}: "
                    f"{self._scrub(str(exc))[:_MESSAGE_CHARS]}",
                    code="provider_unavailable",
                )
            else:
                self.guard.after_call(PROVIDER, True, None)
                return response if isinstance(response, dict) else {}

            retry_after = last.retry_after
            if retry_after is not None and retry_after > self.max_retry_after_s:
                break
            if attempt + 1 < self.max_tries:
                delay = (retry_after if retry_after is not None
                         else backoff_delay(attempt, self.backoff_base_s))
                if delay > 0:
                    self._sleep(delay)
        assert last is not None
        raise last

    def _classify(self, operation: str, exc: Any) -> ConveyorError:
        response = getattr(exc, "response", None) or {}
        error = response.get("Error") or {}
        meta = response.get("ResponseMetadata") or {}
        code = str(error.get("Code") or "Unknown")
        status = int(meta.get("HTTPStatusCode") or 0)
        message = self._scrub(" ".join(str(error.get("Message") or "").split()))
        if len(message) > _MESSAGE_CHARS:
            message = message[:_MESSAGE_CHARS] + "…"
        where = f"rekognition {operation}: {code} (HTTP {status or '?'})"
        text = f"{where}: {message}" if message else where
        if code in TRANSIENT_CODES or status == 429 or status >= 500:
            headers = meta.get("HTTPHeaders") or {}
            retry_after = parse_retry_after(headers.get("retry-after"))
            if retry_after is not None:
                retry_after = min(retry_after, RETRY_AFTER_REPORT_CAP_S)
            rate_limited = status == 429 or "Throttl" in code or "Exceeded" in code
            return TransientError(
                text,
                code="provider_rate_limited" if rate_limited else "provider_unavailable",
                retry_after=retry_after,
            )
        if code in AUTH_CODES or status in (401, 403):
            return PermanentError(f"{text} (check the AWS credentials and IAM permissions)",
                                  code="provider_auth")
        return PermanentError(text, code="provider_rejected")

    def _scrub(self, text: str) -> str:
        """``text`` without the access key, secret or session token."""
        try:
            credentials = self._session.get_credentials()
            frozen = credentials.get_frozen_credentials() if credentials else None
        except Exception:
            frozen = None
        if frozen is not None:
            for secret in (frozen.secret_key, frozen.token, frozen.access_key):
                if secret and len(secret) >= 4:
                    text = text.replace(secret, "***")
        return text


# --------------------------------------------------------------------------- parsing


def _str_or_none(value: Any) -> str | None:
    return str(value) if isinstance(value, str | int | float) and value != "" else None


def _unit(value: Any) -> float:
    """Rekognition confidences are percentages: as 0..1."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    if number != number:  # NaN
        return 0.0
    return round(min(100.0, max(0.0, number)) / 100.0, 4)


def _jpeg_size(jpeg: bytes) -> tuple[int, int]:
    try:
        with Image.open(io.BytesIO(jpeg)) as im:
            return int(im.width), int(im.height)
    except Exception:
        return 0, 0


def parse_labels(response: dict[str, Any]) -> list[dict[str, Any]]:
    labels: list[dict[str, Any]] = []
    raw = response.get("Labels")
    for label in raw if isinstance(raw, list) else []:
        if not isinstance(label, dict) or not isinstance(label.get("Name"), str):
            continue
        parents = [
            p["Name"] for p in label.get("Parents") or []
            if isinstance(p, dict) and isinstance(p.get("Name"), str)
        ]
        instances = label.get("Instances")
        labels.append({
            "name": label["Name"],
            "confidence": _unit(label.get("Confidence")),
            "parents": parents,
            "instances": len(instances) if isinstance(instances, list) else 0,
        })
    labels.sort(key=lambda item: (-item["confidence"], item["name"]))
    return labels


def parse_text(response: dict[str, Any], width: int, height: int) -> dict[str, Any]:
    lines: list[dict[str, Any]] = []
    raw = response.get("TextDetections")
    for det in raw if isinstance(raw, list) else []:
        if not isinstance(det, dict) or det.get("Type") != "LINE":
            continue
        text = det.get("DetectedText")
        if not isinstance(text, str) or not text.strip():
            continue
        box: list[list[float]] = []
        geometry = det.get("Geometry") if isinstance(det.get("Geometry"), dict) else {}
        for point in (geometry or {}).get("Polygon") or []:
            if isinstance(point, dict):
                try:
                    box.append([round(float(point["X"]) * width, 1),
                                round(float(point["Y"]) * height, 1)])
                except (KeyError, TypeError, ValueError):
                    continue
        lines.append({"text": text.strip(), "confidence": _unit(det.get("Confidence")),
                      "box": box})
    return {"text": "\n".join(line["text"] for line in lines), "lines": lines}
