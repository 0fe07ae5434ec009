"""The records pipeline through the HTTP API of a real `conveyor serve` process, with a
fake OpenAI-compatible server and a fake Discogs server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import STACKS
from tests.fakes.fake_discogs import FakeDiscogs
from tests.fakes.fake_openai import FakeOpenAI
from tests.support import (
    FULL_COVER,
    MIDDLE_COVER,
    LiveServer,
    live_server,
    make_cover,
)

DISCOGS_TOKEN = "discogs-secret-token-123"
LLM_KEY = "sk-test-secret-key-456"
DONE = ("AI_ANALYZED", "ENRICHED", "ARCHIVED", "FAILED", "USER_REVIEWED")


def answer(body: dict[str, Any]) -> dict[str, Any]:
    """The fake vision model: what it 'sees' depends on the OCR hint in the prompt."""
    schema = body["response_format"]["json_schema"]["name"]
    prompt = json.dumps(body["messages"])
    none: dict[str, Any] = {"artist": None, "album": None, "label": None,
                            "catalog_number": None, "year": None, "barcode": None,
                            "genre": [], "confidence": 0.1}
    if schema == "record_cover":
        if "Trash80" in prompt:
            return {**none, "artist": "Trash80", "album": "Icarus", "label": "8bitpeoples",
                    "catalog_number": "8BP086", "year": 2008, "genre": ["Electronic"],
                    "confidence": 0.95}
        if "Obscure" in prompt:
            return {**none, "artist": "Obscure Band", "album": "Lost Tapes", "confidence": 0.9}
        if "Nullsleep" in prompt:
            return {**none, "artist": "Nullsleep", "confidence": 0.3}
        return none
    if "Obscure Band" in prompt:
        return {"label": "Tiny Records", "year": 1999, "genre": ["Rock"], "style": ["Lo-Fi"],
                "country": "UK", "format": ["Cassette"],
                "tracklist": [{"position": "A1", "title": "Intro", "duration": "1:00"}],
                "confidence": 0.7}
    return {"label": None, "year": None, "genre": [], "style": [], "country": None,
            "format": [], "tracklist": [], "confidence": 0.0}


class Stack:
    def __init__(self, server: LiveServer, llm: FakeOpenAI, discogs: FakeDiscogs) -> None:
        self.server, self.llm, self.discogs = server, llm, discogs
        self.alice = server.client("alice")
        self.bob = server.client("bob")

    def upload(self, path: Path, client: httpx.Client | None = None,
               **headers: str) -> str:
        c = client or self.alice
        r = c.post("/api/v1/upap/upload", headers=headers,
                   files={"file": (path.name, path.read_bytes(), "image/jpeg")})
        assert r.status_code == 200, r.text
        assert set(r.json()) == {"preview_id"}
        return str(r.json()["preview_id"])

    def wait(self, pid: str, states: tuple[str, ...] = DONE, timeout: float = 90) -> dict[str, Any]:
        return self.server.wait_for(pid, states, timeout=timeout, user="alice")


@pytest.fixture(scope="module", params=STACKS)
def stack(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp(f"records-api-{request.param}")
    with FakeOpenAI(api_key=LLM_KEY) as llm, FakeDiscogs(token=DISCOGS_TOKEN) as discogs:
        llm.respond_with(answer)
        discogs.add_release(artist="Pink Floyd", title="The Dark Side Of The Moon",
                            catno="SHVL 804", barcode="5099902987620", year=1973,
                            label="Harvest", genre=["Rock"], style=["Prog Rock"],
                            country="UK",
                            tracklist=[{"position": "A1", "title": "Speak To Me",
                                        "duration": "1:13"}])
        env = {"CONVEYOR_LLM_BASE_URL": llm.base_url, "CONVEYOR_LLM_API_KEY": LLM_KEY,
               "CONVEYOR_LLM_MODEL": "gpt-4o-mini", "CONVEYOR_DISCOGS_BASE_URL": discogs.url,
               "CONVEYOR_DISCOGS_TOKEN": DISCOGS_TOKEN,
               "CONVEYOR_MAX_UPLOAD_BYTES": str(2_000_000),
               "CONVEYOR_BREAKER_FAILURES": "100"}
        with live_server(home, workers=2, env=env, stack=request.param) as server:
            server.add_user("alice")
            server.add_user("bob")
            yield Stack(server, llm, discogs)


@pytest.fixture
def covers(tmp_path: Path) -> Path:
    return tmp_path


def steps_of(view: dict[str, Any]) -> list[tuple[str, str]]:
    return [(a["step"], a["outcome"]) for a in view["audit"]]


# -- thresholds and transitions -----------------------------------------------------------

def test_confident_ocr_skips_the_llm_and_archives_itself(stack: Stack, covers: Path) -> None:
    calls = len(stack.llm.requests)
    pid = stack.upload(make_cover(covers / "dsotm.jpg", FULL_COVER))
    view = stack.wait(pid, ("ARCHIVED", "FAILED"))
    assert view["state"] == "ARCHIVED", view
    assert view["confidence"] >= 0.9
    assert view["enrichment_source"] == "discogs"
    assert view["metadata"]["artist"] == "PINK FLOYD"
    assert view["metadata"]["genre"] == ["Rock"]  # from Discogs
    assert view["metadata"]["tracklist"][0]["title"] == "Speak To Me"
    assert view["field_sources"]["genre"] == "discogs"
    steps = [s for s, _ in steps_of(view)]
    assert "LEVEL_3_VISION" not in steps and "REVIEW" not in steps
    assert steps[:3] == ["UPLOAD", "CANONICALIZE", "LEVEL_1_OCR"]
    assert steps[-1] == "ARCHIVE"
    assert len(stack.llm.requests) == calls  # the expensive model was never asked
    record = stack.alice.get(f"/api/v1/upap/records/{view['record_id']}").json()
    assert record["preview_id"] == pid and record["state"] == "ARCHIVED"
    assert view["cost_estimate"] == pytest.approx(0.001)
    searches = stack.discogs.requests_to("/database/search")
    assert any(r.query.get("barcode") == "5099902987620" for r in searches)
    assert all(r.headers.get("user-agent", "").startswith("Conveyor/") for r in searches)


def test_middling_ocr_waits_for_review_without_the_llm(stack: Stack, covers: Path) -> None:
    calls = len(stack.llm.requests)
    pid = stack.upload(make_cover(covers / "middle.jpg", MIDDLE_COVER))
    view = stack.wait(pid)
    assert view["state"] == "AI_ANALYZED"
    assert 0.75 <= view["confidence"] < 0.9
    assert len(stack.llm.requests) == calls
    queue = stack.alice.get("/api/v1/upap/previews", params={"review_queue": "true"}).json()
    ids = [p["preview_id"] for p in queue["previews"]]
    assert pid in ids
    confidences = [p["confidence"] for p in queue["previews"]]
    assert confidences == sorted(confidences)  # least confident first

    # review → USER_REVIEWED → enrichment (Discogs by catalogue number) → ENRICHED
    r = stack.alice.post(f"/api/v1/upap/preview/{pid}/review",
                         json={"album": "The Dark Side Of The Moon"})
    assert r.status_code == 200, r.text
    view = stack.wait(pid, ("ENRICHED",))
    assert view["metadata"]["album"] == "The Dark Side Of The Moon"
    assert view["field_sources"]["album"] == "user"
    assert view["enrichment_source"] == "discogs"
    assert ("REVIEW", "ok") in steps_of(view)

    # the same query again comes from the cache
    pid2 = stack.upload(make_cover(covers / "middle2.jpg", MIDDLE_COVER))
    stack.wait(pid2)
    stack.alice.post(f"/api/v1/upap/preview/{pid2}/review",
                     json={"album": "The Dark Side Of The Moon"})
    view2 = stack.wait(pid2, ("ENRICHED",))
    assert view2["enrichment_source"] == "cache"

    # archive: once, and again gives the same record
    first = stack.alice.post("/api/v1/upap/archive", json={"preview_id": pid})
    assert first.status_code == 200, first.text
    again = stack.alice.post("/api/v1/upap/archive", json={"preview_id": pid})
    assert again.json() == first.json()
    record_id = first.json()["record_id"]
    archived = stack.alice.get(f"/api/v1/upap/preview/{pid}").json()
    assert archived["state"] == "ARCHIVED" and archived["record_id"] == record_id
    listing = stack.alice.get("/api/v1/upap/records").json()
    assert record_id in [r["record_id"] for r in listing["records"]]
    keys = stack.server.stored_keys()
    assert len([k for k in keys if k.startswith("archive/") and k.endswith(f"/{pid}.jpg")]) == 1
    assert not [k for k in keys if k.startswith("temp/") and f"/{pid}_" in k]  # moved
    assert [k for k in keys if k.startswith("archive/")
            and k.endswith(f"/originals/{pid}_middle.jpg")]


def test_low_ocr_escalates_to_the_llm_and_merges(stack: Stack, covers: Path) -> None:
    pid = stack.upload(make_cover(covers / "icarus.jpg", [("Trash80", 64), ("Icarus", 62)]))
    view = stack.wait(pid)
    assert view["state"] == "AI_ANALYZED"
    vision = [a for a in view["audit"] if a["step"] == "LEVEL_3_VISION"]
    assert len(vision) == 1 and vision[0]["model_used"] == "gpt-4o-mini"
    assert vision[0]["cost_estimate"] > 0
    ocr = next(a for a in view["audit"] if a["step"] == "LEVEL_1_OCR")
    assert ocr["confidence"] < 0.75 <= view["confidence"]
    assert view["metadata"]["label"] == "8bitpeoples"
    assert view["field_sources"]["label"] == "llm"
    assert view["field_sources"]["artist"] == "ocr+llm"  # both tiers agreed
    assert view["cost_estimate"] == pytest.approx(0.001 + vision[0]["cost_estimate"])
    request = stack.llm.requests[-1]
    assert request.headers.get("authorization") == f"Bearer {LLM_KEY}"
    content = request.body["messages"][-1]["content"]
    assert any(part.get("type") == "image_url" and
               part["image_url"]["url"].startswith("data:image/jpeg;base64,")
               for part in content)


def test_escalated_but_still_unsure_goes_to_review(stack: Stack, covers: Path) -> None:
    pid = stack.upload(make_cover(covers / "ns.jpg", [("Nullsleep", 64), ("Unknown", 62)]))
    view = stack.wait(pid)
    assert view["state"] == "AI_ANALYZED" and view["confidence"] < 0.75
    assert any(a["step"] == "LEVEL_3_VISION" for a in view["audit"])


def test_enrichment_falls_back_to_ai(stack: Stack, covers: Path) -> None:
    pid = stack.upload(make_cover(covers / "ob.jpg", [("Obscure", 64), ("Tapes", 62)]))
    view = stack.wait(pid)
    assert view["metadata"]["artist"] == "Obscure Band"
    stack.alice.post(f"/api/v1/upap/preview/{pid}/review", json={"album": "Lost Tapes"})
    view = stack.wait(pid, ("ENRICHED",))
    assert view["enrichment_source"] == "ai"
    assert view["metadata"]["label"] == "Tiny Records"
    assert view["field_sources"]["label"] == "ai"
    steps = steps_of(view)
    assert ("ENRICH_CACHE", "miss") in steps and ("ENRICH_DISCOGS", "miss") in steps
    assert ("ENRICH_AI", "ok") in steps


def test_llm_outage_keeps_the_ocr_reading(stack: Stack, covers: Path) -> None:
    stack.llm.fail_next(20, status=503)
    try:
        pid = stack.upload(make_cover(covers / "outage.jpg", [("Trash80", 64), ("Icarus", 62)]))
        view = stack.wait(pid, timeout=120)
    finally:
        stack.llm.reset()
        stack.llm.respond_with(answer)
    assert view["state"] == "AI_ANALYZED"
    assert view["metadata"]["artist"] == "Trash80"  # OCR's reading survives
    assert view["error_code"] == "provider_unavailable"
    assert "vision model failed" in view["error_message"]
    assert LLM_KEY not in json.dumps(view)


# -- errors --------------------------------------------------------------------------------

def test_archive_rules(stack: Stack, covers: Path) -> None:
    assert stack.alice.post("/api/v1/upap/archive",
                            json={"preview_id": "nope"}).status_code == 404
    r = stack.alice.post("/api/v1/upap/archive", json={"preview_id": "x", "extra": 1})
    assert r.status_code == 422

    junk = covers / "junk.jpg"
    junk.write_bytes(b"this is not an image at all" * 10)
    bad = stack.upload(junk)
    early = stack.alice.post("/api/v1/upap/archive", json={"preview_id": bad})
    assert early.status_code == 409 and early.json()["detail"]["code"] == "invalid_state"
    view = stack.wait(bad, ("FAILED",))
    assert view["error_code"] == "image_unsupported" and view["error_message"]
    r = stack.alice.post("/api/v1/upap/archive", json={"preview_id": bad})
    assert r.status_code == 409 and "FAILED" in r.json()["detail"]["message"]
    r = stack.alice.post(f"/api/v1/upap/preview/{bad}/review", json={"artist": "x"})
    assert r.status_code == 409

    blank = make_cover(covers / "blank.jpg", [])
    nameless = stack.upload(blank)
    view = stack.wait(nameless)
    assert view["state"] == "AI_ANALYZED" and not view["metadata"]["artist"]
    r = stack.alice.post("/api/v1/upap/archive", json={"preview_id": nameless})
    assert r.status_code == 422 and r.json()["detail"]["code"] == "missing_required_fields"
    r = stack.alice.post(f"/api/v1/upap/preview/{nameless}/review", json={"colour": "red"})
    assert r.status_code == 422


def test_other_users_get_404_everywhere(stack: Stack, covers: Path) -> None:
    pid = stack.upload(make_cover(covers / "mine.jpg", MIDDLE_COVER))
    stack.wait(pid)
    assert stack.bob.get(f"/api/v1/upap/preview/{pid}").status_code == 404
    assert stack.bob.post(f"/api/v1/upap/preview/{pid}/review",
                          json={"artist": "x"}).status_code == 404
    assert stack.bob.post("/api/v1/upap/archive", json={"preview_id": pid}).status_code == 404
    assert pid not in json.dumps(stack.bob.get("/api/v1/upap/previews").json())
    assert pid not in json.dumps(stack.bob.get("/api/v1/items").json())
    record_id = stack.alice.post("/api/v1/upap/archive", json={"preview_id": pid}).json()[
        "record_id"]
    assert stack.bob.get(f"/api/v1/upap/records/{record_id}").status_code == 404
    assert stack.bob.post("/api/v1/upap/archive", json={"preview_id": pid}).status_code == 404
    assert record_id not in json.dumps(stack.bob.get("/api/v1/upap/records").json())
    # an admin sees everything
    admin = stack.server.client()
    assert admin.get(f"/api/v1/upap/records/{record_id}").status_code == 200


def test_upload_errors(stack: Stack, covers: Path) -> None:
    url = stack.server.url
    assert httpx.post(f"{url}/api/v1/upap/upload",
                      files={"file": ("a.jpg", b"x")}).status_code == 401
    assert httpx.post(f"{url}/api/v1/upap/upload", files={"file": ("a.jpg", b"x")},
                      headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert stack.alice.post("/api/v1/upap/upload").status_code == 422
    r = stack.alice.post("/api/v1/upap/upload", files={"file": ("e.jpg", b"")})
    assert r.status_code == 400 and r.json()["detail"]["code"] == "empty_upload"
    big = stack.alice.post("/api/v1/upap/upload",
                           files={"file": ("big.jpg", b"\xff" * 3_000_000)})
    assert big.status_code == 413
    assert not [k for k in stack.server.stored_keys() if "big" in k]


def test_path_tricks_in_file_names_stay_inside_storage(stack: Stack, covers: Path) -> None:
    data = make_cover(covers / "t.jpg", MIDDLE_COVER).read_bytes()
    r = stack.alice.post("/api/v1/upap/upload",
                         files={"file": ("../../../../etc/cron.d/evil.jpg", data)})
    pid = r.json()["preview_id"]
    stored = [k for k in stack.server.stored_keys() if f"{pid}_" in k]
    assert [k.rsplit("/", 1)[-1] for k in stored] == [f"{pid}_evil.jpg"]
    assert all(".." not in k.split("/") for k in stored)
    assert not Path("/etc/cron.d/evil.jpg").exists()


def test_idempotency_key_gives_one_preview(stack: Stack, covers: Path) -> None:
    path = make_cover(covers / "idem.jpg", MIDDLE_COVER)
    a = stack.upload(path, **{"Idempotency-Key": "upload-42"})
    b = stack.upload(path, **{"Idempotency-Key": "upload-42"})
    c = stack.upload(path, **{"Idempotency-Key": "upload-43"})
    assert a == b != c
    # another user's identical key is their own
    d = stack.upload(path, stack.bob, **{"Idempotency-Key": "upload-42"})
    assert d != a


def test_pipeline_log_is_ndjson_with_the_seed_fields(stack: Stack, covers: Path) -> None:
    pid = stack.upload(make_cover(covers / "log.jpg", MIDDLE_COVER))
    stack.wait(pid)
    log = stack.server.home / "logs" / "pipeline.log"
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    mine = [r for r in rows if r["preview_id"] == pid]
    assert {r["step"] for r in mine} >= {"UPLOAD", "CANONICALIZE", "LEVEL_1_OCR"}
    for row in mine:
        assert {"preview_id", "state", "step", "model_used", "confidence", "cost_estimate",
                "timestamp"} <= set(row)
        assert row["timestamp"].endswith("Z")
    ocr = next(r for r in mine if r["step"] == "LEVEL_1_OCR")
    assert ocr["model_used"].startswith("rapidocr") and ocr["cost_estimate"] == 0.001
    text = log.read_text()
    assert LLM_KEY not in text and DISCOGS_TOKEN not in text


def test_sse_streams_state_changes(stack: Stack, covers: Path) -> None:
    seen: list[dict[str, Any]] = []
    ready = threading.Event()
    uploaded: list[str] = []  # earlier tests' items may still send events: wait for ours

    def listen() -> None:
        with stack.server.client("alice", timeout=60) as c, \
                c.stream("GET", "/api/v1/events") as r:
            ready.set()
            for line in r.iter_lines():
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:]))
                    if any(e["data"].get("state") == "AI_ANALYZED"
                           and e["item_id"] in uploaded for e in seen):
                        return

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    assert ready.wait(10)
    time.sleep(0.3)
    pid = stack.upload(make_cover(covers / "sse.jpg", MIDDLE_COVER))
    uploaded.append(pid)
    t.join(60)
    kinds = [(e["kind"], e["data"].get("state")) for e in seen if e["item_id"] == pid]
    assert ("item.created", "UPLOADED") in kinds, (pid, seen)
    assert ("item.state", "AI_ANALYZED") in kinds
    assert any(k == "job.completed" for k, _ in kinds)


def test_jobs_endpoint_counts_steps(stack: Stack) -> None:
    summary = stack.server.client().get("/api/v1/jobs").json()
    steps = {row["step"]: row for row in summary["counts"]}
    assert steps["records.ocr"]["completed"] >= 1
    assert any(f["step"] == "records.canonicalize" for f in summary["failures"])


def test_empty_idempotency_key_is_no_key(stack: Stack, covers: Path) -> None:
    path = make_cover(covers / "nokey.jpg", MIDDLE_COVER)
    a = stack.upload(path, **{"Idempotency-Key": ""})
    b = stack.upload(path, **{"Idempotency-Key": ""})
    assert a != b


def test_oversized_chunked_upload_is_413(stack: Stack) -> None:
    boundary = "conveyor-test-boundary"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="huge.jpg"\r\nContent-Type: image/jpeg\r\n\r\n').encode()

    def body() -> Iterator[bytes]:
        yield head
        for _ in range(30):
            yield b"\xff" * 100_000
        yield f"\r\n--{boundary}--\r\n".encode()

    r = stack.alice.post("/api/v1/upap/upload", content=body(),
                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413 and r.json()["detail"]["code"] == "upload_too_large"
