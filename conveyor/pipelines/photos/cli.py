"""Command-line entries of the photos pipeline, mounted by :mod:`conveyor.cli`:

- ``conveyor ingest photos PATH… [--user NAME] [--wait]``
- ``conveyor photos process --missing|--all [--user NAME] [--wait]``
- ``conveyor photos list [--status S] [--user NAME] [--limit N]``

Heavy imports (the database, the engine) happen inside the commands so that
``conveyor --help`` stays fast; the shared helpers come from :mod:`conveyor.cli`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from conveyor.config import Settings

photos_app = typer.Typer(help="The photos pipeline: analyse photos, list them.",
                         no_args_is_help=True)

#: File name endings picked up when a directory is given to ``ingest photos``.
PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".gif", ".webp", ".heic", ".heif",
                            ".avif", ".tif", ".tiff", ".bmp", ".jp2", ".j2k", ".ppm", ".pgm",
                            ".pbm", ".pnm"})
WAIT_POLL_S = 0.2


def photo_files(paths: list[Path]) -> list[Path]:
    """Files as given, and the photos (by extension) under the directories given."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*") if p.is_file()
                              and p.suffix.lower() in PHOTO_SUFFIXES
                              and not any(part.startswith(".") for part in
                                          p.relative_to(path).parts)))
        else:
            out.append(path)
    return out


def _owner_id(db_url: str, name: str) -> str:
    from sqlalchemy import select

    from conveyor.cli import err
    from conveyor.db.models import User
    from conveyor.db.session import read_session

    with read_session(db_url) as session:
        user_id = session.scalars(select(User.id).where(User.name == name)).first()
    if user_id is None:
        err.print(f"[red]no user named {name!r}[/] (create one: conveyor users create NAME)")
        raise typer.Exit(2)
    return user_id


def _new_run(db_url: str, owner_id: str, total: int) -> str:
    from conveyor.db.models import Run
    from conveyor.db.session import transaction
    from conveyor.pipelines.photos.states import PIPELINE

    with transaction(db_url) as session:
        run = Run(pipeline=PIPELINE, owner_id=owner_id, total=total)
        session.add(run)
        session.flush()
        return run.id


def _run_progress(db_url: str, run_id: str | None) -> tuple[int, int]:
    """(photos of the run that are done, analyses still pending or running)."""
    from sqlalchemy import func, select

    from conveyor.db.models import Item, Job
    from conveyor.db.session import read_session
    from conveyor.engine.jobs import ACTIVE
    from conveyor.pipelines.photos.states import COMPLETED, FAILED, PIPELINE

    with read_session(db_url) as session:
        jobs = select(func.count()).select_from(Job).where(Job.pipeline == PIPELINE,
                                                           Job.status.in_(ACTIVE))
        done = 0
        if run_id is not None:
            jobs = jobs.where(Job.run_id == run_id)
            done = int(session.scalar(select(func.count()).select_from(Item).where(
                Item.run_id == run_id, Item.state.in_((COMPLETED, FAILED)))) or 0)
        return done, int(session.scalar(jobs) or 0)


def _work_until_done(run_id: str | None, total: int, label: str) -> None:
    """Run the photos jobs in this process (waiting out retry back-off) until none is left."""
    from conveyor.cli import _progress, _settings
    from conveyor.runtime import build_runner

    s = _settings()
    runner = build_runner(s)
    with _progress() as progress:
        task = progress.add_task(label, total=total)
        while True:
            ran = runner.run_one()
            done, active = _run_progress(s.resolved_database_url, run_id)
            if run_id is not None:
                progress.update(task, completed=done)
            if ran:
                if run_id is None:
                    progress.advance(task)
                continue
            if active == 0:
                break
            time.sleep(WAIT_POLL_S)  # a retry is waiting out its back-off
        progress.update(task, completed=total)


def ingest_photos(
    paths: Annotated[list[Path], typer.Argument(
        help="photos, or folders to search for photos", exists=True)],
    user: Annotated[str, typer.Option(help="owner of the new photos")] = "admin",
    wait: Annotated[bool, typer.Option(
        help="analyse now, in this process, and show the results")] = False,
) -> None:
    """Upload photos through the same code as ``POST /photos`` (their analysis is queued)."""
    from conveyor.cli import _progress, _settings, console, err
    from conveyor.pipelines.photos.service import PhotosError, create_photo
    from conveyor.runtime import storage_for
    from conveyor.storage.base import UploadTooLarge

    files = photo_files(paths)
    if not files:
        err.print("[red]no photos found[/] in the paths given")
        raise typer.Exit(2)
    s = _settings()
    db = s.resolved_database_url
    owner = _owner_id(db, user)
    storage = storage_for(s)
    run_id = _new_run(db, owner, len(files))
    rows: list[tuple[Path, str | None, str | None]] = []  # (file, photo id, upload error)
    with _progress() as progress:
        task = progress.add_task("uploading", total=len(files))
        for path in files:
            try:
                with open(path, "rb") as fh:
                    up = create_photo(s, storage, owner_id=owner, filename=path.name,
                                      stream=fh, run_id=run_id)
                rows.append((path, up.photo_id, None))
            except (UploadTooLarge, PhotosError) as exc:
                rows.append((path, None, f"{exc.code}: {exc.message}"))
            except OSError as exc:
                rows.append((path, None, f"unreadable: {exc.strerror or exc}"))
            progress.advance(task)
    uploaded = sum(1 for _, pid, _ in rows if pid)
    if wait and uploaded:
        _work_until_done(run_id, uploaded, "analysing")
    _print_photos(s, rows)
    if not wait and uploaded:
        console.print(f"[dim]{uploaded} photo(s) queued; `conveyor serve` or `conveyor worker` "
                      "analyses them (or pass --wait)[/]")
    if uploaded < len(rows):
        raise typer.Exit(1)


def _print_photos(s: Settings, rows: list[tuple[Path, str | None, str | None]]) -> None:
    from rich.table import Table

    from conveyor.cli import console
    from conveyor.db.session import read_session
    from conveyor.pipelines.photos.models import Photo

    table = Table("file", "photo id", "status", "size", "provider", "error")
    with read_session(s.resolved_database_url) as session:
        for path, pid, error in rows:
            photo = session.get(Photo, pid) if pid else None
            if photo is None:
                table.add_row(path.name, pid or "-", "refused", "", "", error or "")
                continue
            table.add_row(path.name, photo.id, photo.ai_processing_status,
                          f"{photo.width}x{photo.height}" if photo.width else "",
                          photo.ai_provider_used or "",
                          _error_text(photo.ai_error_code, photo.ai_error_message))
    console.print(table)


def _error_text(code: str | None, message: str | None) -> str:
    if not code:
        return ""
    return f"{code}: {message}" if message else code


@photos_app.command("process")
def process(
    missing: Annotated[bool, typer.Option(
        "--missing", help="photos without a result of the current provider version")] = False,
    all_: Annotated[bool, typer.Option(
        "--all", help="every photo, recomputed (cached results are ignored)")] = False,
    user: Annotated[str | None, typer.Option(help="only this user's photos")] = None,
    wait: Annotated[bool, typer.Option(help="analyse now, in this process")] = False,
) -> None:
    """Queue analyses of existing photos (seed 002's reprocessing), then show the counts."""
    from conveyor.cli import _settings, console, err
    from conveyor.errors import ConveyorError
    from conveyor.pipelines.photos.analysis import provider_identity
    from conveyor.pipelines.photos.service import process_photos
    from conveyor.pipelines.photos.states import MODE_ALL, MODE_MISSING

    if missing == all_:
        err.print("[red]say which photos:[/] --missing or --all")
        raise typer.Exit(2)
    s = _settings()
    owner = _owner_id(s.resolved_database_url, user) if user else None
    try:
        identity = provider_identity(s)
    except ConveyorError as exc:
        err.print(f"[red]{exc.message}[/]")
        raise typer.Exit(1) from exc
    counts = process_photos(s, owner_id=owner, mode=MODE_ALL if all_ else MODE_MISSING,
                            provider=identity)
    console.print(f"provider {counts.provider} v{counts.provider_version}: "
                  f"{counts.queued} queued, {counts.already_queued} already queued, "
                  f"{counts.up_to_date} up to date, of {counts.total} photo(s)")
    if wait and (counts.queued or counts.already_queued):
        _work_until_done(None, counts.queued + counts.already_queued, "analysing")


@photos_app.command("list")
def list_photos(
    status: Annotated[str | None, typer.Option(
        help="pending, processing, completed or failed")] = None,
    user: Annotated[str | None, typer.Option(help="only this user's photos")] = None,
    limit: Annotated[int, typer.Option(help="how many", min=1)] = 50,
) -> None:
    """List photos, newest first, with their analysis status."""
    from rich.table import Table
    from sqlalchemy import select

    from conveyor.cli import _settings, console, err
    from conveyor.db.models import User
    from conveyor.db.session import read_session
    from conveyor.pipelines.photos.models import Photo
    from conveyor.pipelines.photos.states import STATUSES

    if status is not None and status not in STATUSES:
        err.print(f"[red]--status must be one of {', '.join(STATUSES)}[/]")
        raise typer.Exit(2)
    s = _settings()
    db = s.resolved_database_url
    stmt = (select(Photo, User.name).join(User, User.id == Photo.owner_id)
            .order_by(Photo.created_at.desc(), Photo.id.desc()).limit(limit))
    if user:
        stmt = stmt.where(Photo.owner_id == _owner_id(db, user))
    if status:
        stmt = stmt.where(Photo.ai_processing_status == status)
    table = Table("id", "file", "owner", "status", "size", "provider", "processed", "error")
    with read_session(db) as session:
        for photo, owner in session.execute(stmt):
            table.add_row(
                photo.id, photo.original_filename, owner, photo.ai_processing_status,
                f"{photo.width}x{photo.height}" if photo.width else "",
                f"{photo.ai_provider_used} v{photo.ai_provider_version}"
                if photo.ai_provider_used else "",
                photo.processed_at.strftime("%Y-%m-%d %H:%M:%S") if photo.processed_at else "",
                _error_text(photo.ai_error_code, photo.ai_error_message))
    console.print(table)


__all__ = ["ingest_photos", "photo_files", "photos_app"]
