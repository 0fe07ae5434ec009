"""The web UI's server side, in process: login, redirects, escaping, pages and their data."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from conveyor.accounts import create_user
from conveyor.api.app import create_app
from conveyor.config import Settings
from conveyor.db.session import transaction
from conveyor.pipelines.records import service
from conveyor.pipelines.records.models import PreviewRecord
from conveyor.pipelines.records.service import set_state
from conveyor.pipelines.records.states import AI_ANALYZED
from conveyor.runtime import storage_for

HOSTILE = "<script>alert(1)</script>"
PAGES = ("/", "/review", "/records", "/jobs", "/records/nope", "/previews/nope")


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), follow_redirects=False) as c:
        yield c


def login(client: TestClient, token: str) -> None:
    r = client.post("/login", data={"token": token, "next": "/"})
    assert r.status_code == 303, r.text
    assert r.headers["location"] == "/"


def analysed_preview(settings: Settings, owner_id: str, **fields: object) -> str:
    """A preview as the OCR step would leave it, without running OCR."""
    upload = service.create_preview(settings, storage_for(settings), owner_id=owner_id,
                                    filename="cover.jpg", stream=io.BytesIO(b"not decoded"))
    with transaction(settings.resolved_database_url) as session:
        preview = session.get(PreviewRecord, upload.preview_id)
        assert preview is not None
        for key, value in fields.items():
            setattr(preview, key, value)
        preview.field_sources = {k: "ocr" for k in fields}
        preview.ai_metadata = {"fields": {k: {"value": v, "confidence": 0.8, "source": "ocr"}
                                          for k, v in fields.items()}}
        preview.confidence = 0.81
        set_state(session, preview, AI_ANALYZED)
    return upload.preview_id


@pytest.mark.parametrize("path", PAGES)
def test_pages_need_a_login(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 303
    assert r.headers["location"].startswith("/login")


def test_login_rejects_a_bad_token_and_never_echoes_it(client: TestClient) -> None:
    r = client.post("/login", data={"token": "cvy_wrong-secret-value", "next": "/jobs"})
    assert r.status_code == 401
    assert "not valid" in r.text
    assert "cvy_wrong-secret-value" not in r.text
    assert "conveyor_token" not in r.headers.get("set-cookie", "")
    r = client.post("/login", data={"token": "  "})
    assert r.status_code == 401 and "Paste an API token" in r.text


def test_login_sets_a_safe_cookie_and_logout_clears_it(settings: Settings,
                                                       client: TestClient) -> None:
    _, token = create_user(settings.resolved_database_url, "alice")
    r = client.post("/login", data={"token": token, "next": "//evil.example/x"})
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"].lower()
    assert "conveyor_token=" in cookie and "httponly" in cookie and "samesite=lax" in cookie
    page = client.get("/")
    assert page.status_code == 200
    assert token not in page.text
    assert "alice" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    r = client.post("/logout")
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert client.get("/").status_code == 303


def test_login_from_another_site_is_refused(settings: Settings, client: TestClient) -> None:
    _, token = create_user(settings.resolved_database_url, "mallory-victim")
    r = client.post("/login", data={"token": token}, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    assert "conveyor_token" not in r.headers.get("set-cookie", "")
    r = client.post("/login", data={"token": token}, headers={"Origin": "http://testserver"})
    assert r.status_code == 303


def test_login_redirects_back_to_the_page_asked_for(settings: Settings,
                                                    client: TestClient) -> None:
    _, token = create_user(settings.resolved_database_url, "bob")
    r = client.get("/jobs")
    assert r.headers["location"] == "/login?next=%2Fjobs"
    form = client.get(r.headers["location"])
    assert 'name="next" value="/jobs"' in form.text
    r = client.post("/login", data={"token": token, "next": "/jobs"})
    assert r.headers["location"] == "/jobs"


def test_names_are_escaped(settings: Settings, client: TestClient) -> None:
    user, token = create_user(settings.resolved_database_url, HOSTILE)
    analysed_preview(settings, user.id, artist=HOSTILE, album="Fine")
    login(client, token)
    for path in ("/", "/review"):
        text = client.get(path).text
        assert HOSTILE not in text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_item_page_shows_fields_sources_and_the_shortcut(settings: Settings,
                                                         client: TestClient) -> None:
    user, token = create_user(settings.resolved_database_url, "carol")
    preview_id = analysed_preview(settings, user.id, artist="Pink Floyd", album="Animals")
    login(client, token)
    r = client.get(f"/previews/{preview_id}?queue=1")
    assert r.status_code == 200
    text = r.text
    assert 'data-field="artist"' in text and "Pink Floyd" in text
    assert 'data-source="ocr"' in text and "80%" in text  # field source and confidence
    assert "AI_ANALYZED" in text and "81%" in text
    assert 'id="review-form"' in text and "Ctrl" in text and 'data-queue="1"' in text
    assert "UPLOAD" in text  # the audit trail
    queue = client.get("/review").text
    assert f"/previews/{preview_id}?queue=1" in queue
    index = client.get("/").text
    assert f'data-item-id="{preview_id}"' in index


def test_other_users_items_are_not_found(settings: Settings, client: TestClient) -> None:
    owner, _ = create_user(settings.resolved_database_url, "dave")
    _, token = create_user(settings.resolved_database_url, "eve")
    preview_id = analysed_preview(settings, owner.id, artist="Secret", album="Stuff")
    login(client, token)
    assert client.get(f"/previews/{preview_id}").status_code == 404
    assert "Secret" not in client.get("/review").text
    assert client.get("/records/unknown").status_code == 404


def test_jobs_and_records_pages_render(settings: Settings, client: TestClient) -> None:
    user, token = create_user(settings.resolved_database_url, "frank", admin=True)
    analysed_preview(settings, user.id, artist="A", album="B")
    login(client, token)
    jobs = client.get("/jobs")
    assert jobs.status_code == 200
    assert "records.canonicalize" in jobs.text and 'http-equiv="refresh"' in jobs.text
    records = client.get("/records", params={"q": "<x>"})
    assert records.status_code == 200 and "&lt;x&gt;" in records.text
