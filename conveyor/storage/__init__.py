"""Storage backends behind the :class:`~conveyor.storage.base.Storage` port."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from conveyor.errors import PermanentError
from conveyor.storage.base import Storage, StoredFile, StoredFileMissing, check_key, safe_filename
from conveyor.storage.local import LocalStorage

if TYPE_CHECKING:
    from conveyor.storage.s3 import S3Storage

__all__ = ["LocalStorage", "Storage", "StoredFile", "StoredFileMissing", "build_storage",
           "direct_url_for", "direct_url_origin", "safe_filename"]

S3_URL_FORMAT = "s3://bucket[/prefix][?endpoint_url=http://host:port&region=name]"
_S3_PARAMS = ("endpoint_url", "region")
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]")
_REGION = re.compile(r"[a-z0-9][a-z0-9-]{0,40}")


def build_storage(url: str) -> Storage:
    """``file:///path`` → local disk; ``s3://bucket[/prefix][?endpoint_url=…&region=…]`` →
    S3 or any S3-compatible server (needs ``conveyor[scale]``). S3 credentials come from
    boto3's standard chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, profiles,
    instance roles), never from the URL."""
    if url.startswith("file://"):
        return LocalStorage(Path(url.removeprefix("file://")))
    if url.startswith("s3://"):
        return _s3_storage(url)
    raise ValueError(f"unsupported CONVEYOR_STORAGE_URL scheme: {url.split(':', 1)[0]!r}")


def parse_s3_url(url: str) -> tuple[str, str, dict[str, str]]:
    """``s3://bucket/prefix?endpoint_url=…&region=…`` → (bucket, prefix, options).

    Errors name the part that is wrong and never repeat the URL (it is configuration that
    might, by mistake, hold a secret)."""
    parts = urlsplit(url)
    if parts.scheme != "s3":
        raise ValueError(f"not an S3 storage URL; expected {S3_URL_FORMAT}")
    if "@" in parts.netloc:
        raise ValueError("the S3 storage URL must not hold credentials; boto3 reads them from "
                         "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile or a role")
    bucket = parts.netloc
    if not bucket:
        raise ValueError(f"the S3 storage URL has no bucket; expected {S3_URL_FORMAT}")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ValueError(f"invalid S3 bucket name {bucket!r} (3-63 letters, digits, '.', '-')")
    if parts.fragment:
        raise ValueError(f"the S3 storage URL must not have a #fragment; expected {S3_URL_FORMAT}")
    prefix = parts.path.strip("/")
    if prefix:
        try:
            check_key(prefix)
        except PermanentError:
            raise ValueError(f"invalid S3 prefix {prefix!r} (no empty, '.' or '..' parts)") \
                from None
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - set(_S3_PARAMS))
    if unknown:
        raise ValueError(f"unknown S3 storage URL parameter(s) {', '.join(unknown)}; "
                         f"allowed: {', '.join(_S3_PARAMS)}")
    options: dict[str, str] = {}
    for name, values in query.items():
        if len(values) != 1 or not values[0]:
            raise ValueError(f"the S3 storage URL parameter {name} needs exactly one value")
        options[name] = values[0]
    endpoint = options.get("endpoint_url")
    if endpoint is not None:
        ep = urlsplit(endpoint)
        if ep.scheme not in ("http", "https") or not ep.hostname:
            raise ValueError("endpoint_url must be an http:// or https:// URL with a host")
        if ep.username or ep.password:
            raise ValueError("endpoint_url must not hold credentials")
    region = options.get("region")
    if region is not None and not _REGION.fullmatch(region):
        raise ValueError(f"invalid S3 region {region!r}")
    return bucket, prefix, options


def _s3_storage(url: str) -> S3Storage:
    bucket, prefix, options = parse_s3_url(url)
    from conveyor.storage.s3 import S3Storage  # boto3 only when S3 is configured

    return S3Storage(bucket, prefix, endpoint_url=options.get("endpoint_url"),
                     region=options.get("region"))


@lru_cache(maxsize=8)
def _shared_storage(url: str) -> Storage:
    return build_storage(url)


def direct_url_origin(storage_url: str) -> str | None:
    """``scheme://host[:port]`` that :func:`direct_url_for` URLs point at (for a page's
    Content-Security-Policy ``img-src``), or None when files are served by the app."""
    url = direct_url_for(storage_url, "origin", 60)
    if not url:
        return None
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def direct_url_for(storage_url: str, key: str, expires_s: int) -> str | None:
    """The storage's own URL for ``key`` (an S3 presigned GET), or None for local disk.

    For code that has settings but no storage object at hand (API views): one storage per
    URL is kept, so building a client costs once, not per image."""
    if storage_url.startswith("file://"):
        return None
    return _shared_storage(storage_url).direct_url(key, expires_s)
