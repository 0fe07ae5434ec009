"""One contract, two backends: LocalStorage on disk and S3Storage against a real
S3-compatible server (moto's) on 127.0.0.1."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from conveyor.accounts import create_user
from conveyor.api.app import create_app
from conveyor.config import Settings
from conveyor.db.session import read_session
from conveyor.engine.executors.inline import run_until_idle
from conveyor.errors import NotConfigured, PermanentError, TransientError
from conveyor.pipelines.records.models import ArchiveRecord
from conveyor.pipelines.records.service import create_preview
from conveyor.pipelines.records.views import _image_url, record_view
from conveyor.runtime import build_runner, prepare, storage_for
from conveyor.storage import (
    LocalStorage,
    Storage,
    build_storage,
    direct_url_for,
    direct_url_origin,
)
from conveyor.storage.base import StoredFileMissing, UploadTooLarge
from conveyor.storage.s3 import MIB, S3Storage
from tests.fakes.s3_server import MotoS3
from tests.support import FULL_COVER, REPO, free_port, make_cover, make_settings

BAD_KEYS = ["../x", "/abs", "a//b", "a/../b", "./x", "a\\b", "", "x/"]
AWS_ENV = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL",
           "AWS_ENDPOINT_URL_S3", "AWS_CA_BUNDLE")


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoS3]:
    with MotoS3() as server:
        yield server


@pytest.fixture
def aws_env(moto: MotoS3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """boto3's standard chain finds the dummy credentials in the environment, and nothing
    from this machine (profiles, files, instance metadata)."""
    for name in AWS_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in moto.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # storages built from a URL cache downloads under the temp dir: keep them in this test's
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()


def new_bucket(moto: MotoS3) -> str:
    name = f"contract-{uuid.uuid4().hex[:12]}"
    moto.create_bucket(name)
    return name


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    moto: MotoS3 = request.getfixturevalue("moto")
    request.getfixturevalue("aws_env")
    return S3Storage(new_bucket(moto), "pre/fix", endpoint_url=moto.endpoint_url,
                     cache_dir=tmp_path / "s3-cache")


def leftovers(storage: Storage, moto: MotoS3 | None = None) -> list[str]:
    """Every object or file the backend holds, temporary ones included."""
    if isinstance(storage, S3Storage):
        assert moto is not None
        client = moto.client()
        listed = client.list_objects_v2(Bucket=storage.bucket).get("Contents", [])
        uploads = client.list_multipart_uploads(Bucket=storage.bucket).get("Uploads", [])
        return [o["Key"] for o in listed] + [u["Key"] for u in uploads]
    assert isinstance(storage, LocalStorage)
    return [str(p.relative_to(storage.root)) for p in storage.root.rglob("*") if p.is_file()]


def test_round_trip_reports_sha256_and_size(storage: Storage, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    stored = storage.put_stream("temp/u1/p1_cover.jpg", io.BytesIO(data), max_bytes=len(data))
    assert (stored.key, stored.size) == ("temp/u1/p1_cover.jpg", len(data))
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert storage.read_bytes("temp/u1/p1_cover.jpg") == data
    assert storage.exists("temp/u1/p1_cover.jpg")

    src = tmp_path / "canonical.jpg"
    src.write_bytes(b"jpeg bytes")
    put = storage.put_file("canonical/u1/p1.jpg", src)
    assert put.size == 10 and put.sha256 == hashlib.sha256(b"jpeg bytes").hexdigest()
    assert storage.read_bytes("canonical/u1/p1.jpg") == b"jpeg bytes"


def test_too_large_is_refused_and_leaves_nothing(storage: Storage,
                                                 request: pytest.FixtureRequest) -> None:
    moto = request.getfixturevalue("moto") if isinstance(storage, S3Storage) else None
    with pytest.raises(UploadTooLarge) as info:
        storage.put_stream("temp/u1/big.bin", io.BytesIO(b"x" * 3 * MIB), max_bytes=MIB)
    assert info.value.code == "upload_too_large"
    assert not storage.exists("temp/u1/big.bin")
    assert leftovers(storage, moto) == []
    # an existing file under the key is kept as it was
    storage.put_stream("temp/u1/big.bin", io.BytesIO(b"old"))
    with pytest.raises(UploadTooLarge):
        storage.put_stream("temp/u1/big.bin", io.BytesIO(b"y" * 100), max_bytes=10)
    assert storage.read_bytes("temp/u1/big.bin") == b"old"


def test_move_is_harmless_to_repeat(storage: Storage) -> None:
    storage.put_stream("temp/u1/a.jpg", io.BytesIO(b"cover"))
    storage.move("temp/u1/a.jpg", "originals/u1/a.jpg")
    assert not storage.exists("temp/u1/a.jpg")
    assert storage.read_bytes("originals/u1/a.jpg") == b"cover"
    storage.move("temp/u1/a.jpg", "originals/u1/a.jpg")  # a repeated job: nothing to do
    assert storage.read_bytes("originals/u1/a.jpg") == b"cover"
    with pytest.raises(PermanentError) as info:
        storage.move("temp/u1/never.jpg", "originals/u1/never.jpg")
    assert info.value.code == "file_missing"


def test_delete_and_exists(storage: Storage) -> None:
    storage.delete("temp/u1/never-there.jpg")  # missing is fine
    storage.put_stream("temp/u1/d.jpg", io.BytesIO(b"d"))
    assert storage.exists("temp/u1/d.jpg")
    storage.delete("temp/u1/d.jpg")
    assert not storage.exists("temp/u1/d.jpg")
    storage.delete("temp/u1/d.jpg")


def test_missing_key_reads_as_file_not_found(storage: Storage) -> None:
    with pytest.raises(FileNotFoundError):
        storage.read_bytes("temp/u1/nothing.jpg")


def test_local_path_has_the_content(storage: Storage) -> None:
    storage.put_stream("canonical/u1/p.jpg", io.BytesIO(b"first"))
    path = storage.local_path("canonical/u1/p.jpg")
    assert path.read_bytes() == b"first"
    assert storage.local_path("canonical/u1/p.jpg") == path
    storage.put_stream("canonical/u1/p.jpg", io.BytesIO(b"second!"))
    assert storage.local_path("canonical/u1/p.jpg").read_bytes() == b"second!"


@pytest.mark.parametrize("key", BAD_KEYS)
def test_path_tricks_are_refused(storage: Storage, key: str) -> None:
    calls = [
        lambda: storage.put_stream(key, io.BytesIO(b"x")),
        lambda: storage.read_bytes(key),
        lambda: storage.local_path(key),
        lambda: storage.move(key, "ok/key"),
        lambda: storage.move("ok/key", key),
        lambda: storage.delete(key),
        lambda: storage.exists(key),
    ]
    for call in calls:
        with pytest.raises(PermanentError) as info:
            call()
        assert info.value.code == "invalid_key"


def test_direct_url_is_presigned_on_s3_and_none_on_disk(storage: Storage) -> None:
    storage.put_stream("canonical/u1/url.jpg", io.BytesIO(b"\xff\xd8jpeg"))
    url = storage.direct_url("canonical/u1/url.jpg", 60)
    if isinstance(storage, LocalStorage):
        assert url is None
        return
    assert url is not None and "X-Amz-Signature=" in url
    answer = httpx.get(url)
    assert answer.status_code == 200 and answer.content == b"\xff\xd8jpeg"
    assert answer.headers["content-type"] == "image/jpeg"
    tampered = url.replace("canonical/u1/url.jpg", "canonical/u1/other.jpg")
    assert httpx.get(tampered).status_code == 403

    short = storage.direct_url("canonical/u1/url.jpg", 1)
    assert short is not None
    time.sleep(2.1)
    expired = httpx.get(short)
    assert expired.status_code == 403 and b"expired" in expired.content


def test_s3_upload_of_a_big_file_goes_in_parts(moto: MotoS3, aws_env: None,
                                               tmp_path: Path) -> None:
    storage = S3Storage(new_bucket(moto), endpoint_url=moto.endpoint_url,
                        cache_dir=tmp_path / "cache",
                        multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB)
    data = os.urandom(11 * MIB)
    stored = storage.put_stream("originals/u1/huge.tif", io.BytesIO(data))
    assert stored.sha256 == hashlib.sha256(data).hexdigest() and stored.size == len(data)
    head = moto.client().head_object(Bucket=storage.bucket, Key="originals/u1/huge.tif")
    assert head["ETag"].strip('"').endswith("-3")  # three parts
    assert head["Metadata"]["sha256"] == stored.sha256
    assert storage.local_path("originals/u1/huge.tif").read_bytes() == data


def test_s3_dead_endpoint_is_a_quick_transient_error(aws_env: None, tmp_path: Path) -> None:
    storage = S3Storage("somewhere", endpoint_url=f"http://127.0.0.1:{free_port()}",
                        cache_dir=tmp_path / "cache")  # production timeouts and retries
    started = time.monotonic()
    with pytest.raises(TransientError) as info:
        storage.put_stream("temp/u1/a.jpg", io.BytesIO(b"a"))
    assert time.monotonic() - started < 8
    assert info.value.code == "storage_unavailable"
    assert "127.0.0.1" in info.value.message and "testing" not in str(info.value)
    with pytest.raises(TransientError):
        storage.exists("temp/u1/a.jpg")  # not "False": the server did not say


def test_s3_throttling_and_5xx_are_transient(moto: MotoS3, aws_env: None,
                                             tmp_path: Path) -> None:
    storage = S3Storage(new_bucket(moto), endpoint_url=moto.endpoint_url,
                        cache_dir=tmp_path / "cache", max_retries=1)
    storage.put_stream("temp/u1/t.jpg", io.BytesIO(b"t"))
    moto.fail_next(2, 503, "SlowDown")
    with pytest.raises(TransientError) as info:
        storage.read_bytes("temp/u1/t.jpg")
    assert "SlowDown" in info.value.message and info.value.code == "storage_unavailable"
    moto.fail_next(1, 500, "InternalError")  # one retry is allowed: this one succeeds
    assert storage.read_bytes("temp/u1/t.jpg") == b"t"


def test_s3_missing_bucket_and_missing_key(moto: MotoS3, aws_env: None,
                                           tmp_path: Path) -> None:
    storage = S3Storage("no-such-bucket-here", endpoint_url=moto.endpoint_url,
                        cache_dir=tmp_path / "cache")
    with pytest.raises(PermanentError) as info:
        storage.put_stream("temp/u1/a.jpg", io.BytesIO(b"a"))
    assert info.value.code == "storage_no_bucket"
    ok = S3Storage(new_bucket(moto), endpoint_url=moto.endpoint_url,
                   cache_dir=tmp_path / "cache")
    with pytest.raises(StoredFileMissing):
        ok.local_path("temp/u1/none.jpg")


def test_s3_without_credentials_says_so(moto: MotoS3, aws_env: None,
                                        monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    storage = S3Storage("whatever", endpoint_url=moto.endpoint_url,
                        cache_dir=tmp_path / "cache")
    with pytest.raises(PermanentError) as info:
        storage.read_bytes("temp/u1/a.jpg")
    assert info.value.code == "storage_no_credentials"
    assert "AWS_ACCESS_KEY_ID" in info.value.message


def test_build_storage_s3_urls(moto: MotoS3, aws_env: None) -> None:
    bucket = new_bucket(moto)
    storage = build_storage(moto.storage_url(bucket, "tenant/a/"))
    assert isinstance(storage, S3Storage)
    assert (storage.bucket, storage.prefix, storage.endpoint_url) == (
        bucket, "tenant/a", moto.endpoint_url)
    storage.put_stream("temp/u/x.jpg", io.BytesIO(b"x"))
    keys = [o["Key"] for o in moto.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["tenant/a/temp/u/x.jpg"]

    plain = build_storage(f"s3://{bucket}?region=eu-west-1&endpoint_url={moto.endpoint_url}")
    assert isinstance(plain, S3Storage) and plain.prefix == ""
    assert plain.read_bytes("tenant/a/temp/u/x.jpg") == b"x"
    assert isinstance(build_storage("s3://my-bucket/p"), S3Storage)  # no network to build


@pytest.mark.parametrize("url, message", [
    ("s3://", "no bucket"),
    ("s3:///just/a/prefix", "no bucket"),
    ("s3://AKIAXXXX:hunter2@bucket/p", "must not hold credentials"),
    ("s3://bucket?aws_secret_access_key=hunter2", "unknown S3 storage URL parameter"),
    ("s3://bucket/a/../b", "invalid S3 prefix"),
    ("s3://bucket/a//b", "invalid S3 prefix"),
    ("s3://b", "invalid S3 bucket name"),
    ("s3://bucket?endpoint_url=ftp://host", "endpoint_url must be"),
    ("s3://bucket?endpoint_url=http://u:hunter2@host", "must not hold credentials"),
    ("s3://bucket?region=", "needs exactly one value"),
    ("s3://bucket?region=a&region=b", "needs exactly one value"),
    ("s3://bucket#frag", "fragment"),
    ("gs://bucket", "unsupported"),
])
def test_build_storage_rejects_malformed_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        build_storage(url)
    assert message in str(info.value)
    assert "hunter2" not in str(info.value)


def test_missing_boto3_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 → ImportError
    with pytest.raises(NotConfigured) as info:
        build_storage("s3://bucket/prefix")
    assert "pip install 'conveyor[scale]'" in str(info.value)


def test_embedded_mode_never_imports_boto3(tmp_path: Path) -> None:
    code = ("import sys; from conveyor.storage import build_storage, direct_url_for; "
            f"s = build_storage('file://{tmp_path}/store'); "
            f"assert direct_url_for('file://{tmp_path}/store', 'a/b', 60) is None; "
            "assert 'boto3' not in sys.modules and 'botocore' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


def test_records_views_hand_out_presigned_urls_on_s3(moto: MotoS3, aws_env: None,
                                                     tmp_path: Path) -> None:
    bucket = new_bucket(moto)
    url = moto.storage_url(bucket, "media")
    settings = Settings(_env_file=None, home=tmp_path / "home",  # type: ignore[call-arg]
                        storage_url=url)
    build_storage(url).put_stream("canonical/u/p.jpg", io.BytesIO(b"img"))
    image_url = _image_url(settings, "canonical/u/p.jpg")
    assert image_url is not None and image_url.startswith(f"{moto.endpoint_url}/{bucket}/media/")
    assert httpx.get(image_url).content == b"img"
    assert direct_url_origin(url) == moto.endpoint_url
    assert not (tmp_path / "home" / "secret.key").exists()  # no HMAC key needed for S3

    local = Settings(_env_file=None, home=tmp_path / "home2")  # type: ignore[call-arg]
    assert direct_url_for(local.resolved_storage_url, "canonical/u/p.jpg", 60) is None
    assert str(_image_url(local, "canonical/u/p.jpg")).startswith("/files/canonical/u/p.jpg?")


def test_records_pipeline_runs_on_s3(moto: MotoS3, aws_env: None, tmp_path: Path) -> None:
    """Upload → canonicalise → OCR → auto-archive (a move) with every file in the bucket;
    the record's image is a presigned URL and pages allow the bucket's origin for images."""
    bucket = new_bucket(moto)
    settings = prepare(make_settings(tmp_path / "home",
                                     storage_url=moto.storage_url(bucket, "conveyor")))
    user, _ = create_user(settings.resolved_database_url, "s3user")
    with open(make_cover(tmp_path / "full.jpg", FULL_COVER), "rb") as fh:
        pid = create_preview(settings, storage_for(settings), owner_id=user.id,
                             filename="full.jpg", stream=fh).preview_id
    run_until_idle(build_runner(settings))

    with read_session(settings.resolved_database_url) as session:
        record = session.scalars(select(ArchiveRecord)
                                 .where(ArchiveRecord.preview_id == pid)).one()
        view = record_view(session, settings, record)
    keys = [o["Key"] for o in moto.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert all(k.startswith("conveyor/") for k in keys) and len(keys) == 2, keys
    assert not any(k.startswith("conveyor/temp/") for k in keys)  # the original was moved
    image = httpx.get(view["image_url"])
    assert image.status_code == 200 and image.content[:2] == b"\xff\xd8"

    with TestClient(create_app(settings), follow_redirects=False) as client:
        csp = client.get("/login").headers["content-security-policy"]
    assert f"img-src 'self' data: {moto.endpoint_url};" in csp
