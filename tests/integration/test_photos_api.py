"""The photos API (seed 002) of a real `conveyor serve` process and its workers, with the
real local provider, on each stack: upload, poll until analysed, list and page, scopes,
admin processing, and the errors of bad uploads."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import STACKS
from tests.support import CORPUS, LiveServer, live_server

BEETS = CORPUS / "images" / "beets"
PILLOW = CORPUS / "images" / "pillow"
MAX_UPLOAD_BYTES = 1_000_000
FINAL = ("completed", "failed")
VIEW_KEYS = {"id", "original_filename", "content_type", "size_bytes", "width", "height",
             "created_at", "ai_processing_status", "ai_results", "ai_error_message",
             "ai_provider_used", "image_url"}


@pytest.fixture(scope="module", params=STACKS)
def server(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server per stack: embedded (SQLite, local files, local workers) and scaled
    (PostgreSQL, S3, a Celery worker)."""
    home = tmp_path_factory.mktemp(f"photos-api-{request.param}")
    env = {"CONVEYOR_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES)}
    with live_server(home, workers=1, env=env, stack=request.param) as srv:
        srv.add_user("alice")
        srv.add_user("bob")
        yield srv


def post_photo(client: httpx.Client, path: Path, *, base: str = "/photos",
               name: str | None = None, **headers: str) -> httpx.Response:
    return client.post(base, headers=headers,
                       files={"file": (name or path.name, path.read_bytes(), "image/jpeg")})


def wait_final(client: httpx.Client, url: str, timeout: float = 90.0) -> dict[str, Any]:
    """Poll the photo until its analysis ends (what a client of seed 002 does)."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = client.get(url)
        assert r.status_code == 200, r.text
        last = r.json()
        if last["ai_processing_status"] in FINAL:
            return last
        time.sleep(0.2)
    raise AssertionError(f"{url} did not finish; last: {last}")


def test_upload_answers_201_and_polling_sees_it_completed(server: LiveServer) -> None:
    with server.client("alice") as alice:
        r = post_photo(alice, BEETS / "abbey.jpg")
        assert r.status_code == 201, r.text
        body = r.json()
        assert set(body) == {"id", "ai_processing_status"}
        assert body["ai_processing_status"] == "pending"
        assert r.headers["location"] == f"/photos/{body['id']}"

        done = wait_final(alice, r.headers["location"])
        assert set(done) >= VIEW_KEYS
        assert done["id"] == body["id"] and done["ai_processing_status"] == "completed"
        assert (done["width"], done["height"]) == (225, 225)
        assert done["original_filename"] == "abbey.jpg" and done["content_type"] == "image/jpeg"
        assert done["size_bytes"] == (BEETS / "abbey.jpg").stat().st_size
        assert done["ai_provider_used"] == "local" and done["ai_error_message"] is None
        assert {"dimensions", "colors", "hashes", "quality", "text", "exif",
                "near_duplicates"} <= set(done["ai_results"])

        # the signed link is the credential: it works without a token, and only unaltered
        image = httpx.get(server.url + done["image_url"], timeout=10)
        assert image.status_code == 200 and image.content[:2] == b"\xff\xd8"
        forged = done["image_url"].replace("sig=", "sig=0")
        assert httpx.get(server.url + forged, timeout=10).status_code == 403

        # the same photo under /api/v1, with its audit trail on request
        v1 = alice.get(f"/api/v1/photos/{body['id']}", params={"audit": "true"}).json()
        assert v1["ai_results"] == done["ai_results"]
        assert [a["step"] for a in v1["audit"]] == ["UPLOAD", "DECODE", "AI_PROCESS"]


def test_listing_pages_newest_first_and_filters_by_status(server: LiveServer) -> None:
    with server.client("bob") as bob:
        ids = []
        for path, name in ((BEETS / "abbey-similar.jpg", "one.jpg"),
                           (BEETS / "abbey-different.jpg", "two.jpg"),
                           (PILLOW / "broken_data_stream.png", "three.png")):
            r = post_photo(bob, path, base="/api/v1/photos", name=name)
            assert r.status_code == 201, r.text
            assert r.headers["location"] == f"/api/v1/photos/{r.json()['id']}"
            ids.append(r.json()["id"])
        for pid in ids:
            wait_final(bob, f"/photos/{pid}")

        first = bob.get("/photos", params={"limit": 2}).json()
        assert first["total"] == 3 and first["next_offset"] == 2
        assert [p["id"] for p in first["photos"]] == ids[::-1][:2]  # newest first
        rest = bob.get("/photos", params={"limit": 2, "offset": 2}).json()
        assert [p["id"] for p in rest["photos"]] == [ids[0]] and rest["next_offset"] is None

        failed = bob.get("/photos", params={"status": "failed"}).json()
        assert [p["id"] for p in failed["photos"]] == [ids[2]]
        bad = failed["photos"][0]
        assert bad["ai_error_message"] and "three.png" in bad["ai_error_message"]
        assert str(server.home) not in bad["ai_error_message"]
        assert bad["ai_results"] is None
        completed = bob.get("/photos", params={"status": "completed"}).json()
        assert {p["id"] for p in completed["photos"]} == set(ids[:2])

        r = bob.get("/photos", params={"status": "done"})
        assert r.status_code == 422 and r.json()["detail"]["code"] == "invalid_status"
        assert bob.get("/photos", params={"limit": 0}).status_code == 422


def test_someone_elses_photo_is_not_found(server: LiveServer) -> None:
    with server.client("alice") as alice, server.client("bob") as bob, \
            server.client() as admin:
        pid = post_photo(alice, BEETS / "abbey.jpg", name="private.jpg").json()["id"]
        r = bob.get(f"/photos/{pid}")
        assert r.status_code == 404
        assert r.json()["detail"] == {"code": "photo_not_found", "message": "no such photo"}
        assert bob.get(f"/api/v1/photos/{pid}").status_code == 404
        assert pid not in {p["id"] for p in bob.get("/photos").json()["photos"]}
        assert alice.get(f"/photos/{pid}").status_code == 200
        assert admin.get(f"/photos/{pid}").status_code == 200  # an admin sees everything
        assert bob.get("/photos/no-such-id").status_code == 404
        assert httpx.get(f"{server.url}/photos/{pid}").status_code == 401


def test_processing_is_for_admins_and_answers_counts(server: LiveServer) -> None:
    with server.client("alice") as alice, server.client() as admin:
        pid = post_photo(alice, BEETS / "abbey-different.jpg").json()["id"]
        wait_final(alice, f"/photos/{pid}")
        r = alice.post("/photos/process", json={"mode": "missing"})
        assert r.status_code == 403 and r.json()["detail"]["code"] == "forbidden"

        assert admin.post("/photos/process", json={"mode": "sometimes"}).status_code == 422
        assert admin.post("/photos/process", json={}).status_code == 422
        r = admin.post("/photos/process", json={"mode": "all", "user": "nobody"})
        assert r.status_code == 404 and r.json()["detail"]["code"] == "user_not_found"

        mine = alice.get("/photos", params={"limit": 200}).json()["photos"]
        r = admin.post("/api/v1/photos/process", json={"mode": "missing", "user": "alice"})
        assert r.status_code == 200, r.text
        counts = r.json()
        assert counts["mode"] == "missing" and counts["provider"] == "local"
        done = sum(1 for p in mine if p["ai_processing_status"] == "completed")
        assert counts["total"] == len(mine) and counts["up_to_date"] == done

        before = alice.get(f"/photos/{pid}").json()["processed_at"]
        r = admin.post("/photos/process", json={"mode": "all", "user": "alice"})
        assert r.status_code == 200 and r.json()["queued"] + r.json()["already_queued"] == len(
            mine)
        deadline = time.monotonic() + 90
        while True:
            again = alice.get(f"/photos/{pid}").json()
            if again["ai_processing_status"] == "completed" and again["processed_at"] != before:
                break
            assert time.monotonic() < deadline, again
            time.sleep(0.2)


def test_bad_uploads_get_clear_errors(server: LiveServer, tmp_path: Path) -> None:
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8\xff" + bytes(MAX_UPLOAD_BYTES + 100_000))
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with server.client("alice") as alice:
        r = post_photo(alice, big)
        assert r.status_code == 413 and r.json()["detail"]["code"] == "upload_too_large"
        r = post_photo(alice, empty)
        assert r.status_code == 400
        assert r.json()["detail"] == {"code": "empty_upload",
                                      "message": "the uploaded file is empty"}
        assert alice.post("/photos", data={"x": "1"}).status_code == 422  # no file field
        before = alice.get("/photos").json()["total"]
        # a file that is not an image is accepted, then fails in processing with a reason
        r = alice.post("/photos", files={"file": ("notes.txt", b"hello", "text/plain")})
        assert r.status_code == 201
        failed = wait_final(alice, r.headers["location"])
        assert failed["ai_processing_status"] == "failed"
        assert failed["content_type"] == "text/plain"
        assert "not an image" in failed["ai_error_message"]
        assert alice.get("/photos").json()["total"] == before + 1  # refused ones left nothing
    assert httpx.post(f"{server.url}/photos",
                      files={"file": ("a.jpg", b"x", "image/jpeg")}).status_code == 401


def test_a_repeated_idempotency_key_returns_the_first_photo(server: LiveServer) -> None:
    with server.client("alice") as alice:
        first = post_photo(alice, BEETS / "abbey.jpg", **{"Idempotency-Key": "photo-42"})
        again = post_photo(alice, BEETS / "abbey.jpg", **{"Idempotency-Key": "photo-42"})
        assert first.status_code == 201 and again.status_code == 200
        assert again.json()["id"] == first.json()["id"]
        assert again.headers["location"] == first.headers["location"]
