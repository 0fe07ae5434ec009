"""The product as an operator sees it: kill -9 a worker, hammer one idempotency key, feed
every hostile image in the corpus. A real `conveyor serve` with local worker processes."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image
from sqlalchemy import func, select

from conveyor.db.models import Item, Job
from conveyor.db.session import dispose_all, read_session
from conveyor.media.image import ERROR_CODES
from conveyor.pipelines.records.models import ArchiveRecord
from tests.support import CORPUS, FULL_COVER, in_ci, live_server, make_cover

pytestmark = pytest.mark.slow


def db_url(home: Path) -> str:
    return f"sqlite:///{home / 'conveyor.db'}"


def job_status(home: Path, item_id: str, step: str) -> tuple[str, int] | None:
    with read_session(db_url(home)) as session:
        row = session.execute(select(Job.status, Job.attempts)
                              .where(Job.item_id == item_id, Job.step == step)).first()
    return (row[0], row[1]) if row else None


def test_kill_9_during_ocr_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"CONVEYOR_LEASE_SECONDS": "3", "CONVEYOR_HEARTBEAT_SECONDS": "1"}
    with live_server(home, workers=1, env=env) as server:
        # a big, text-heavy cover keeps OCR busy long enough to be caught in the act
        lines = [*FULL_COVER, *[(f"Side A track {i} lorem ipsum dolor", 26) for i in range(20)]]
        cover = make_cover(tmp_path / "big.jpg", lines, size=2200)
        with server.client() as c:
            pid = c.post("/api/v1/upap/upload",
                         files={"file": ("big.jpg", cover.read_bytes())}).json()["preview_id"]
        deadline = time.monotonic() + 60
        while job_status(home, pid, "ocr") != ("running", 1):
            assert time.monotonic() < deadline, "OCR never started"
            time.sleep(0.02)
        victims = server.worker_pids()
        assert len(victims) == 1
        os.kill(victims[0], signal.SIGKILL)

        view = server.wait_for(pid, ("ARCHIVED", "FAILED"), timeout=120)
        assert view["state"] == "ARCHIVED", view
        status = job_status(home, pid, "ocr")
        assert status == ("completed", 2)  # reclaimed after the lease, run once more
        ocr_rows = [a for a in view["audit"] if a["step"] == "LEVEL_1_OCR"]
        assert len(ocr_rows) == 1  # the killed attempt left no half-written result
        with read_session(db_url(home)) as session:
            n = session.scalar(select(func.count()).select_from(ArchiveRecord)
                               .where(ArchiveRecord.preview_id == pid))
        assert n == 1
        new_workers = server.worker_pids()
        assert new_workers and victims[0] not in new_workers  # the supervisor replaced it
    dispose_all()


def test_200_concurrent_uploads_with_one_key_make_one_preview(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with live_server(home, workers=1) as server:
        data = make_cover(tmp_path / "c.jpg", FULL_COVER).read_bytes()
        headers = {"Authorization": f"Bearer {server.admin_token}",
                   "Idempotency-Key": "double-click-storm"}

        def post(_: int) -> httpx.Response:
            with httpx.Client(base_url=server.url, timeout=60) as c:
                return c.post("/api/v1/upap/upload", headers=headers,
                              files={"file": ("c.jpg", data)})

        with ThreadPoolExecutor(max_workers=50) as pool:
            responses = list(pool.map(post, range(200)))
        assert [r.status_code for r in responses] == [200] * 200
        ids = {r.json()["preview_id"] for r in responses}
        assert len(ids) == 1
        with read_session(db_url(home)) as session:
            items = session.scalar(select(func.count()).select_from(Item))
        assert items == 1
        # the losers' files were not left behind: one original, in temp/ or (if the cover
        # was archived meanwhile) in archive/…/originals/
        stored = [p for p in (home / "storage").rglob("*")
                  if p.is_file() and not p.name.endswith(".jpg.part") and "_" in p.name]
        assert [p.name for p in stored] == [f"{ids.pop()}_c.jpg"]
    dispose_all()


def corpus_images() -> list[Path]:
    root = CORPUS / "images"
    if not root.is_dir():
        if in_ci():
            pytest.fail(f"the test corpus is missing at {root}")
        pytest.skip(f"no test corpus at {root}")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != "MANIFEST.tsv")


@pytest.mark.timeout(1500)
def test_every_corpus_image_ends_as_a_jpeg_or_a_clean_error(tmp_path: Path) -> None:
    files = corpus_images()
    home = tmp_path / "home"
    with live_server(home, workers=2) as server:
        pids_before = sorted(server.worker_pids())
        ids: dict[str, Path] = {}
        with server.client() as c:
            for path in files:
                r = c.post("/api/v1/upap/upload", files={"file": (path.name, path.read_bytes())})
                assert r.status_code == 200, (path, r.text)
                ids[r.json()["preview_id"]] = path
        deadline = time.monotonic() + 1400
        while True:
            with read_session(db_url(home)) as session:
                busy = session.scalar(select(func.count()).select_from(Item)
                                      .where(Item.state == "UPLOADED"))
            if not busy:
                break
            assert time.monotonic() < deadline, f"{busy} items still processing"
            time.sleep(1)

        with read_session(db_url(home)) as session:
            items = {i.id: i for i in session.scalars(select(Item))}
        failed = ok = 0
        for pid, path in ids.items():
            item = items[pid]
            if item.state == "FAILED":
                failed += 1
                assert item.error_code in ERROR_CODES, (path.name, item.error_code)
                assert item.error_message, path.name
                continue
            ok += 1
            assert item.state in ("AI_ANALYZED", "ENRICHED", "ARCHIVED"), (path.name, item.state)
            jpeg = next((home / "storage" / "archive").rglob(f"{pid}.jpg"))
            with Image.open(jpeg) as im:
                assert im.format == "JPEG" and im.mode == "RGB" and min(im.size) >= 1
        assert ok >= 300 and failed >= 100  # the corpus has plenty of both
        # the workers survived every hostile file, and the server still works
        assert sorted(server.worker_pids()) == pids_before
        assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    dispose_all()
