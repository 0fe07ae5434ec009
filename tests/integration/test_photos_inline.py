"""The photos pipeline (seed 002) in one process with the inline executor, on every stack.

The provider is the real local one (dimensions, EXIF, colours, hashes, quality, OCR); a
subclass counts its calls (or fails on purpose) and is put in place through the factory,
as ``CONVEYOR_AI_PROVIDER`` would. Photos are real ones from the shared corpus (beets'
album-art fixtures: ``abbey.jpg``, a similar and a different variant) plus copies made here.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import func, select

from conveyor.accounts import create_user
from conveyor.config import Settings
from conveyor.db.models import AuditEvent, Event, Item, Job
from conveyor.db.session import read_session
from conveyor.engine.executors.inline import run_until_idle
from conveyor.errors import TransientError
from conveyor.pipelines.photos import service
from conveyor.pipelines.photos.models import Photo, PhotoResult
from conveyor.pipelines.photos.views import photo_view
from conveyor.providers.base import CallGuard
from conveyor.providers.ocr.base import OcrEngine
from conveyor.providers.ocr.rapid import build_ocr
from conveyor.providers.vision import factory
from conveyor.providers.vision.base import AIProviderBase, PhotoInput, ProviderResult
from conveyor.providers.vision.local import LocalProvider
from conveyor.runtime import build_runner, storage_for
from conveyor.storage.base import UploadTooLarge
from tests.support import CORPUS

BEETS = CORPUS / "images" / "beets"
PILLOW = CORPUS / "images" / "pillow"
RESULT_KEYS = {"dimensions", "format", "exif", "colors", "hashes", "quality", "text",
               "near_duplicates"}


class Counting(LocalProvider):
    """The local provider, counting calls; ``fail_first`` calls raise a transient error."""

    def __init__(self, ocr: OcrEngine, *, fail_first: int = 0, version: str = "1") -> None:
        super().__init__(ocr=ocr)
        self.version = version
        self.calls = 0
        self.fail_first = fail_first
        self._count_lock = threading.Lock()

    def process_image(self, image: PhotoInput) -> ProviderResult:
        with self._count_lock:
            self.calls += 1
            failing = self.calls <= self.fail_first
        if failing:
            raise TransientError("the vision service timed out after 30 s",
                                 code="provider_timeout")
        return super().process_image(image)


@pytest.fixture(scope="module")
def ocr() -> OcrEngine:
    """One OCR model for the module (it takes a second or two to load)."""
    return build_ocr("rapidocr")


@pytest.fixture
def use_provider(monkeypatch: pytest.MonkeyPatch,
                 ocr: OcrEngine) -> Callable[..., Counting]:
    """Make the factory hand out one :class:`Counting` provider (what the runner builds)."""

    def install(**kw: Any) -> Counting:
        provider = Counting(ocr, **kw)

        def build(settings: Settings, guard: CallGuard) -> AIProviderBase:
            return provider

        monkeypatch.setattr(factory, "build_ai_provider", build)
        return provider

    return install


@pytest.fixture
def provider(use_provider: Callable[..., Counting]) -> Counting:
    return use_provider()


@pytest.fixture
def owner(settings: Settings) -> str:
    user, _ = create_user(settings.resolved_database_url, "photographer")
    return user.id


def upload(settings: Settings, owner_id: str, path: Path, *, name: str | None = None,
           key: str | None = None) -> str:
    with open(path, "rb") as fh:
        return service.create_photo(settings, storage_for(settings), owner_id=owner_id,
                                    filename=name or path.name, stream=fh,
                                    content_type="image/jpeg", idempotency_key=key).photo_id


def run(settings: Settings, wait_s: float = 0.0) -> int:
    return run_until_idle(build_runner(settings), wait_for_delayed_s=wait_s)


def photo(settings: Settings, pid: str) -> dict[str, Any]:
    with read_session(settings.resolved_database_url) as session:
        row = session.get(Photo, pid)
        assert row is not None
        return photo_view(settings, row, session=session, with_audit=True)


def count(settings: Settings, model: type[Any]) -> int:
    with read_session(settings.resolved_database_url) as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def with_exif(src: Path, dst: Path) -> Path:
    """``src`` re-saved with a camera, a date and a GPS position in its EXIF."""
    im = Image.open(src)
    exif = Image.Exif()
    exif[0x010F] = "Conveyor Cameras"  # Make
    exif[0x0110] = "Model T\x00\x00"  # Model, NUL-padded as cameras write it
    exif[0x0132] = "2024:05:01 14:03:22"  # DateTime
    exif.get_ifd(0x8825).update({1: "N", 2: (48.0, 51.0, 29.0), 3: "E", 4: (2.0, 17.0, 40.0)})
    im.save(dst, "JPEG", quality=92, exif=exif)
    return dst


def resized(src: Path, dst: Path, scale: float = 0.6) -> Path:
    im = Image.open(src).convert("RGB")
    im.resize((int(im.width * scale), int(im.height * scale)), Image.Resampling.LANCZOS).save(
        dst, "JPEG", quality=70)
    return dst


# --- the happy path --------------------------------------------------------------------------

def test_an_upload_is_queued_then_analysed_with_every_result(
        settings: Settings, owner: str, provider: Counting, tmp_path: Path) -> None:
    path = with_exif(BEETS / "abbey.jpg", tmp_path / "abbey-exif.jpg")
    pid = upload(settings, owner, path)

    # the upload stored the file and queued the job; no provider was called
    queued = photo(settings, pid)
    assert queued["ai_processing_status"] == "pending" and queued["ai_results"] is None
    assert queued["size_bytes"] == path.stat().st_size and queued["content_type"] == "image/jpeg"
    assert provider.calls == 0
    with read_session(settings.resolved_database_url) as session:
        jobs = session.scalars(select(Job).where(Job.item_id == pid)).all()
        assert [(j.pipeline, j.step, j.status) for j in jobs] == [
            ("photos", "analyse", "pending")]
        item = session.get(Item, pid)
        assert item is not None and item.pipeline == "photos" and item.state == "pending"

    assert run(settings) == 1
    done = photo(settings, pid)
    assert done["ai_processing_status"] == "completed", done
    assert provider.calls == 1
    results = done["ai_results"]
    assert set(results) >= RESULT_KEYS
    assert results["dimensions"] == {"width": 225, "height": 225, "megapixels": 0.05,
                                     "orientation": "square"}
    assert (done["width"], done["height"]) == (225, 225)
    assert results["format"] == "JPEG"
    assert results["exif"]["camera_make"] == "Conveyor Cameras"
    assert results["exif"]["camera_model"] == "Model T"  # NULs gone (JSONB refuses them)
    assert results["exif"]["taken_at"] == "2024-05-01T14:03:22"
    assert results["exif"]["gps"]["lat"] == pytest.approx(48.858, abs=1e-3)
    assert 1 <= len(results["colors"]) <= 5
    assert all(c["hex"].startswith("#") and len(c["hex"]) == 7 for c in results["colors"])
    assert set(results["hashes"]) == {"ahash", "dhash", "phash"}
    assert set(results["quality"]) == {"sharpness", "exposure"}
    assert set(results["text"]) == {"text", "lines", "model"}
    assert results["near_duplicates"] == []
    assert done["ai_provider_used"] == "local" and done["ai_provider_version"] == "1"
    assert done["processed_at"] and done["ai_error_message"] is None

    # derived files: the canonical JPEG and a thumbnail, both signed for the browser
    storage = storage_for(settings)
    with read_session(settings.resolved_database_url) as session:
        row = session.get(Photo, pid)
        assert row is not None and row.canonical_key and row.thumbnail_key
        assert row.phash == results["hashes"]["phash"]
        assert storage.read_bytes(row.canonical_key)[:2] == b"\xff\xd8"
        thumb = Image.open(io.BytesIO(storage.read_bytes(row.thumbnail_key)))
        assert max(thumb.size) <= 480
        # each step attempt is audited with its model and duration; SSE saw every status
        audit = session.scalars(select(AuditEvent).where(AuditEvent.item_id == pid)
                                .order_by(AuditEvent.id)).all()
        states = [e.data.get("state") for e in session.scalars(
            select(Event).where(Event.item_id == pid, Event.kind == "item.state")
            .order_by(Event.id))]
    assert done["image_url"].startswith(f"/files/{row.canonical_key}?exp=")
    assert done["thumbnail_url"].startswith(f"/files/{row.thumbnail_key}?exp=")
    assert [a.step for a in audit] == ["UPLOAD", "DECODE", "AI_PROCESS"]
    ai = audit[-1]
    assert ai.outcome == "ok" and ai.model_used.startswith("local-1+rapidocr")
    assert ai.duration_ms is not None and ai.cost_estimate == 0.0
    assert ai.state == "completed"
    assert states == ["processing", "completed"]
    assert count(settings, PhotoResult) == 1


def test_identical_content_reuses_the_cached_result(
        settings: Settings, owner: str, provider: Counting) -> None:
    first = upload(settings, owner, BEETS / "abbey.jpg", name="first.jpg")
    second = upload(settings, owner, BEETS / "abbey.jpg", name="second.jpg")
    run(settings)
    a, b = photo(settings, first), photo(settings, second)
    assert a["ai_processing_status"] == b["ai_processing_status"] == "completed"
    assert provider.calls == 1  # the second photo used photo_results
    assert count(settings, PhotoResult) == 1
    assert {k: v for k, v in a["ai_results"].items() if k != "near_duplicates"} == {
        k: v for k, v in b["ai_results"].items() if k != "near_duplicates"}
    hit = [x for x in b["audit"] if x["step"] == "AI_PROCESS"]
    assert [x["outcome"] for x in hit] == ["hit"]
    assert hit[0]["cost_estimate"] == 0.0
    # the same picture is also each other's (exact) near-duplicate
    assert b["ai_results"]["near_duplicates"] == [{"photo_id": first, "distance": 0}]
    assert a["ai_results"]["near_duplicates"] == [{"photo_id": second, "distance": 0}]


def test_near_duplicates_are_found_both_ways_within_one_owner(
        settings: Settings, owner: str, provider: Counting, tmp_path: Path) -> None:
    original = upload(settings, owner, BEETS / "abbey.jpg")
    run(settings)
    copy = upload(settings, owner, resized(BEETS / "abbey.jpg", tmp_path / "abbey-small.jpg"))
    similar = upload(settings, owner, BEETS / "abbey-similar.jpg")
    different = upload(settings, owner, BEETS / "abbey-different.jpg")
    stranger, _ = create_user(settings.resolved_database_url, "stranger")
    theirs = upload(settings, stranger.id, BEETS / "abbey.jpg")
    run(settings)

    def near(pid: str) -> dict[str, int]:
        return {d["photo_id"]: d["distance"]
                for d in photo(settings, pid)["ai_results"]["near_duplicates"]}

    limit = settings.photos_duplicate_distance
    assert set(near(copy)) == {original, similar}
    assert all(d <= limit for d in near(copy).values())
    # the photo analysed first learns about the copies that came later
    assert set(near(original)) == {copy, similar}
    assert near(different) == {}
    assert different not in near(original)
    assert near(theirs) == {}  # another owner's photos are never compared
    views = [d for d in photo(settings, copy)["ai_results"]["near_duplicates"]]
    assert [d["distance"] for d in views] == sorted(d["distance"] for d in views)


def test_near_duplicate_distance_is_configurable(
        settings: Settings, owner: str, provider: Counting) -> None:
    settings.photos_duplicate_distance = 0
    a = upload(settings, owner, BEETS / "abbey.jpg")
    upload(settings, owner, BEETS / "abbey-similar.jpg")  # 2 bits away
    run(settings)
    assert photo(settings, a)["ai_results"]["near_duplicates"] == []


# --- failures --------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "code"), [
    ("broken_data_stream.png", "image_corrupt"),
    ("truncated_end_chunk.png", "image_truncated"),
    ("pngtest_bad.png.bin", "image_unsupported"),
])
def test_a_corrupt_file_fails_with_a_clear_message(
        settings: Settings, owner: str, provider: Counting, name: str, code: str) -> None:
    good = upload(settings, owner, BEETS / "abbey.jpg")
    bad = upload(settings, owner, PILLOW / name, name=f"holiday-{name}")
    run(settings)
    view = photo(settings, bad)
    assert view["ai_processing_status"] == "failed"
    assert view["ai_error_code"] == code
    message = view["ai_error_message"]
    assert f"holiday-{name}" in message  # the name the user uploaded, not the stored one
    assert bad not in message and str(settings.home_dir) not in message
    assert "/" not in message.replace("holiday-", "")
    assert view["ai_results"] is None and view["width"] is None
    assert provider.calls == 1  # only the good photo reached the provider
    with read_session(settings.resolved_database_url) as session:
        job = session.scalars(select(Job).where(Job.item_id == bad)).one()
        item = session.get(Item, bad)
    assert job.status == "failed" and job.attempts == 1  # permanent: not retried
    assert item is not None and item.state == "failed" and item.error_code == code
    assert photo(settings, good)["ai_processing_status"] == "completed"


def test_not_an_image_is_accepted_at_upload_and_fails_in_processing(
        settings: Settings, owner: str, provider: Counting, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("this is not a photo\n")
    pid = upload(settings, owner, text)
    assert photo(settings, pid)["ai_processing_status"] == "pending"
    run(settings)
    view = photo(settings, pid)
    assert view["ai_processing_status"] == "failed"
    assert view["ai_error_code"] == "image_unsupported"
    assert "not an image" in view["ai_error_message"]


def test_transient_errors_are_retried_then_the_photo_fails(
        settings: Settings, owner: str, use_provider: Callable[..., Counting]) -> None:
    provider = use_provider(fail_first=99)
    pid = upload(settings, owner, BEETS / "abbey.jpg")
    run(settings, wait_s=3.0)
    view = photo(settings, pid)
    assert provider.calls == 3  # max_attempts
    assert view["ai_processing_status"] == "failed"
    assert view["ai_error_code"] == "provider_timeout"
    assert view["ai_error_message"] == (
        "gave up after 3 attempts: the vision service timed out after 30 s")
    outcomes = [(a["step"], a["outcome"]) for a in view["audit"]]
    assert outcomes.count(("analyse", "retry")) == 2
    assert outcomes.count(("AI_PROCESS", "error")) == 3
    assert outcomes[-1] == ("analyse", "failed")
    assert count(settings, PhotoResult) == 0


def test_a_transient_error_then_success_completes(
        settings: Settings, owner: str, use_provider: Callable[..., Counting]) -> None:
    provider = use_provider(fail_first=1)
    pid = upload(settings, owner, BEETS / "abbey.jpg")
    run(settings, wait_s=3.0)
    view = photo(settings, pid)
    assert provider.calls == 2
    assert view["ai_processing_status"] == "completed"
    assert view["ai_error_message"] is None and view["ai_error_code"] is None


# --- (re)processing --------------------------------------------------------------------------

def test_process_missing_skips_completed_photos_and_all_redoes_them(
        settings: Settings, owner: str, provider: Counting) -> None:
    a = upload(settings, owner, BEETS / "abbey.jpg")
    b = upload(settings, owner, BEETS / "abbey-different.jpg")
    broken = upload(settings, owner, PILLOW / "broken_data_stream.png")
    run(settings)
    assert provider.calls == 2
    first_done = photo(settings, a)["processed_at"]
    current = ("local", "1")

    counts = service.process_photos(settings, owner_id=None, mode="missing", provider=current)
    assert (counts.total, counts.queued, counts.already_queued, counts.up_to_date) == (3, 1, 0, 2)
    assert photo(settings, broken)["ai_processing_status"] == "pending"
    assert photo(settings, broken)["ai_error_message"] is None
    again = service.process_photos(settings, owner_id=None, mode="missing", provider=current)
    assert (again.queued, again.already_queued) == (0, 1)  # still queued: not twice
    run(settings)
    assert provider.calls == 2  # the completed photos were not analysed again
    assert photo(settings, broken)["ai_processing_status"] == "failed"
    assert photo(settings, a)["processed_at"] == first_done

    counts = service.process_photos(settings, owner_id=owner, mode="all", provider=current)
    assert (counts.total, counts.queued, counts.up_to_date) == (3, 3, 0)
    assert photo(settings, a)["ai_processing_status"] == "pending"
    run(settings)
    assert provider.calls == 4  # forced: the cache was not used
    assert photo(settings, a)["ai_processing_status"] == "completed"
    assert photo(settings, a)["processed_at"] > first_done
    assert count(settings, PhotoResult) == 2  # the forced results replaced the cached ones
    assert [x["outcome"] for x in photo(settings, b)["audit"]
            if x["step"] == "AI_PROCESS"] == ["ok", "ok"]

    # another user's scope sees none of these photos
    stranger, _ = create_user(settings.resolved_database_url, "stranger")
    none = service.process_photos(settings, owner_id=stranger.id, mode="all", provider=current)
    assert (none.total, none.queued) == (0, 0)


def test_a_new_provider_version_makes_results_missing(
        settings: Settings, owner: str, use_provider: Callable[..., Counting]) -> None:
    use_provider()
    pid = upload(settings, owner, BEETS / "abbey.jpg")
    run(settings)
    newer = use_provider(version="2")
    counts = service.process_photos(settings, owner_id=owner, mode="missing",
                                    provider=("local", "2"))
    assert (counts.queued, counts.up_to_date) == (1, 0)
    run(settings)
    assert newer.calls == 1  # no cached result for version 2 yet
    view = photo(settings, pid)
    assert view["ai_processing_status"] == "completed" and view["ai_provider_version"] == "2"
    assert count(settings, PhotoResult) == 2


def test_a_bad_mode_is_refused(settings: Settings) -> None:
    with pytest.raises(service.PhotosError) as err:
        service.process_photos(settings, owner_id=None, mode="some", provider=("local", "1"))
    assert err.value.status == 422 and err.value.code == "invalid_mode"


# --- upload rules ----------------------------------------------------------------------------

def test_an_idempotency_key_returns_the_first_photo(
        settings: Settings, owner: str, provider: Counting) -> None:
    first = upload(settings, owner, BEETS / "abbey.jpg", key="k-1")
    assert upload(settings, owner, BEETS / "abbey.jpg", key="k-1") == first
    assert upload(settings, owner, BEETS / "abbey.jpg", key="k-2") != first
    assert count(settings, Photo) == 2


def test_empty_and_oversized_uploads_are_refused_and_leave_nothing(
        settings: Settings, owner: str) -> None:
    storage = storage_for(settings)
    with pytest.raises(service.PhotosError) as err:
        service.create_photo(settings, storage, owner_id=owner, filename="empty.jpg",
                             stream=io.BytesIO(b""))
    assert (err.value.status, err.value.code) == (400, "empty_upload")
    settings.max_upload_bytes = 1000
    with pytest.raises(UploadTooLarge):
        service.create_photo(settings, storage, owner_id=owner, filename="big.jpg",
                             stream=io.BytesIO(b"\xff" * 5000))
    assert count(settings, Photo) == 0 and count(settings, Job) == 0
    if settings.resolved_storage_url.startswith("file://"):
        photos_dir = Path(settings.resolved_storage_url.removeprefix("file://")) / "photos"
        assert not photos_dir.exists() or not any(p.is_file() for p in photos_dir.rglob("*"))


def test_a_provider_that_is_not_configured_fails_the_photo_at_once(
        settings: Settings, owner: str) -> None:
    from conveyor.errors import ConveyorError
    from conveyor.pipelines.photos.analysis import provider_identity

    settings.ai_provider = "google_vision"  # and no CONVEYOR_GOOGLE_VISION_API_KEY
    pid = upload(settings, owner, BEETS / "abbey.jpg")
    run(settings)
    view = photo(settings, pid)
    assert view["ai_processing_status"] == "failed"
    assert view["ai_error_code"] == "not_configured"
    assert view["ai_error_message"].startswith("the photo provider is not usable")
    with read_session(settings.resolved_database_url) as session:
        job = session.scalars(select(Job).where(Job.item_id == pid)).one()
    assert job.attempts == 1
    settings.ai_provider = "no-such-provider"
    with pytest.raises(ConveyorError) as err:
        provider_identity(settings)
    assert err.value.code == "not_configured" and "no-such-provider" in err.value.message


def test_concurrent_workers_store_one_result_and_link_both_ways(
        settings: Settings, owner: str, provider: Counting, tmp_path: Path) -> None:
    """Four workers (threads, each its own runner) analyse copies of one picture at once:
    one cache row per content, every photo completed, near-duplicate lists symmetric."""
    small = resized(BEETS / "abbey.jpg", tmp_path / "small.jpg")
    ids = [upload(settings, owner, BEETS / "abbey.jpg", name=f"same-{i}.jpg") for i in range(4)]
    ids += [upload(settings, owner, small, name=f"small-{i}.jpg") for i in range(2)]
    errors: list[BaseException] = []

    def work() -> None:
        try:
            run(settings)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    views = {pid: photo(settings, pid) for pid in ids}
    assert {v["ai_processing_status"] for v in views.values()} == {"completed"}
    with read_session(settings.resolved_database_url) as session:
        keys = session.execute(select(PhotoResult.content_sha256)).scalars().all()
    assert sorted(keys) == sorted({v["content_sha256"] for v in views.values()})  # one each
    assert 2 <= provider.calls <= 6
    for pid, view in views.items():
        near = {d["photo_id"] for d in view["ai_results"]["near_duplicates"]}
        assert near == set(ids) - {pid}, (pid, near)
