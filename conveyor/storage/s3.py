"""S3 (or any S3-compatible server: MinIO, Ceph, R2, moto) storage behind the Storage port.

Keys map to objects ``<prefix>/<key>`` in one bucket. Semantics match
:class:`~conveyor.storage.local.LocalStorage`: uploads are hashed while they stream and
refused past ``max_bytes`` before anything reaches the bucket; ``move`` is harmless to
repeat; deleting a missing key is fine; a missing key reads as
:class:`~conveyor.storage.base.StoredFileMissing` (a ``FileNotFoundError``).

boto3 is imported only when an :class:`S3Storage` is built, so the embedded mode never
needs it. Credentials come from boto3's standard chain (environment, config files,
instance roles), never from the storage URL, and never appear in a message.
"""

from __future__ import annotations

import contextlib
import hashlib
import mimetypes
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from conveyor.errors import ConveyorError, NotConfigured, PermanentError, TransientError
from conveyor.storage.base import StoredFile, StoredFileMissing, UploadTooLarge, check_key

CHUNK = 1024 * 1024
MIB = 1024 * 1024
MAX_PRESIGN_S = 7 * 24 * 3600  # SigV4 presigned URLs live at most a week

INSTALL_HINT = "S3 storage needs boto3: pip install 'conveyor[scale]'"

_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
    "TooManyRequests", "TooManyRequestsException", "RequestTimeout", "InternalError",
    "ServiceUnavailable", "ExpiredToken", "RequestExpired", "OperationAborted",
})
_DENIED_CODES = frozenset({
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
    "AllAccessDisabled", "AccountProblem",
})
# images and sound shown in a browser; anything else is served as opaque bytes
_INLINE_TYPES = ("image/", "audio/", "video/")


def _import_boto3() -> Any:
    try:
        import boto3  # botocore and s3transfer come with it
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise NotConfigured(INSTALL_HINT, code="missing_dependency") from exc
    return boto3


def _content_type(key: str) -> str:
    guessed, _ = mimetypes.guess_type(key)
    if guessed and guessed.startswith(_INLINE_TYPES) and "svg" not in guessed:
        return guessed
    return "application/octet-stream"


def _safe_endpoint(endpoint_url: str | None) -> str:
    """``scheme://host:port`` of the endpoint, never user info or a path."""
    if not endpoint_url:
        return "AWS S3"
    parts = urlsplit(endpoint_url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


class S3Storage:
    """Objects in ``bucket`` under ``prefix``; see the module docstring for semantics.

    ``endpoint_url`` points at an S3-compatible server (path-style addressing is used for
    it); ``region`` overrides boto3's region chain. ``cache_dir`` holds the downloads that
    :meth:`local_path` hands out (default: a per-user folder under the system temp dir).
    Timeouts and retries are short on purpose: the job engine retries a
    :class:`~conveyor.errors.TransientError` with its own backoff.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        cache_dir: Path | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 10.0,
        max_retries: int = 2,
        multipart_threshold: int = 16 * MIB,
        multipart_chunksize: int = 16 * MIB,
    ) -> None:
        boto3 = _import_boto3()
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = check_key(prefix.strip("/")) if prefix.strip("/") else ""
        self.endpoint_url = endpoint_url
        self._where = _safe_endpoint(endpoint_url)
        options: dict[str, Any]
        if endpoint_url:  # S3-compatible servers: path-style, checksums only when required
            options = {"s3": {"addressing_style": "path"},
                       "request_checksum_calculation": "when_required",
                       "response_checksum_validation": "when_required"}
        else:  # AWS: regional virtual-hosted URLs, so presigned links work in every region
            # (a dotted bucket name would not match the TLS certificate: path-style then)
            options = {"s3": {"addressing_style": "path" if "." in bucket else "virtual"}}
        config = Config(
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            retries={"max_attempts": max_retries, "mode": "standard"},
            signature_version="s3v4",
            user_agent_extra="conveyor",
            **options,
        )
        session = boto3.session.Session()  # its own session: thread-safe, env read now
        self._client = session.client("s3", endpoint_url=endpoint_url, region_name=region,
                                      config=config)
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunksize,
            max_concurrency=4,
            num_download_attempts=max_retries + 1,
        )
        self._cache_root = (cache_dir or self._default_cache_dir()).resolve()
        self._cache_in_tmp = cache_dir is None
        self._cache_checked = False

    def __repr__(self) -> str:
        return f"S3Storage(bucket={self.bucket!r}, prefix={self.prefix!r}, at {self._where})"

    # -- keys and errors ------------------------------------------------------------

    def _object_key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _default_cache_dir(self) -> Path:
        ident = hashlib.sha256(
            f"{self.endpoint_url or ''}\n{self.bucket}\n{self.prefix}".encode()
        ).hexdigest()[:16]
        uid = os.getuid() if hasattr(os, "getuid") else 0
        return Path(tempfile.gettempdir()) / f"conveyor-s3-cache-{uid}" / ident

    def _cache_path(self, key: str) -> Path:
        root = self._cache_root
        if not self._cache_checked:
            if self._cache_in_tmp:
                root.parent.mkdir(exist_ok=True, mode=0o700)
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
            # the shared temp dir: refuse a folder someone else created for us
            mine = [root, root.parent] if self._cache_in_tmp else [root]
            if hasattr(os, "getuid") and any(d.stat().st_uid != os.getuid() for d in mine):
                raise PermanentError(f"the S3 cache folder {root} belongs to another user",
                                     code="storage_cache_unsafe")
            self._cache_checked = True
        path = (root / check_key(key)).resolve()
        if root not in path.parents:
            raise PermanentError(f"invalid storage key {key!r}", code="invalid_key")
        return path

    @contextlib.contextmanager
    def _s3_errors(self, op: str, key: str) -> Iterator[None]:
        """Turn boto errors into Transient/Permanent errors with a message people can act on."""
        try:
            yield
        except ConveyorError:
            raise
        except Exception as exc:
            translated = self._translate(exc, op, key)
            if translated is None:
                raise
            raise translated from exc

    def _translate(self, exc: BaseException, op: str, key: str) -> ConveyorError | None:
        from botocore.exceptions import (
            ClientError,
            ConnectionError,
            CredentialRetrievalError,
            HTTPClientError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        where = f"s3://{self.bucket}/{self._object_key(key)}" if key else f"s3://{self.bucket}"
        seen: set[int] = set()
        current: BaseException | None = exc
        while current is not None and id(current) not in seen:
            seen.add(id(current))
            if isinstance(current, ClientError):
                return self._client_error(current, op, key, where)
            if isinstance(current, ConnectionError | HTTPClientError):
                return TransientError(
                    f"S3 {op} of {where} failed: {self._where} did not answer "
                    f"({type(current).__name__}); try again later",
                    code="storage_unavailable")
            if isinstance(current, NoCredentialsError | PartialCredentialsError
                          | CredentialRetrievalError):
                return PermanentError(
                    f"S3 {op} of {where}: no usable AWS credentials ({type(current).__name__}); "
                    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or configure a profile",
                    code="storage_no_credentials")
            last = getattr(current, "last_exception", None)  # s3transfer's retries exceeded
            nxt = last if isinstance(last, BaseException) else None
            current = nxt or current.__cause__ or current.__context__
        return None

    def _client_error(self, exc: Any, op: str, key: str, where: str) -> ConveyorError:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "Unknown"))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in _MISSING_CODES and key:
            return StoredFileMissing(f"the stored file {key} is missing")
        if code == "NoSuchBucket":
            return PermanentError(f"the S3 bucket {self.bucket!r} does not exist at {self._where}",
                                  code="storage_no_bucket")
        if code in _TRANSIENT_CODES or status >= 500 or status == 429:
            return TransientError(f"S3 {op} of {where} failed: {code} (HTTP {status}); "
                                  "try again later", code="storage_unavailable")
        if code in _DENIED_CODES or status == 403:
            return PermanentError(f"S3 refused {op} of {where}: {code} (HTTP {status}); "
                                  "check the credentials and the bucket policy",
                                  code="storage_denied")
        return PermanentError(f"S3 {op} of {where} failed: {code} (HTTP {status})",
                              code="storage_error")

    def _head(self, key: str) -> dict[str, Any] | None:
        """The object's metadata, or None when there is no such key (HEAD has no body, so a
        missing bucket also reads as None here; writes then say which it is)."""
        try:
            with self._s3_errors("check", key):
                head: dict[str, Any] = self._client.head_object(
                    Bucket=self.bucket, Key=self._object_key(key))
                return head
        except StoredFileMissing:
            return None

    # -- the Storage port -----------------------------------------------------------

    def put_stream(self, key: str, stream: BinaryIO, max_bytes: int | None = None) -> StoredFile:
        object_key = self._object_key(key)
        digest = hashlib.sha256()
        size = 0
        # spool first: a refused upload never reaches the bucket, and a retried part can
        # be re-read; the unnamed temp file disappears when closed, whatever happens
        with tempfile.TemporaryFile(prefix="conveyor-s3-") as spool:
            while chunk := stream.read(CHUNK):
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise UploadTooLarge(f"the file is larger than {max_bytes} bytes")
                digest.update(chunk)
                spool.write(chunk)
            spool.seek(0)
            sha256 = digest.hexdigest()
            with self._s3_errors("upload", key):
                self._client.upload_fileobj(
                    spool, self.bucket, object_key, Config=self._transfer,
                    ExtraArgs={"ContentType": _content_type(key),
                               "Metadata": {"sha256": sha256}})
        return StoredFile(key=key, sha256=sha256, size=size)

    def put_file(self, key: str, path: Path) -> StoredFile:
        object_key = self._object_key(key)
        digest = hashlib.sha256()
        size = 0
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                size += len(chunk)
                digest.update(chunk)
            fh.seek(0)
            sha256 = digest.hexdigest()
            with self._s3_errors("upload", key):
                self._client.upload_fileobj(
                    fh, self.bucket, object_key, Config=self._transfer,
                    ExtraArgs={"ContentType": _content_type(key),
                               "Metadata": {"sha256": sha256}})
        return StoredFile(key=key, sha256=sha256, size=size)

    def read_bytes(self, key: str) -> bytes:
        with self._s3_errors("download", key):
            response = self._client.get_object(Bucket=self.bucket, Key=self._object_key(key))
            body = response["Body"]
            try:
                data: bytes = body.read()
            finally:
                body.close()
            return data

    def local_path(self, key: str) -> Path:
        """A cached download; reused while its size and modification time match the object."""
        path = self._cache_path(key)
        head = self._head(key)
        if head is None:
            raise StoredFileMissing(f"the stored file {key} is missing")
        size = int(head.get("ContentLength", -1))
        modified = head.get("LastModified")
        mtime = modified.timestamp() if modified is not None else None
        with contextlib.suppress(FileNotFoundError):
            st = path.stat()
            if st.st_size == size and (mtime is None or abs(st.st_mtime - mtime) < 1e-3):
                return path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
        try:
            with self._s3_errors("download", key):
                self._client.download_file(self.bucket, self._object_key(key), str(tmp),
                                           Config=self._transfer)
            if mtime is not None:
                os.utime(tmp, (mtime, mtime))
            os.replace(tmp, path)  # concurrent readers see the old file or the whole new one
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return path

    def move(self, src: str, dst: str) -> None:
        src_key, dst_key = self._object_key(src), self._object_key(dst)
        if self._head(src) is None:
            if self._head(dst) is not None:
                return  # already moved: a repeated job
            raise StoredFileMissing(f"the stored file {src} is missing")
        try:
            with self._s3_errors("copy", src):
                self._client.copy({"Bucket": self.bucket, "Key": src_key}, self.bucket,
                                  dst_key, Config=self._transfer)
        except StoredFileMissing:
            if self._head(dst) is None:  # another worker moved it in between: fine
                raise
            return
        with self._s3_errors("delete", src):
            self._client.delete_object(Bucket=self.bucket, Key=src_key)
        self._forget_cached(src)

    def delete(self, key: str) -> None:
        with self._s3_errors("delete", key):  # S3 answers 204 for a missing key too
            self._client.delete_object(Bucket=self.bucket, Key=self._object_key(key))
        self._forget_cached(key)

    def _forget_cached(self, key: str) -> None:
        with contextlib.suppress(OSError, PermanentError):
            self._cache_path(key).unlink()

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def direct_url(self, key: str, expires_s: int) -> str | None:
        """A presigned GET URL, valid for ``expires_s`` seconds (1 s to 7 days)."""
        if not 1 <= expires_s <= MAX_PRESIGN_S:
            raise ValueError(f"expires_s must be between 1 and {MAX_PRESIGN_S}")
        with self._s3_errors("presign", key):
            url: str = self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self._object_key(key)},
                ExpiresIn=int(expires_s))
            return url
