"""The HTTP plumbing the fake servers share: JSON answers, bodies, recorded statuses."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import Any


class JsonHandler(BaseHTTPRequestHandler):
    """A keep-alive handler that answers JSON and notes the status on ``self.record``."""

    protocol_version = "HTTP/1.1"
    record: Any = None  # the fake's RecordedRequest for this request, if any

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        if self.record is not None:  # before the client can see the answer
            self.record.status = status
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(raw)

    def _raw_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _body(self) -> Any:
        raw = self._raw_body()
        return json.loads(raw) if raw.strip() else {}
