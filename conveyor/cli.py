"""The ``conveyor`` command line (typer + rich)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from conveyor.config import Settings, get_settings
from conveyor.pipelines.photos.cli import ingest_photos, photos_app

app = typer.Typer(help="Conveyor: durable multi-stage AI pipelines for media.",
                  no_args_is_help=True)
users_app = typer.Typer(help="Users and API tokens.", no_args_is_help=True)
ingest_app = typer.Typer(help="Feed files to a pipeline.", no_args_is_help=True)
app.add_typer(users_app, name="users")
app.add_typer(ingest_app, name="ingest")
app.add_typer(photos_app, name="photos")
ingest_app.command("photos")(ingest_photos)
console = Console()
err = Console(stderr=True)


def _settings(**overrides: object) -> Settings:
    from conveyor.runtime import prepare

    settings = get_settings()
    for key, value in overrides.items():
        if value is not None:
            setattr(settings, key, value)
    return prepare(settings)


@app.command()
def migrate() -> None:
    """Apply database migrations (also done automatically at start-up)."""
    s = _settings()
    console.print(f"database is up to date: {_redact(s.resolved_database_url)}")


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


@app.command()
def bootstrap() -> None:
    """Prepare ./var, apply migrations, and create an admin (printing its token once)."""
    from conveyor.accounts import create_user, has_admin

    s = _settings()
    if has_admin(s.resolved_database_url):
        console.print("[dim]admin exists; `conveyor users token admin` prints a new token[/]")
        return
    _, token = create_user(s.resolved_database_url, "admin", admin=True)
    console.print("[bold]Created user 'admin'. Its API token (shown once):[/]")
    console.print(token, soft_wrap=True, highlight=False)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    workers: Annotated[int | None, typer.Option(help="local worker processes")] = None,
    executor: Annotated[str | None, typer.Option(
        help="local (worker processes), celery (workers run `conveyor worker --executor "
             "celery`) or inline (no workers: API only)")] = None,
) -> None:
    """Run the API and web UI (and, with the local executor, the worker processes)."""
    import uvicorn

    from conveyor.api.app import create_app

    s = _settings(workers=workers, executor=executor)
    console.print(f"Conveyor on http://{host}:{port}  (executor {s.executor}, "
                  f"{s.workers if s.executor == 'local' else 0} local workers, home {s.home_dir})")
    uvicorn.run(create_app(s, start_workers=True), host=host, port=port,
                log_level="warning", access_log=False)


@app.command()
def worker(
    workers: Annotated[int | None, typer.Option(help="worker processes")] = None,
    executor: Annotated[str | None, typer.Option(
        help="local (claim from the database) or celery (consume the broker's queue)")] = None,
    once: Annotated[bool, typer.Option(help="run due jobs inline, then exit")] = False,
) -> None:
    """Run worker processes without the API (for more workers, or another machine)."""
    from conveyor.engine.executors.inline import run_until_idle
    from conveyor.engine.executors.local import LocalExecutor
    from conveyor.runtime import build_runner

    s = _settings(workers=workers, executor=executor)
    if s.executor == "celery" and not once:
        from conveyor.engine.executors.celery import run_worker

        console.print(f"celery worker: {s.workers} process(es) on queue {s.celery_queue!r}, "
                      f"broker {_redact(s.broker_url or '')}")
        run_worker(s, build_runner, s.workers)
        return
    if once:
        n = run_until_idle(build_runner(s))
        console.print(f"ran {n} job(s)")
        return
    local = LocalExecutor(s, build_runner)
    local.start()
    console.print(f"{local.count} worker(s) running; Ctrl-C stops them")
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        local.stop()


@ingest_app.command("records")
def ingest_records(
    files: Annotated[list[Path], typer.Argument(help="cover images", exists=True,
                                                 dir_okay=False)],
    user: Annotated[str, typer.Option(help="owner of the new previews")] = "admin",
    wait: Annotated[bool, typer.Option(help="process now and wait for results")] = True,
) -> None:
    """Upload record-cover photos through the same code as the API and show the results."""
    from sqlalchemy import select

    from conveyor.db.models import User
    from conveyor.db.session import read_session
    from conveyor.pipelines.records.service import create_preview
    from conveyor.runtime import build_runner, storage_for

    s = _settings()
    with read_session(s.resolved_database_url) as session:
        owner = session.scalars(select(User).where(User.name == user)).first()
    if owner is None:
        err.print(f"[red]no user named {user!r}[/] (create one: conveyor users create NAME)")
        raise typer.Exit(2)
    storage = storage_for(s)
    run_id = _start_run(s, owner.id, len(files))
    ids: list[tuple[Path, str]] = []
    with _progress() as progress:
        task = progress.add_task("uploading", total=len(files))
        for path in files:
            with open(path, "rb") as fh:
                up = create_preview(s, storage, owner_id=owner.id, filename=path.name,
                                    stream=fh, run_id=run_id)
            ids.append((path, up.preview_id))
            progress.advance(task)
    if wait:
        runner = build_runner(s)
        with _progress() as progress:
            task = progress.add_task("processing", total=len(ids))
            while runner.run_one():
                progress.update(task, completed=_settled(s, run_id))
            progress.update(task, completed=_settled(s, run_id))
    _print_previews(s, ids)


def _start_run(s: Settings, owner_id: str, total: int) -> str:
    from conveyor.db.models import Run
    from conveyor.db.session import transaction

    with transaction(s.resolved_database_url) as session:
        run = Run(pipeline="records", owner_id=owner_id, total=total)
        session.add(run)
        session.flush()
        return run.id


def _settled(s: Settings, run_id: str) -> int:
    """Items of the batch that are no longer being analysed."""
    from sqlalchemy import func, select

    from conveyor.db.models import Item
    from conveyor.db.session import read_session

    with read_session(s.resolved_database_url) as session:
        return int(session.scalar(select(func.count()).select_from(Item).where(
            Item.run_id == run_id, Item.state != "UPLOADED")) or 0)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(),
                    TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                    console=err)


def _print_previews(s: Settings, ids: list[tuple[Path, str]]) -> None:
    from sqlalchemy import select

    from conveyor.db.models import Item
    from conveyor.db.session import read_session
    from conveyor.pipelines.records.models import ArchiveRecord, PreviewRecord

    table = Table("file", "preview_id", "state", "confidence", "artist", "album", "error")
    with read_session(s.resolved_database_url) as session:
        for path, pid in ids:
            item = session.get(Item, pid)
            row: PreviewRecord | ArchiveRecord | None = session.get(PreviewRecord, pid)
            if row is None:
                row = session.scalars(select(ArchiveRecord)
                                      .where(ArchiveRecord.preview_id == pid)).first()
            conf = f"{item.confidence:.2f}" if item and item.confidence is not None else "-"
            table.add_row(path.name, pid, item.state if item else "?", conf,
                          (row.artist if row else None) or "", (row.album if row else None) or "",
                          (item.error_code or "") if item else "")
    console.print(table)


@app.command()
def items(
    pipeline: Annotated[str | None, typer.Option(help="only this pipeline")] = None,
    state: Annotated[str | None, typer.Option(help="only this state")] = None,
    limit: Annotated[int, typer.Option(help="how many")] = 50,
) -> None:
    """List items, newest first."""
    from sqlalchemy import select

    from conveyor.db.models import Item
    from conveyor.db.session import read_session

    s = _settings()
    stmt = select(Item).order_by(Item.created_at.desc()).limit(limit)
    if pipeline:
        stmt = stmt.where(Item.pipeline == pipeline)
    if state:
        stmt = stmt.where(Item.state == state)
    table = Table("id", "pipeline", "state", "confidence", "cost", "error", "created")
    with read_session(s.resolved_database_url) as session:
        for it in session.scalars(stmt):
            table.add_row(it.id, it.pipeline, it.state,
                          "-" if it.confidence is None else f"{it.confidence:.2f}",
                          f"${it.cost_total:.4f}", it.error_code or "",
                          it.created_at.strftime("%Y-%m-%d %H:%M:%S"))
    console.print(table)


@app.command()
def jobs() -> None:
    """Job counts per step and status, and recent failures."""
    from conveyor.api.common import job_summary
    from conveyor.db.session import read_session

    s = _settings()
    with read_session(s.resolved_database_url) as session:
        summary = job_summary(session, None)
    statuses = ["pending", "running", "completed", "failed", "blocked", "cancelled"]
    table = Table("step", *statuses)
    for row in summary["counts"]:
        table.add_row(row["step"], *[str(row.get(k, 0)) for k in statuses])
    console.print(table)
    if summary["failures"]:
        fails = Table("job", "step", "attempts", "error", title="recent failures")
        for f in summary["failures"][:20]:
            fails.add_row(f["job_id"][:8], f["step"], str(f["attempts"]), (f["error"] or "")[:100])
        console.print(fails)


@users_app.command("create")
def users_create(
    name: str, admin: Annotated[bool, typer.Option("--admin", help="may see everything")] = False
) -> None:
    """Create a user; the last line printed is its new API token."""
    from conveyor.accounts import AccountError, create_user

    s = _settings()
    try:
        user, token = create_user(s.resolved_database_url, name, admin=admin)
    except AccountError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc
    console.print(f"created user {user.name!r}{' (admin)' if admin else ''}; token:")
    print(token)


@users_app.command("token")
def users_token(name: str) -> None:
    """Print a new API token for a user (older tokens keep working)."""
    from conveyor.accounts import AccountError, new_token

    s = _settings()
    try:
        print(new_token(s.resolved_database_url, name))
    except AccountError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc


@users_app.command("revoke")
def users_revoke(name: str) -> None:
    """Revoke every API token of a user."""
    from conveyor.accounts import AccountError, revoke_tokens

    s = _settings()
    try:
        n = revoke_tokens(s.resolved_database_url, name)
    except AccountError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc
    console.print(f"revoked {n} token(s) of {name!r}")


@users_app.command("list")
def users_list() -> None:
    """List users."""
    from conveyor.accounts import list_users

    s = _settings()
    table = Table("name", "admin", "id", "created")
    for u in list_users(s.resolved_database_url):
        table.add_row(u.name, "yes" if u.is_admin else "", u.id, u.created_at.isoformat())
    console.print(table)


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()


if __name__ == "__main__":
    main()
