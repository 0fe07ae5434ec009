"""A 100-photo batch on the scaled-out stack: `conveyor serve --executor celery` plus two
separate `conveyor worker --executor celery` processes over Redis, PostgreSQL and S3. Every
photo must end `completed`, analysed and committed exactly once, with both workers taking
part."""

from __future__ import annotations

import io
import random
import re
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image, ImageDraw
from sqlalchemy import create_engine, select

from conveyor.db.models import Event, Job
from conveyor.pipelines.photos.models import Photo, PhotoResult
from tests.support import live_server

pytestmark = pytest.mark.slow

PHOTOS = 100


def photo_bytes(seed: int) -> bytes:
    """A distinct small photo: a gradient and a few shapes placed by ``seed``."""
    rng = random.Random(seed)
    img = Image.new("RGB", (320, 240), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x, y = rng.randrange(280), rng.randrange(200)
        draw.rectangle((x, y, x + rng.randrange(20, 120), y + rng.randrange(20, 90)),
                       fill=tuple(rng.randrange(256) for _ in range(3)))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=85)
    return out.getvalue()


def test_100_photos_across_two_celery_workers_complete_exactly_once(tmp_path: Path) -> None:
    with live_server(tmp_path / "home", workers=1, stack="scaled", celery_workers=2) as server, \
            server.client("admin", timeout=60) as admin:
        ids = []
        for n in range(PHOTOS):
            r = admin.post("/photos", files={"file": (f"p{n}.jpg", photo_bytes(n),
                                                      "image/jpeg")})
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            page = admin.get("/photos", params={"status": "completed", "limit": 1}).json()
            if page["total"] == PHOTOS:
                break
            failed = admin.get("/photos", params={"status": "failed"}).json()
            assert failed["total"] == 0, failed["photos"][0]["ai_error_message"]
            time.sleep(0.5)
        else:
            raise AssertionError(f"only {page['total']} of {PHOTOS} photos completed")

        assert server.env is not None
        engine = create_engine(server.env["CONVEYOR_DATABASE_URL"])
        try:
            with engine.connect() as conn:
                items = dict(conn.execute(select(Photo.id, Photo.item_id)).all())
                statuses = Counter(conn.scalars(select(Photo.ai_processing_status)).all())
                n_results = len(conn.scalars(select(PhotoResult.content_sha256)).all())
                jobs = conn.execute(select(Job.item_id, Job.status)
                                    .where(Job.pipeline == "photos")).all()
                completions = Counter(
                    e.item_id for e in conn.execute(select(Event.item_id, Event.data)
                                                    .where(Event.kind == "item.state"))
                    if (e.data or {}).get("state") == "completed")
        finally:
            engine.dispose()
        assert sorted(items) == sorted(ids) and statuses == {"completed": PHOTOS}
        assert n_results == PHOTOS  # one analysis per content
        # one analyse job per photo, completed; each photo's completion committed once
        assert Counter(item for item, _ in jobs) == Counter(items.values())
        assert {status for _, status in jobs} == {"completed"}
        assert completions == Counter({item: 1 for item in items.values()})

        # both worker processes took part
        done_by = [len(re.findall(r"Task conveyor\.run_job\[.*\] succeeded",
                                  log.read_text(errors="replace")))
                   for log in sorted(server.home.glob("worker*.log"))]
        assert len(done_by) == 2 and all(n > 0 for n in done_by), done_by
        assert sum(done_by) >= PHOTOS
