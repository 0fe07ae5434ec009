"""A fake AWS Rekognition endpoint on 127.0.0.1 speaking the AWS JSON 1.1 protocol.

Point boto3 at it with ``endpoint_url=fake.url``::

    with FakeRekognition(access_key="AKIAFAKE") as fake:
        fake.fail_next(2, "throttle")
        provider = RekognitionProvider(guard, endpoint_url=fake.url, region="eu-west-1")

``POST /`` with ``X-Amz-Target: RekognitionService.DetectLabels`` or ``.DetectText`` and a
``application/x-amz-json-1.1`` body answers in the real response shapes. Like the service,
it refuses requests that are not SigV4-signed (no ``Authorization: AWS4-HMAC-SHA256
Credential=…/<date>/<region>/rekognition/aws4_request, SignedHeaders=…, Signature=…`` or no
``X-Amz-Date``: ``MissingAuthenticationTokenException``), an unknown access key
(``UnrecognizedClientException``), and ``Image.Bytes`` that are not base64 of a JPEG or PNG
(``InvalidImageFormatException``; over 5 MB: ``ImageTooLargeException``). Failures are
scripted with :meth:`fail_next`:
``"throttle"`` (400 ``ThrottlingException``), ``"server"`` (500 ``InternalServerError``),
``"access_denied"`` (400 ``AccessDeniedException``), ``"invalid_image"``; an optional
``Retry-After`` header rides along. Every request is recorded (headers lower-cased, body
parsed, ``Image.Bytes`` replaced by its decoded length).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.json_handler import FakeServer, JsonHandler

_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, ?SignedHeaders=(?P<signed>[^,]+), ?"
    r"Signature=(?P<sig>[0-9a-f]{64})$"
)

FAILURES: dict[str, tuple[int, str, str]] = {
    "throttle": (400, "ThrottlingException", "Rate exceeded"),
    "server": (500, "InternalServerError", "An internal error occurred"),
    "unavailable": (503, "ServiceUnavailableException", "Service unavailable"),
    "access_denied": (400, "AccessDeniedException",
                      "User is not authorized to perform: rekognition:DetectLabels"),
    "invalid_image": (400, "InvalidImageFormatException", "Request has invalid image format"),
}

DEFAULT_LABELS: list[dict[str, Any]] = [
    {"Name": "Dog", "Confidence": 98.12, "Parents": [{"Name": "Animal"}, {"Name": "Pet"}],
     "Aliases": [], "Categories": [{"Name": "Animals and Pets"}],
     "Instances": [{"BoundingBox": {"Width": 0.4, "Height": 0.5, "Left": 0.1, "Top": 0.2},
                    "Confidence": 97.5}]},
    {"Name": "Animal", "Confidence": 98.12, "Parents": [], "Aliases": [],
     "Categories": [{"Name": "Animals and Pets"}], "Instances": []},
    {"Name": "Grass", "Confidence": 71.3, "Parents": [{"Name": "Plant"}], "Aliases": [],
     "Categories": [{"Name": "Plants and Flowers"}], "Instances": []},
]
DEFAULT_TEXT: list[str] = ["HELLO WORLD", "CONVEYOR 2024"]


@dataclass
class RecordedRequest:
    target: str
    headers: dict[str, str]
    body: Any
    status: int = 0
    at: float = field(default_factory=time.monotonic)


def _text_detections(lines: list[str]) -> list[dict[str, Any]]:
    detections: list[dict[str, Any]] = []
    next_id = 0
    for row, line in enumerate(lines):
        top = 0.1 + 0.1 * row
        line_id = next_id
        detections.append({
            "DetectedText": line, "Type": "LINE", "Id": line_id, "Confidence": 99.2,
            "Geometry": {
                "BoundingBox": {"Width": 0.5, "Height": 0.05, "Left": 0.1, "Top": top},
                "Polygon": [{"X": 0.1, "Y": top}, {"X": 0.6, "Y": top},
                            {"X": 0.6, "Y": top + 0.05}, {"X": 0.1, "Y": top + 0.05}],
            },
        })
        next_id += 1
        for word in line.split():
            detections.append({
                "DetectedText": word, "Type": "WORD", "Id": next_id, "ParentId": line_id,
                "Confidence": 98.7,
                "Geometry": {"BoundingBox": {"Width": 0.2, "Height": 0.05, "Left": 0.1,
                                             "Top": top}, "Polygon": []},
            })
            next_id += 1
    return detections


class FakeRekognition(FakeServer):
    def __init__(
        self,
        *,
        access_key: str | None = None,
        region: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.access_key = access_key  # when set, other keys get UnrecognizedClientException
        self.region = region  # when set, a request signed for another region is refused
        self.labels: list[dict[str, Any]] = [dict(x) for x in DEFAULT_LABELS]
        self.text_lines: list[str] = list(DEFAULT_TEXT)
        self.requests: list[RecordedRequest] = []
        self._fail: list[tuple[str, float | None, str | None]] = []
        self._lock = threading.Lock()
        super().__init__(_make_handler(self), host, port)

    def fail_next(
        self, n: int, kind: str = "throttle", retry_after: float | None = None,
        message: str | None = None,
    ) -> None:
        if kind not in FAILURES:
            raise ValueError(f"kind must be one of {sorted(FAILURES)}")
        with self._lock:
            self._fail.extend([(kind, retry_after, message)] * n)

    def pop_failure(self) -> tuple[str, float | None, str | None] | None:
        with self._lock:
            return self._fail.pop(0) if self._fail else None

    def targets(self) -> list[str]:
        with self._lock:
            return [r.target for r in self.requests]


def _make_handler(fake: FakeRekognition) -> type[JsonHandler]:
    class Handler(JsonHandler):
        server_version = "FakeRekognition/1.0"
        record: RecordedRequest | None = None

        def _error(self, status: int, code: str, message: str,
                   extra: dict[str, str] | None = None) -> None:
            headers = {"x-amzn-RequestId": str(uuid.uuid4()), "x-amzn-ErrorType": code,
                       **(extra or {})}
            self._aws_send(status, {"__type": code, "Message": message}, headers)

        def _aws_send(self, status: int, body: Any, headers: dict[str, str]) -> None:
            if self.record is not None:
                self.record.status = status
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("Content-Length", str(len(raw)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(raw)

        def do_POST(self) -> None:
            self.record = None
            headers = {k.lower(): v for k, v in self.headers.items()}
            raw = self._raw_body()
            target = headers.get("x-amz-target", "")
            try:
                body: Any = json.loads(raw) if raw.strip() else {}
            except ValueError:
                body = None
            recorded_body = _summarise(body)
            self.record = RecordedRequest(target, headers, recorded_body)
            with fake._lock:
                fake.requests.append(self.record)

            if self.path != "/":
                self._error(404, "UnknownOperationException", "Unknown path")
                return
            auth = _AUTH.match(headers.get("authorization", ""))
            if auth is None or not headers.get("x-amz-date") or auth["service"] != "rekognition":
                self._error(400, "MissingAuthenticationTokenException",
                            "Missing Authentication Token")
                return
            if fake.access_key is not None and auth["key"] != fake.access_key:
                self._error(400, "UnrecognizedClientException",
                            "The security token included in the request is invalid.")
                return
            if fake.region is not None and auth["region"] != fake.region:
                self._error(400, "InvalidSignatureException",
                            f"Credential should be scoped to a valid region, not "
                            f"'{auth['region']}'.")
                return
            if headers.get("content-type", "").split(";")[0] != "application/x-amz-json-1.1":
                self._error(400, "SerializationException", "Unexpected content type")
                return
            operation = target.removeprefix("RekognitionService.")
            if not target.startswith("RekognitionService.") or operation not in (
                "DetectLabels", "DetectText"
            ):
                self._error(400, "UnknownOperationException", f"Unknown operation {target}")
                return
            failure = fake.pop_failure()
            if failure is not None:
                kind, retry_after, message = failure
                status, code, default_message = FAILURES[kind]
                extra = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
                self._error(status, code, message or default_message, extra)
                return
            problem = _image_problem(body.get("Image") if isinstance(body, dict) else None)
            if problem is not None:
                self._error(400, *problem)
                return
            request_id = {"x-amzn-RequestId": str(uuid.uuid4())}
            if operation == "DetectLabels":
                min_conf = float(body.get("MinConfidence") or 55.0)
                max_labels = int(body.get("MaxLabels") or 1000)
                labels = [x for x in fake.labels if float(x["Confidence"]) >= min_conf]
                self._aws_send(200, {"Labels": labels[:max_labels],
                                     "LabelModelVersion": "3.0"}, request_id)
            else:
                self._aws_send(200, {"TextDetections": _text_detections(fake.text_lines),
                                     "TextModelVersion": "3.0"}, request_id)

    return Handler


def _summarise(body: Any) -> Any:
    """The body with ``Image.Bytes`` replaced by the decoded length (keeps records small)."""
    if not isinstance(body, dict):
        return body
    out = dict(body)
    image = out.get("Image")
    if isinstance(image, dict) and isinstance(image.get("Bytes"), str):
        try:
            size = len(base64.b64decode(image["Bytes"], validate=True))
        except (binascii.Error, ValueError):
            size = -1
        out["Image"] = {**image, "Bytes": f"<{size} bytes>"}
    return out


def _image_problem(image: Any) -> tuple[str, str] | None:
    """What Rekognition would say about ``Image``: None when it is a usable image."""
    invalid = ("InvalidImageFormatException", "Request has invalid image format")
    if not isinstance(image, dict) or not isinstance(image.get("Bytes"), str):
        return ("InvalidParameterException", "Request has invalid parameters")
    try:
        data = base64.b64decode(image["Bytes"], validate=True)
    except (binascii.Error, ValueError):
        return invalid
    if len(data) > 5 * 1024 * 1024:
        return ("ImageTooLargeException", "Image size is too large.")
    if not (data.startswith(b"\xff\xd8\xff") or data.startswith(b"\x89PNG\r\n\x1a\n")):
        return invalid
    return None

if __name__ == "__main__":
    server = FakeRekognition()
    print(server.url, flush=True)
    server.serve_until_interrupted()
