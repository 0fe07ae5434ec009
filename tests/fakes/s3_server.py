"""A real S3-compatible server on 127.0.0.1: moto's S3 in a thread, behind a thin gate.

``MotoS3`` is a context manager; it sets no environment variable. Clients use the dummy
credentials in ``.env`` (a test puts them in ``os.environ`` with ``monkeypatch.setenv``,
since boto3 reads credentials from its standard chain).

The gate adds two things moto's server does not do, the way AWS S3 does them:

* presigned URLs (``X-Amz-Signature`` in the query) are checked: an expired one, or one
  whose SigV4 signature does not match the dummy credentials, gets 403 with S3's XML error;
* ``fail_next(n, status, code)`` answers the next ``n`` requests with an S3 error (503
  ``SlowDown`` by default), to show how a client copes with throttling and outages.

moto keeps its state per process: every ``MotoS3`` in one process sees the same buckets,
so tests use bucket names of their own.

Run ``python -m tests.fakes.s3_server [--port N]`` for a manual session: it prints the
endpoint, the storage URL form and the credentials to export.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, unquote, urlencode

from werkzeug.serving import BaseWSGIServer, make_server

from tests.fakes.json_handler import ServerLifecycle

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _xml_error(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{message}</Message><RequestId>fake</RequestId></Error>").encode()


class _Gate:
    """WSGI middleware in front of moto: presigned-URL checks and injected failures."""

    def __init__(self, app: WsgiApp) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._failures: list[tuple[int, str]] = []

    def fail_next(self, count: int, status: int, code: str) -> None:
        with self._lock:
            self._failures.extend([(status, code)] * count)

    def __call__(self, environ: dict[str, Any],
                 start_response: Callable[..., Any]) -> Iterable[bytes]:
        with self._lock:
            failure = self._failures.pop(0) if self._failures else None
        if failure is not None:
            return self._error(start_response, failure[0], failure[1], "injected failure")
        query = environ.get("QUERY_STRING", "")
        if "X-Amz-Signature=" in query:
            problem = _check_presigned(environ, query)
            if problem is not None:
                return self._error(start_response, 403, *problem)
        return self.app(environ, start_response)

    @staticmethod
    def _error(start_response: Callable[..., Any], status: int, code: str,
               message: str) -> Iterable[bytes]:
        body = _xml_error(code, message)
        reason = {403: "Forbidden", 500: "Internal Server Error",
                  503: "Service Unavailable"}.get(status, "Error")
        start_response(f"{status} {reason}", [("Content-Type", "application/xml"),
                                              ("Content-Length", str(len(body)))])
        return [body]


def _check_presigned(environ: dict[str, Any], query: str) -> tuple[str, str] | None:
    """None when the SigV4 query signature is valid and unexpired, else (code, message)."""
    pairs = [(unquote(k), unquote(v)) for k, _, v in
             (p.partition("=") for p in query.split("&") if p)]
    params = dict(pairs)
    try:
        amz_date = params["X-Amz-Date"]
        expires = int(params["X-Amz-Expires"])
        access_key, date, region, service, _ = params["X-Amz-Credential"].split("/")
        signed_headers = params["X-Amz-SignedHeaders"]
        signature = params["X-Amz-Signature"]
        signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except (KeyError, ValueError):
        return "AuthorizationQueryParametersError", "malformed presigned URL"
    if access_key != ACCESS_KEY:
        return "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist."
    if datetime.now(UTC) > signed_at + timedelta(seconds=expires):
        return "AccessDenied", "Request has expired"
    raw_uri = environ.get("RAW_URI") or environ.get("REQUEST_URI") or quote(
        environ.get("PATH_INFO", "/"))
    path = raw_uri.split("?", 1)[0]
    canonical_query = "&".join(sorted(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
        for k, v in pairs if k != "X-Amz-Signature"))
    headers = ""
    for name in signed_headers.split(";"):
        value = environ.get("HTTP_" + name.upper().replace("-", "_"), "")
        headers += f"{name}:{value.strip()}\n"
    canonical = "\n".join([environ["REQUEST_METHOD"], path, canonical_query, headers,
                           signed_headers, "UNSIGNED-PAYLOAD"])
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = f"AWS4{SECRET_KEY}".encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        return ("SignatureDoesNotMatch", "The request signature we calculated does not match "
                "the signature you provided.")
    return None


class MotoS3(ServerLifecycle):
    """moto's S3 server on ``host`` (port 0: a free one), in a daemon thread."""

    env: dict[str, str] = {"AWS_ACCESS_KEY_ID": ACCESS_KEY,
                           "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                           "AWS_DEFAULT_REGION": REGION}

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, verbose: bool = False) -> None:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )

        class Handler(MotoRequestHandler):
            def log_request(self, *args: Any, **kwargs: Any) -> None:
                if verbose:
                    super().log_request(*args, **kwargs)

        self.gate = _Gate(DomainDispatcherApplication(create_backend_app))
        self._server: BaseWSGIServer = make_server(
            host, port, self.gate, threaded=True, request_handler=Handler)

    @property
    def endpoint_url(self) -> str:
        return f"http://{self._server.host}:{self._server.port}"

    def storage_url(self, bucket: str, prefix: str = "") -> str:
        """``s3://bucket[/prefix]?endpoint_url=…``, what ``CONVEYOR_STORAGE_URL`` takes."""
        path = f"/{prefix.strip('/')}" if prefix.strip("/") else ""
        query = urlencode({"endpoint_url": self.endpoint_url}, safe=":/")
        return f"s3://{bucket}{path}?{query}"

    def client(self) -> Any:
        """A boto3 S3 client for this server with the dummy credentials (not from env)."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint_url, region_name=REGION,
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 0}))

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def fail_next(self, count: int = 1, status: int = 503, code: str = "SlowDown") -> None:
        """Answer the next ``count`` requests with ``status`` and S3 error ``code``."""
        self.gate.fail_next(count, status, code)



def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="S3-compatible server (moto) on 127.0.0.1")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--bucket", action="append", default=[],
                        help="create this bucket at start (repeatable)")
    parser.add_argument("--quiet", action="store_true", help="do not log each request")
    args = parser.parse_args(argv)
    server = MotoS3(args.host, args.port, verbose=not args.quiet).start()
    for bucket in args.bucket:
        server.create_bucket(bucket)
    print(server.endpoint_url, flush=True)
    example = server.storage_url(args.bucket[0] if args.bucket else "BUCKET")
    print(f"# CONVEYOR_STORAGE_URL='{example}'", flush=True)
    print("# " + " ".join(f"{k}={v}" for k, v in MotoS3.env.items()), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()

if __name__ == "__main__":
    main()
