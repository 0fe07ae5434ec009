"""No-op jobs per second on the embedded default (SQLite in a temporary home).

Enqueues N no-op jobs (``bench.noop``) in batches, then measures how long the engine takes
to complete them all: the inline executor in this process, and the local executor with 1
and 2 spawned worker processes (from ``start()`` until the completed count reaches N, and
the steady rate between the first claim and the last completion). As a floor it runs the
same two transactions per job (the same claim SQL; completion + one event row) written by
hand on ``sqlite3`` against the same schema. For comparison it runs
Huey's SqliteHuey consumer on the same machine with the same number of tasks, when
``huey`` is installed (it is not a Conveyor dependency).

    .venv/bin/python bench/engine_noop.py --jobs 2000
    .venv/bin/python bench/engine_noop.py --jobs 1000 --modes inline --profile
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import pstats
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    bench_settings,
    clean_environment,
    header,
    print_table,
    wait_until,
    write_json,
)


@dataclass
class Result:
    system: str
    mode: str
    workers: int
    jobs: int
    enqueue_per_s: float
    total_s: float  # from start of the executor/consumer until all were done
    per_s: float  # jobs / total_s
    steady_per_s: float  # jobs / (last finish - first start), from the job rows
    failed: int = 0


@contextlib.contextmanager
def temp_home(keep: bool) -> Iterator[Path]:
    tmp = tempfile.mkdtemp(prefix="conveyor-bench-")
    try:
        yield Path(tmp)
    finally:
        if not keep:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


def _enqueue(settings: Any, jobs: int, batch: int) -> float:
    """Enqueue ``jobs`` no-op jobs in transactions of ``batch``; returns jobs/s."""
    from bench.noop import PIPELINE
    from conveyor.db.session import transaction
    from conveyor.engine.jobs import JobSpec, enqueue

    db = settings.resolved_database_url
    started = time.perf_counter()
    done = 0
    while done < jobs:
        n = min(batch, jobs - done)
        with transaction(db) as session:
            for _ in range(n):
                enqueue(session, JobSpec(pipeline=PIPELINE, step="noop"))
        done += n
    return jobs / (time.perf_counter() - started)


def _counts(settings: Any) -> dict[str, int]:
    from sqlalchemy import func, select

    from conveyor.db.models import Job
    from conveyor.db.session import read_session

    with read_session(settings.resolved_database_url) as session:
        rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    return {status: int(n) for status, n in rows}


def _steady_rate(settings: Any, jobs: int) -> float:
    from sqlalchemy import func, select

    from conveyor.db.models import Job
    from conveyor.db.session import read_session

    with read_session(settings.resolved_database_url) as session:
        first, last = session.execute(
            select(func.min(Job.started_at), func.max(Job.finished_at))
        ).one()
    if first is None or last is None:
        return float("nan")
    if isinstance(first, str):  # SQLite without the type decorator's help
        from datetime import datetime

        first, last = datetime.fromisoformat(first), datetime.fromisoformat(last)
    span = (last - first).total_seconds()
    return jobs / span if span > 0 else float("nan")


def _prepared(home: Path, workers: int) -> Any:
    from conveyor.runtime import prepare

    settings = bench_settings(home, workers=workers)
    prepare(settings)
    return settings


def run_inline(home: Path, jobs: int, batch: int, profile: bool) -> Result:
    from bench.noop import build_noop_runner
    from conveyor.engine.executors.inline import run_until_idle

    settings = _prepared(home, 1)
    enq = _enqueue(settings, jobs, batch)
    runner = build_noop_runner(settings)
    profiler = cProfile.Profile() if profile else None
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    ran = run_until_idle(runner)
    if profiler is not None:
        profiler.disable()
    total = time.perf_counter() - started
    counts = _counts(settings)
    if profiler is not None:
        _print_profile(profiler)
    return Result("conveyor", "inline", 1, ran, enq, total, ran / total,
                  _steady_rate(settings, jobs), counts.get("failed", 0))


def run_local(home: Path, jobs: int, batch: int, workers: int, timeout: float) -> Result:
    from bench.noop import build_noop_runner
    from conveyor.engine.executors.local import LocalExecutor

    settings = _prepared(home, workers)
    enq = _enqueue(settings, jobs, batch)
    executor = LocalExecutor(settings, build_noop_runner, workers=workers)
    started = time.monotonic()
    executor.start()
    try:
        done_at = wait_until(
            lambda: sum(_counts(settings).get(s, 0) for s in ("completed", "failed")) >= jobs,
            timeout=timeout, interval=0.05, what=f"{jobs} jobs on {workers} local worker(s)")
    finally:
        executor.stop()
    total = done_at - started
    counts = _counts(settings)
    return Result("conveyor", "local", workers, jobs, enq, total, jobs / total,
                  _steady_rate(settings, jobs), counts.get("failed", 0))


_FLOOR_CLAIM = """
UPDATE jobs SET status = 'running', locked_by = ?, locked_at = ?, lease_until = ?,
       attempts = attempts + 1, started_at = ?
WHERE id = (SELECT id FROM jobs
            WHERE (status = 'pending' AND run_after <= ?)
               OR (status = 'running' AND lease_until < ?)
            ORDER BY priority DESC, run_after LIMIT 1)
RETURNING id, item_id, run_id, pipeline, step, attempts, max_attempts, payload, parent_id
"""
_FLOOR_DONE = """
UPDATE jobs SET status = 'completed', finished_at = ?, lease_until = NULL,
       processing_time_ms = 0
WHERE id = ? AND status = 'running' AND locked_by = ?
"""
_FLOOR_EVENT = """
INSERT INTO events (owner_id, item_id, pipeline, kind, data, created_at)
VALUES (NULL, NULL, ?, 'job.completed', ?, ?)
"""


def run_floor(home: Path, jobs: int, batch: int) -> Result:
    """Not Conveyor's code path: the same two transactions per job (claim with the same
    SQL; complete + one event row) written by hand on ``sqlite3``, in one process. What
    the schema and SQLite allow before any Python framework overhead."""
    import json
    import sqlite3
    from datetime import UTC, datetime, timedelta

    settings = _prepared(home, 1)
    enq = _enqueue(settings, jobs, batch)
    con = sqlite3.connect(settings.resolved_database_url.removeprefix("sqlite:///"),
                          isolation_level=None)
    for pragma in ("busy_timeout = 30000", "journal_mode = WAL", "synchronous = NORMAL",
                   "foreign_keys = ON"):
        con.execute(f"PRAGMA {pragma}")

    def stamp(t: datetime) -> str:
        return t.strftime("%Y-%m-%d %H:%M:%S.%f")

    ran = 0
    started = time.perf_counter()
    while True:
        now = datetime.now(UTC)
        con.execute("BEGIN IMMEDIATE")
        row = con.execute(_FLOOR_CLAIM, ("floor", stamp(now),
                                         stamp(now + timedelta(seconds=60)), stamp(now),
                                         stamp(now), stamp(now))).fetchone()
        con.execute("COMMIT")
        if row is None:
            break
        done = stamp(datetime.now(UTC))
        con.execute("BEGIN IMMEDIATE")
        con.execute(_FLOOR_DONE, (done, row[0], "floor"))
        con.execute(_FLOOR_EVENT, (row[3], json.dumps({"job_id": row[0], "step": row[4]}),
                                   done))
        con.execute("COMMIT")
        ran += 1
    total = time.perf_counter() - started
    con.close()
    return Result("hand SQL", "floor (sqlite3)", 1, ran, enq, total, ran / total,
                  ran / total, _counts(settings).get("failed", 0))


def run_huey(home: Path, jobs: int, workers: int, worker_type: str,
             timeout: float) -> Result | None:
    try:
        from huey import SqliteHuey
    except ImportError:
        return None
    huey = SqliteHuey("bench", filename=str(home / "huey.db"))

    @huey.task()
    def noop() -> None:
        return None

    started = time.perf_counter()
    for _ in range(jobs):
        noop()
    enq = jobs / (time.perf_counter() - started)
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    consumer = huey.create_consumer(workers=workers, worker_type=worker_type, periodic=False)
    t0 = time.monotonic()
    consumer.start()
    try:
        done_at = wait_until(lambda: huey.pending_count() == 0, timeout=timeout,
                             interval=0.05, what="huey queue to drain")
    finally:
        consumer.stop(graceful=True)
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    total = done_at - t0
    return Result("huey", f"SqliteHuey {worker_type}", workers, jobs, enq, total, jobs / total,
                  float("nan"))


def _print_profile(profiler: cProfile.Profile) -> None:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(30)
    print("\n-- cProfile of the inline run (cumulative, top 30) --")
    print(out.getvalue())
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(20)
    print("-- cProfile of the inline run (own time, top 20) --")
    print(out.getvalue())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2000, help="no-op jobs per measurement")
    parser.add_argument("--batch", type=int, default=500, help="jobs per enqueue transaction")
    parser.add_argument("--workers", default="1,2", help="local worker counts, comma separated")
    parser.add_argument("--modes", default="inline,local,floor,huey",
                        help="any of inline, local, floor, huey (comma separated); floor is "
                        "the same claim/complete SQL by hand on sqlite3, for reference")
    parser.add_argument("--huey-worker-type", default="process", choices=("process", "thread"))
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per measurement")
    parser.add_argument("--profile", action="store_true", help="cProfile the inline run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary homes")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    modes = {m.strip() for m in args.modes.split(",") if m.strip()}
    worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]

    clean_environment()
    header(f"engine no-op throughput ({args.jobs} jobs, SQLite, WAL)")
    results: list[Result] = []
    notes: list[str] = []
    if "inline" in modes:
        with temp_home(args.keep) as home:
            results.append(run_inline(home, args.jobs, args.batch, args.profile))
    if "local" in modes:
        for w in worker_counts:
            with temp_home(args.keep) as home:
                results.append(run_local(home, args.jobs, args.batch, w, args.timeout))
    if "floor" in modes:
        with temp_home(args.keep) as home:
            results.append(run_floor(home, args.jobs, args.batch))
    if "huey" in modes:
        for w in worker_counts:
            with temp_home(args.keep) as home:
                r = run_huey(home, args.jobs, w, args.huey_worker_type, args.timeout)
            if r is None:
                notes.append("huey not installed; comparison skipped")
                break
            results.append(r)

    print_table(
        ["system", "executor", "workers", "jobs", "enqueue/s", "total s", "jobs/s",
         "steady jobs/s", "failed"],
        [[r.system, r.mode, r.workers, r.jobs, r.enqueue_per_s, r.total_s, r.per_s,
          r.steady_per_s, r.failed] for r in results])
    print("   total s: from executor start (process spawn included) until all jobs were done;")
    print("   steady: jobs / (last finished_at - first started_at) from the job rows.")
    print("   hand SQL floor: not Conveyor's code; its two transactions per job in raw SQL.")
    for note in notes:
        print(note)
    payload = {"benchmark": "engine_noop", "args": vars(args),
               "results": [asdict(r) for r in results], "notes": notes}
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
