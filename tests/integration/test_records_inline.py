"""The records pipeline in one process (inline executor): offline defaults and the local
Discogs-collection catalogue."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from conveyor.accounts import create_user
from conveyor.config import Settings
from conveyor.db.models import AuditEvent, Decision
from conveyor.db.session import read_session
from conveyor.engine.executors.inline import run_until_idle
from conveyor.pipelines.records.models import ArchiveRecord, PreviewRecord
from conveyor.pipelines.records.service import create_preview, review_preview
from conveyor.pipelines.records.views import preview_view
from conveyor.runtime import build_runner, storage_for
from tests.support import FULL_COVER, MIDDLE_COVER, SPARSE_COVER, make_cover


def upload(settings: Settings, owner: str, path: Path) -> str:
    with open(path, "rb") as fh:
        return create_preview(settings, storage_for(settings), owner_id=owner,
                              filename=path.name, stream=fh).preview_id


def view(settings: Settings, pid: str) -> dict[str, Any]:
    with read_session(settings.resolved_database_url) as session:
        preview = session.get(PreviewRecord, pid)
        assert preview is not None
        return preview_view(session, settings, preview)


def test_offline_defaults_skip_what_is_not_configured(settings: Settings,
                                                      tmp_path: Path) -> None:
    # the shipped defaults: the official Discogs API with no token, no LLM
    user, _ = create_user(settings.resolved_database_url, "offline")
    sparse = upload(settings, user.id, make_cover(tmp_path / "s.jpg", SPARSE_COVER))
    run_until_idle(build_runner(settings))
    v = view(settings, sparse)
    assert v["state"] == "AI_ANALYZED" and v["confidence"] < 0.75
    vision = [a for a in v["audit"] if a["step"] == "LEVEL_3_VISION"]
    assert [a["outcome"] for a in vision] == ["skipped"]
    assert "CONVEYOR_LLM_BASE_URL" in vision[0]["detail"]["reason"]
    assert v["cost_estimate"] == 0.001  # nothing was spent on a model that is not there

    review_preview(settings, sparse, None, {"artist": "Trash80", "album": "Icarus"})
    run_until_idle(build_runner(settings))
    v = view(settings, sparse)
    assert v["state"] == "ENRICHED" and v["enrichment_source"] is None
    outcomes = {a["step"]: a["outcome"] for a in v["audit"]}
    assert outcomes["ENRICH_CACHE"] == "miss"
    assert outcomes["ENRICH_DISCOGS"] == "skipped" and outcomes["ENRICH_AI"] == "skipped"


def test_gate_decisions_are_recorded(settings: Settings, tmp_path: Path) -> None:
    user, _ = create_user(settings.resolved_database_url, "gates")
    full = upload(settings, user.id, make_cover(tmp_path / "f.jpg", FULL_COVER))
    middle = upload(settings, user.id, make_cover(tmp_path / "m.jpg", MIDDLE_COVER))
    run_until_idle(build_runner(settings))
    with read_session(settings.resolved_database_url) as session:
        rows = session.scalars(select(Decision).order_by(Decision.id)).all()
        decided = {(d.item_id, d.kind): d.outcome for d in rows}
        archived = session.scalars(select(ArchiveRecord)).all()
    assert decided[(full, "records.level1")] == "accept"
    assert decided[(full, "records.auto_archive")] == "accept"
    assert decided[(middle, "records.level1")] == "accept"
    assert decided[(middle, "records.auto_archive")] == "review"
    assert [r.preview_id for r in archived] == [full]


def test_thresholds_are_configurable(make_stack_settings: Callable[..., Settings],
                                    tmp_path: Path) -> None:
    s = make_stack_settings(records_auto_archive_at=0.8)
    user, _ = create_user(s.resolved_database_url, "strict")
    middle = upload(s, user.id, make_cover(tmp_path / "m.jpg", MIDDLE_COVER))
    run_until_idle(build_runner(s))
    with read_session(s.resolved_database_url) as session:
        assert session.scalars(select(ArchiveRecord.preview_id)).all() == [middle]


def test_collection_csv_enriches_offline(make_stack_settings: Callable[..., Settings],
                                         tmp_path: Path) -> None:
    csv = tmp_path / "collection.csv"
    csv.write_text(
        "\ufeffCatalog#,Artist,Title,Label,Format,Rating,Released,release_id,CollectionFolder,"
        "Date Added,Collection Media Condition,Collection Sleeve Condition,Collection Notes\n"
        "SHVL 804,Pink Floyd,The Dark Side Of The Moon,Harvest,\"LP, Album\",5,1973,1873013,"
        "Uncategorized,2020-01-01 10:00:00,Mint (M),Mint (M),\n"
        "8BP086,Trash80 (2),Icarus,8bitpeoples,CDr,,2008,1743771,Uncategorized,"
        "2020-01-02 10:00:00,,,\n", encoding="utf-8")
    s = make_stack_settings(records_catalog="collection", discogs_collection_csv=csv)
    user, _ = create_user(s.resolved_database_url, "collector")
    pid = upload(s, user.id, make_cover(tmp_path / "s.jpg", SPARSE_COVER))
    run_until_idle(build_runner(s))
    review_preview(s, pid, None, {"artist": "Trash80", "album": "Icarus"})
    run_until_idle(build_runner(s))
    v = view(s, pid)
    assert v["state"] == "ENRICHED" and v["enrichment_source"] == "discogs"
    assert v["metadata"]["label"] == "8bitpeoples" and v["metadata"]["catalog_number"] == "8BP086"
    with read_session(s.resolved_database_url) as session:
        models = session.scalars(select(AuditEvent.model_used)
                                 .where(AuditEvent.step == "ENRICH_DISCOGS")).all()
    assert models == ["discogs-csv"]


def test_a_review_during_enrichment_supersedes_it(settings: Settings, tmp_path: Path) -> None:
    from conveyor.engine.jobs import claim_next_job

    user, _ = create_user(settings.resolved_database_url, "fickle")
    pid = upload(settings, user.id, make_cover(tmp_path / "s.jpg", SPARSE_COVER))
    runner = build_runner(settings)
    run_until_idle(runner)
    review_preview(settings, pid, None, {"artist": "Wrong Artist"})
    stale = claim_next_job(settings.resolved_database_url, runner.worker_id,
                           settings.lease_seconds)
    assert stale is not None and stale.step == "enrich" and stale.payload["revision"] == 1
    # the person corrects the artist while that enrichment is running
    review_preview(settings, pid, None, {"artist": "Trash80", "album": "Icarus"},
                   archive=True)
    runner.execute(stale)
    v = view(settings, pid)
    assert v["state"] == "USER_REVIEWED"  # the stale result was not applied or archived
    assert ("ENRICH", "superseded") in [(a["step"], a["outcome"]) for a in v["audit"]]
    run_until_idle(runner)
    with read_session(settings.resolved_database_url) as session:
        record = session.scalars(select(ArchiveRecord)
                                 .where(ArchiveRecord.preview_id == pid)).one()
    assert record.artist == "Trash80" and record.album == "Icarus"


def test_a_failing_failure_handler_still_ends_the_job(settings: Settings,
                                                      tmp_path: Path) -> None:
    from conveyor.db.models import Job

    user, _ = create_user(settings.resolved_database_url, "unlucky")
    pid = upload(settings, user.id, make_cover(tmp_path / "m.jpg", MIDDLE_COVER))
    runner = build_runner(settings)
    run_until_idle(runner)
    with read_session(settings.resolved_database_url) as session:
        preview = session.get(PreviewRecord, pid)
        assert preview is not None
        keys = [preview.file_path, preview.canonical_image_path]
    storage = storage_for(settings)
    for key in keys:
        assert key and storage.exists(key)
        storage.delete(key)  # the upload vanished from storage
    review_preview(settings, pid, None, {"album": "X"}, archive=True)
    run_until_idle(runner)  # must not raise, must not leave the job running
    with read_session(settings.resolved_database_url) as session:
        job = session.scalars(select(Job).where(Job.item_id == pid, Job.step == "enrich")).one()
        assert session.scalars(select(ArchiveRecord)).all() == []
    assert job.status == "failed" and "file_missing" in (job.last_error or "")
    assert str(settings.home_dir) not in (job.last_error or "")  # no server paths
