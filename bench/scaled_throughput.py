"""Scale-out: Celery + Redis + PostgreSQL versus the embedded default, on one machine.

Two workloads, each on the embedded default (SQLite in WAL mode, local files, the local
executor) and on the scaled-out stack (PostgreSQL, a Celery queue of its own on Redis, one
``conveyor worker --executor celery`` process), with the same number of worker processes
(default 2) and the same work:

1. **No-op jobs** (``bench.noop``): N jobs (default 1,000) enqueued in transactions of 500
   (on Celery with the outbox publisher installed, as ``conveyor.runtime.prepare`` does, so
   each batch is published right after its commit).
   *cold*: the jobs wait in the queue when the workers start; timed from the start of the
   executor (``LocalExecutor.start()`` / spawning ``conveyor worker``) until all are final.
   *warm*: N more jobs enqueued to the running, warmed-up workers; timed from the first
   enqueue until all are final. *steady*: N / (last ``finished_at`` - first ``started_at``)
   of the batch, from the job rows. With ``--brokers redis,rabbitmq`` (the default) the
   Celery measurement also runs over RabbitMQ. To tell the database's share from the
   broker's, the local executor also runs on PostgreSQL (``local+pg``), and, on that
   database, both claim paths run in this process without any executor (the local loop's
   "claim the next due job" and the Celery task's "claim this id"). Also printed: the
   Celery task runtime (from the worker's log), the CPU time per job of the executors'
   processes (warm, from Linux's ``/proc``) and what one PostgreSQL commit costs here.
2. **Photos** (the photos pipeline, the default ``local`` provider: dimensions, EXIF,
   colours, hashes, quality, OCR): P synthetic photos (default 60, about 1200 x 900 JPEG
   with signs of text on them, deterministic by ``--seed``) uploaded through
   ``create_photo`` (no HTTP) and timed until every one is ``completed`` or ``failed``.
   Files are local on both sides (the Celery side shares the home folder with its worker;
   no S3). *cold*: a few warm-up photos uploaded as the workers start (spawn, imports, OCR
   model load inside the measurement) until they are done; *warm*: the P photos on the
   warmed-up workers, from the first upload until the last is final.
   *raw*: the same work without any executor, in this process, sequentially after a
   warm-up: the sandboxed decode to the canonical JPEG, the thumbnail and perceptual hash,
   and ``LocalProvider.process_image`` for each photo. Its rate x W processes is the ideal;
   measured / ideal shows what each executor costs on top of the work itself. The same
   work in a pool of W spawned processes shows what the machine gives W processes then.

Everything is created for the run and removed on exit, also on Ctrl-C or SIGTERM: the
PostgreSQL databases (``conveyor_bench_*``), the Celery queues (``conveyor-bench-*``), the
worker processes and the temporary folders.

    .venv/bin/python bench/scaled_throughput.py
    .venv/bin/python bench/scaled_throughput.py --jobs 2000 --photos 30 --brokers redis
    .venv/bin/python bench/scaled_throughput.py --parts photos --json /tmp/scale.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    REPO,
    bench_settings,
    clean_environment,
    header,
    mean,
    print_table,
    wait_until,
    write_json,
)

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
FINAL = ("completed", "failed")
SYNCHRONOUS_COMMIT = ""  # --pg-synchronous-commit: set on the benchmark's databases only
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")


@dataclass
class NoopRun:
    setup: str  # "embedded" (local executor, SQLite), "local+pg" or "celery"
    broker: str  # "-" (the job table), "redis", "rabbitmq"
    database: str  # "sqlite" or "postgresql"
    workers: int
    phase: str  # cold or warm
    jobs: int
    enqueue_per_s: float
    total_s: float
    per_s: float
    steady_per_s: float
    failed: int
    ready_s: float = float("nan")  # cold celery: until the worker printed "ready."
    workers_seen: int = 0  # distinct worker ids in the batch's job rows
    commit_ms: float = float("nan")  # local+pg: a one-row INSERT transaction, for scale
    task_ms: float = float("nan")  # celery: mean task runtime from the worker's log
    # warm: CPU time per job of the executor's processes, by group ("workers" for the local
    # executor; "pool", "consumer" and "other" for celery), from /proc
    cpu_ms: dict[str, float] = field(default_factory=dict)
    # local+pg: the two claim paths run in this process, no executor, no broker: ms/job
    # ("next wall", "next cpu", "by_id wall", "by_id cpu")
    inprocess: dict[str, float] = field(default_factory=dict)

    @property
    def job_ms(self) -> float:
        """Wall time per job per worker process in the steady state."""
        return self.workers * 1000 / self.steady_per_s if self.steady_per_s else float("nan")


@dataclass
class PhotoRun:
    setup: str
    broker: str
    database: str
    workers: int
    phase: str  # cold (warm-up photos, workers starting) or warm
    photos: int
    wall_s: float
    per_min: float
    steady_per_min: float
    vs_ideal: float  # per_min / (raw per_min x workers)
    vs_pool: float  # per_min / raw pool per_min (measured with ``workers`` processes)
    upload_ms: float  # mean create_photo time
    decode_ms: float  # mean DECODE tier time in the step (audit rows)
    analyse_ms: float  # mean AI_PROCESS tier time in the step (audit rows)
    busy: float  # sum of job processing times / (workers x wall)
    completed: int
    failed: int
    first_done_s: float = float("nan")  # cold: from executor start to the first photo done
    workers_seen: int = 0


@dataclass
class RawRun:
    photos: int
    decode_ms: float
    thumbnail_ms: float
    analyse_ms: float
    total_ms: float
    per_min: float  # one process
    ideal_per_min: float  # x workers
    workers: int
    warmup_s: float
    pool_per_min: float = float("nan")  # measured: the same work in a pool of ``workers``
    notes: list[str] = field(default_factory=list)


# -- clean-up ----------------------------------------------------------------------------


class Cleanup:
    """Callbacks run in reverse order on exit; each one's failure is reported, not raised."""

    def __init__(self) -> None:
        self._callbacks: list[tuple[str, Callable[[], None]]] = []

    def add(self, what: str, fn: Callable[[], None]) -> Callable[[], None]:
        entry = (what, fn)
        self._callbacks.append(entry)

        def run_now() -> None:
            if entry in self._callbacks:
                self._callbacks.remove(entry)
                self._run(what, fn)

        return run_now

    @staticmethod
    def _run(what: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:
            print(f"   clean-up: {what}: {type(exc).__name__}: {exc}", file=sys.stderr)

    def close(self) -> None:
        while self._callbacks:
            what, fn = self._callbacks.pop()
            self._run(what, fn)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# -- services ------------------------------------------------------------------------------


def reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url.replace("+psycopg", ""))
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1",
                                       parts.port or default_port), timeout=1):
            return True
    except OSError:
        return False


def _admin_engine(admin_url: str) -> Any:
    from sqlalchemy import create_engine

    return create_engine(admin_url, isolation_level="AUTOCOMMIT", pool_size=1,
                         max_overflow=0)


def create_database(admin_url: str, cleanup: Cleanup) -> tuple[str, Callable[[], None]]:
    """A fresh PostgreSQL database for one measurement; returns its URL and its dropper."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    name = f"conveyor_bench_{uuid.uuid4().hex[:10]}"
    engine = _admin_engine(admin_url)
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
            if SYNCHRONOUS_COMMIT:
                conn.execute(text(f'ALTER DATABASE "{name}" SET synchronous_commit = '
                                  f"{SYNCHRONOUS_COMMIT}"))
    finally:
        engine.dispose()

    def drop() -> None:
        from conveyor.db.session import dispose_all

        dispose_all()
        dropper = _admin_engine(admin_url)
        try:
            with dropper.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            dropper.dispose()

    undo = cleanup.add(f"drop database {name}", drop)
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False), undo


def delete_queue(broker_url: str, queue: str) -> None:
    """Remove what Celery created on the broker for ``queue`` (unique to this run)."""
    if broker_url.startswith(("redis://", "rediss://")):
        import redis

        client = redis.Redis.from_url(broker_url)
        try:
            keys = list(client.scan_iter(match=f"*{queue}*"))
            if keys:
                client.delete(*keys)
        finally:
            client.close()
        return
    from kombu import Connection

    with Connection(broker_url, connect_timeout=5) as conn:
        for op in ("queue_delete", "exchange_delete"):
            with contextlib.suppress(Exception):
                getattr(conn.channel(), op)(queue)


class CeleryWorker:
    """One ``conveyor worker --executor celery --workers N`` process (its own session, so
    that the whole tree — pool children, dispatcher, decoders — is stopped together)."""

    def __init__(self, home: Path, settings: Any, processes: int) -> None:
        self.home = home
        self.settings = settings
        self.processes = processes
        self.log = home / f"celery-worker-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        s = self.settings
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        env.update({
            "CONVEYOR_HOME": str(self.home), "CONVEYOR_DATABASE_URL": s.resolved_database_url,
            "CONVEYOR_EXECUTOR": "celery", "CONVEYOR_BROKER_URL": s.broker_url,
            "CONVEYOR_CELERY_QUEUE": s.celery_queue, "CONVEYOR_WORKERS": str(self.processes),
            "CONVEYOR_PLUGINS": json.dumps(list(s.plugins)), "PYTHONUNBUFFERED": "1"})
        return env

    def start(self) -> float:
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "conveyor.cli", "worker", "--executor", "celery",
                 "--workers", str(self.processes)], cwd=REPO, env=self.env(), stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)
        return time.monotonic()

    def wait_ready(self, timeout: float = 120.0) -> float:
        deadline = time.monotonic() + timeout
        while b" ready." not in self.log.read_bytes():
            if self.proc is None or self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the celery worker did not start:\n{self.tail()}")
            time.sleep(0.05)
        return time.monotonic()

    def tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-chars:]
        return ""

    def log_size(self) -> int:
        with contextlib.suppress(OSError):
            return self.log.stat().st_size
        return 0

    def task_ms(self, since: int = 0) -> float:
        """Mean runtime of the tasks logged after byte ``since`` (Celery logs "Task …
        succeeded in 0.0061s" at INFO): Conveyor's claim, step and completion by id."""
        time.sleep(0.3)  # the last lines are written just after the last commit
        with open(self.log, "rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
        found = [float(m) for m in re.findall(r" succeeded in ([0-9.]+)s", text)]
        return 1000 * mean(found) if found else float("nan")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # warm shutdown: nothing is running now
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        with contextlib.suppress(ProcessLookupError):  # stragglers of the group, if any
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


# -- CPU time of the executor's processes (Linux /proc) ---------------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far (0 when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def session_groups(leader: int) -> dict[str, list[int]]:
    """A ``conveyor worker --executor celery`` session: its consumer (the Celery main
    process), its pool children (forked, same command line) and the rest (dispatcher,
    decoders, resource tracker)."""
    groups: dict[str, list[int]] = {"consumer": [leader], "pool": [], "other": []}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == leader:
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            if os.getsid(int(entry.name)) != leader:
                continue
            cmd = (entry / "cmdline").read_bytes()
            groups["pool" if b"conveyor.cli" in cmd else "other"].append(int(entry.name))
    return groups


def cpu_snapshot(groups: dict[str, list[int]]) -> dict[str, dict[int, float]]:
    return {name: {pid: cpu_seconds(pid) for pid in pids} for name, pids in groups.items()}


def cpu_per_job(before: dict[str, dict[int, float]], jobs: int) -> dict[str, float]:
    """ms of CPU per job in each group since ``before`` (processes that exited count 0)."""
    return {name: 1000 * sum(max(0.0, cpu_seconds(pid) - t) for pid, t in pids.items()) / jobs
            for name, pids in before.items()}


# -- job rows ------------------------------------------------------------------------------


def _dt(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def final_count(db: str) -> int:
    from sqlalchemy import func, select

    from conveyor.db.models import Job
    from conveyor.db.session import read_session

    with read_session(db) as session:
        return int(session.scalar(select(func.count()).select_from(Job)
                                  .where(Job.status.in_(FINAL))) or 0)


@dataclass
class BatchRows:
    first_start: datetime | None
    last_finish: datetime | None
    first_finish: datetime | None
    failed: int
    completed: int
    workers_seen: int
    processing_ms: float

    def steady(self, n: int) -> float:
        if self.first_start is None or self.last_finish is None:
            return float("nan")
        span = (self.last_finish - self.first_start).total_seconds()
        return n / span if span > 0 else float("nan")


def batch_rows(db: str, *, ids: Sequence[str] = (), item_ids: Sequence[str] = ()) -> BatchRows:
    from sqlalchemy import func, select

    from conveyor.db.models import Job
    from conveyor.db.session import read_session

    where = Job.id.in_(list(ids)) if ids else Job.item_id.in_(list(item_ids))
    with read_session(db) as session:
        first, last, first_done, workers, ms = session.execute(
            select(func.min(Job.started_at), func.max(Job.finished_at),
                   func.min(Job.finished_at), func.count(func.distinct(Job.locked_by)),
                   func.sum(Job.processing_time_ms)).where(where)).one()
        counts = dict(session.execute(select(Job.status, func.count()).where(where)
                                      .group_by(Job.status)).all())
    return BatchRows(_dt(first), _dt(last), _dt(first_done), int(counts.get("failed", 0)),
                     int(counts.get("completed", 0)), int(workers or 0), float(ms or 0))


# -- no-op jobs ----------------------------------------------------------------------------


def enqueue_noop(settings: Any, jobs: int, batch: int) -> tuple[list[str], float]:
    """``jobs`` no-op jobs in transactions of ``batch`` (published after each commit when
    the Celery publisher is installed); returns their ids and jobs/s."""
    from bench.noop import PIPELINE
    from conveyor.db.session import transaction
    from conveyor.engine.jobs import JobSpec, enqueue

    db = settings.resolved_database_url
    ids: list[str] = []
    started = time.perf_counter()
    while len(ids) < jobs:
        n = min(batch, jobs - len(ids))
        with transaction(db) as session:
            ids += [enqueue(session, JobSpec(pipeline=PIPELINE, step="noop")).id
                    for _ in range(n)]
    return ids, jobs / (time.perf_counter() - started)


class NoopSide:
    """One setup: a database, an executor that can be started, batches of no-op jobs."""

    def __init__(self, settings: Any, setup: str, broker: str, database: str, workers: int,
                 batch: int, timeout: float) -> None:
        from conveyor.runtime import prepare

        self.settings = prepare(settings)
        self.db = settings.resolved_database_url
        self.setup, self.broker, self.database = setup, broker, database
        self.workers, self.batch, self.timeout = workers, batch, timeout
        self.enqueued = 0
        self.cpu_groups: Callable[[], dict[str, list[int]]] | None = None

    def _wait(self, what: str) -> float:
        target, db = self.enqueued, self.db
        return wait_until(lambda: final_count(db) >= target, timeout=self.timeout,
                          interval=0.05, what=what)

    def cold(self, jobs: int, start: Callable[[], float],
             ready: Callable[[], float] | None = None) -> NoopRun:
        ids, enq = enqueue_noop(self.settings, jobs, self.batch)
        self.enqueued += jobs
        started = start()
        ready_at = ready() if ready is not None else float("nan")
        done = self._wait(f"{jobs} cold no-op jobs ({self.setup}, {self.broker})")
        return self._result("cold", ids, enq, done - started, ready_at - started)

    def warm(self, jobs: int) -> NoopRun:
        cpu = cpu_snapshot(self.cpu_groups()) if self.cpu_groups is not None else None
        started = time.monotonic()
        ids, enq = enqueue_noop(self.settings, jobs, self.batch)
        self.enqueued += jobs
        done = self._wait(f"{jobs} warm no-op jobs ({self.setup}, {self.broker})")
        result = self._result("warm", ids, enq, done - started)
        if cpu is not None:
            result.cpu_ms = cpu_per_job(cpu, jobs)
        return result

    def _result(self, phase: str, ids: list[str], enq: float, total: float,
                ready_s: float = float("nan")) -> NoopRun:
        rows = batch_rows(self.db, ids=ids)
        return NoopRun(self.setup, self.broker, self.database, self.workers, phase, len(ids),
                       enq, total, len(ids) / total, rows.steady(len(ids)), rows.failed,
                       ready_s, rows.workers_seen)


def noop_local(tmp: Path, args: argparse.Namespace, cleanup: Cleanup,
               postgres: bool = False) -> list[NoopRun]:
    """The local executor (workers poll the job table): on SQLite, the embedded default,
    or on PostgreSQL, to tell the database's share of the cost from the broker's."""
    from bench.noop import build_noop_runner
    from conveyor.engine.executors.local import LocalExecutor

    drop: Callable[[], None] | None = None
    overrides: dict[str, Any] = {}
    if postgres:
        overrides["database_url"], drop = create_database(args.pg_url, cleanup)
    settings = bench_settings(tmp / f"noop-local-{'pg' if postgres else 'sqlite'}",
                              workers=args.workers, **overrides)
    side = NoopSide(settings, "local+pg" if postgres else "embedded", "-",
                    "postgresql" if postgres else "sqlite", args.workers, args.batch,
                    args.timeout)
    executor = LocalExecutor(settings, build_noop_runner, workers=args.workers)
    side.cpu_groups = lambda: {"workers": executor.pids()}

    def start() -> float:
        t = time.monotonic()
        executor.start()
        return t

    try:
        runs = [side.cold(args.jobs, start)]
        runs.append(side.warm(args.jobs))
    finally:
        executor.stop()
    try:
        if postgres:
            runs[-1].inprocess = claim_paths(settings, min(args.jobs, 500), args.batch)
            runs[-1].commit_ms = commit_ms(settings.resolved_database_url)
    finally:
        if drop is not None:
            drop()
    return runs


def claim_paths(settings: Any, jobs: int, batch: int) -> dict[str, float]:
    """Wall and CPU ms per no-op job in this process, no executor and no broker: the local
    executor's loop (claim the next due job) and the Celery task's path (claim by id)."""
    import resource

    from bench.noop import build_noop_runner

    runner = build_noop_runner(settings)
    runner.warm_up()
    out: dict[str, float] = {}
    for name in ("next", "by_id"):
        ids, _ = enqueue_noop(settings, jobs, batch)
        before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        if name == "by_id":
            for job_id in ids:
                runner.run_by_id(job_id)
        else:
            while runner.run_one():
                pass
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        out[f"{name} wall"], out[f"{name} cpu"] = 1000 * wall / jobs, 1000 * cpu / jobs
    return out


def commit_ms(db_url: str, n: int = 200) -> float:
    """Mean time of a one-row INSERT transaction on ``db_url`` (what a commit costs)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(db_url, pool_size=1, max_overflow=0)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE bench_commit (id serial PRIMARY KEY, v int)"))
        started = time.perf_counter()
        for i in range(n):
            with engine.begin() as conn:
                conn.execute(text("INSERT INTO bench_commit (v) VALUES (:v)"), {"v": i})
        took = time.perf_counter() - started
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE bench_commit"))
    finally:
        engine.dispose()
    return 1000 * took / n


def noop_celery(tmp: Path, args: argparse.Namespace, broker: str, broker_url: str,
                cleanup: Cleanup) -> list[NoopRun]:
    from conveyor.engine import outbox
    from conveyor.engine.executors.celery import publisher_for

    home = tmp / f"noop-celery-{broker}"
    db_url, drop = create_database(args.pg_url, cleanup)
    queue = f"conveyor-bench-{uuid.uuid4().hex[:10]}"
    forget_queue = cleanup.add(f"delete queue {queue}", lambda: delete_queue(broker_url, queue))
    settings = bench_settings(home, workers=args.workers, database_url=db_url,
                              executor="celery", broker_url=broker_url, celery_queue=queue,
                              plugins=["bench.noop"])
    unpublish = cleanup.add("uninstall the publisher", lambda: _unpublish(settings))
    side = NoopSide(settings, "celery", broker, "postgresql", args.workers, args.batch,
                    args.timeout)
    assert outbox.installed() and publisher_for(settings)
    worker = CeleryWorker(home, settings, args.workers)
    side.cpu_groups = lambda: session_groups(worker.proc.pid) if worker.proc else {}
    stop = cleanup.add("stop the celery worker", worker.stop)
    try:
        runs = [side.cold(args.jobs, worker.start, worker.wait_ready)]
        runs[0].task_ms = worker.task_ms()
        if runs[0].workers_seen < args.workers:
            print(f"   note: only {runs[0].workers_seen} of {args.workers} pool processes "
                  f"ran a cold job over {broker}; the warm run may include a cold start")
        offset = worker.log_size()
        runs.append(side.warm(args.jobs))
        runs[1].task_ms = worker.task_ms(offset)
    except Exception:
        print(f"-- the celery worker's log (end):\n{worker.tail()}", file=sys.stderr)
        raise
    finally:
        stop()
        unpublish()
        forget_queue()
        drop()
    return runs


def _unpublish(settings: Any) -> None:
    from conveyor.engine import outbox
    from conveyor.engine.executors.celery import publisher_for

    outbox.uninstall()
    publisher_for(settings).app.close()


# -- synthetic photos ----------------------------------------------------------------------

WORDS = ["HARBOUR", "STREET", "MARKET", "OPEN", "DAILY", "CAFE", "NORTH", "STATION",
         "PLATFORM", "EXIT", "BOOKS", "BAKERY", "GARDEN", "MUSEUM", "HOTEL", "PARKING",
         "TICKETS", "SALE", "River", "Lane", "Avenue", "Closed", "Sunday", "Fresh", "Bread",
         "Coffee", "Tea", "Welcome", "Gallery", "Pharmacy", "Bus", "Stop", "Route"]
SIZES = [(1200, 900), (1200, 900), (1200, 900), (1280, 960), (900, 1200), (1200, 800),
         (1024, 1024), (1152, 864)]


def _font(size: int) -> Any:
    from PIL import ImageFont

    for name in ("DejaVuSans-Bold.ttf", "DejaVuSans.ttf"):
        path = FONT_DIR / name
        if path.exists():
            return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size=size)


def make_photo(path: Path, rng: random.Random) -> Path:
    """A ~1200 x 900 JPEG: a gradient, shapes, grain and one to three signs with text."""
    from PIL import Image, ImageDraw

    w, h = rng.choice(SIZES)

    def colour(lo: int = 0, hi: int = 255) -> tuple[int, int, int]:
        return (rng.randint(lo, hi), rng.randint(lo, hi), rng.randint(lo, hi))

    top, bottom = colour(), colour()
    column = Image.new("RGB", (1, 256))
    for y in range(256):
        column.putpixel((0, y), tuple(int(a + (b - a) * y / 255)
                                      for a, b in zip(top, bottom, strict=True)))
    img = column.resize((w, h))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(4, 10)):
        x0, y0 = rng.randint(0, w - 50), rng.randint(0, h - 50)
        box = (x0, y0, x0 + rng.randint(40, w // 2), y0 + rng.randint(40, h // 2))
        if rng.random() < 0.5:
            draw.ellipse(box, fill=colour())
        else:
            draw.rectangle(box, fill=colour())
    for _ in range(rng.randint(1, 3)):
        text = " ".join(rng.sample(WORDS, rng.randint(1, 3)))
        if rng.random() < 0.4:
            text += f" {rng.randint(1, 999)}"
        font = _font(rng.randint(34, 72))
        x, y = rng.randint(20, w // 3), rng.randint(20, h - 120)
        left, upper, right, lower = draw.textbbox((x, y), text, font=font)
        draw.rectangle((left - 14, upper - 12, right + 14, lower + 12), fill=colour(200, 255))
        draw.text((x, y), text, fill=colour(0, 60), font=font)
    grain = Image.effect_noise((w, h), 24).convert("RGB")
    img = Image.blend(img, grain, 0.06)
    exif = Image.Exif()
    if rng.random() < 0.6:
        exif[0x010F] = "BenchCam"  # Make
        exif[0x0110] = f"Model {rng.randint(1, 9)}"
        exif[0x0132] = f"2024:0{rng.randint(1, 9)}:1{rng.randint(0, 9)} 12:00:00"
    img.save(path, "JPEG", quality=88, exif=exif)
    return path


def make_photos(folder: Path, count: int, seed: int, prefix: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    return [make_photo(folder / f"{prefix}-{i:04d}.jpg", rng) for i in range(count)]


# -- photos: raw cost ----------------------------------------------------------------------


class RawWorker:
    """The step's image work without an executor: the sandboxed decode to the canonical
    JPEG, the thumbnail + perceptual hash, and ``LocalProvider.process_image``."""

    def __init__(self, work: Path) -> None:
        from conveyor.media.image import ImageLimits
        from conveyor.providers.vision.local import LocalProvider

        settings = bench_settings(work)
        self.limits = ImageLimits.from_settings(settings)
        # as conveyor.providers.vision.factory builds it for CONVEYOR_AI_PROVIDER=local
        self.provider = LocalProvider(ocr_provider=settings.ocr_provider)
        self.work = work
        work.mkdir(parents=True, exist_ok=True)

    def warm_up(self, photos: Sequence[Path]) -> None:
        self.provider.warm_up()
        for src in photos:
            self.one(src)

    def one(self, src: Path) -> tuple[float, float, float]:
        """Seconds spent decoding, making the thumbnail, and in ``process_image``."""
        from conveyor.media.image import canonicalize_isolated
        from conveyor.pipelines.photos.steps import _thumbnail
        from conveyor.providers.vision.base import PhotoInput

        t0 = time.perf_counter()
        dst = self.work / "canonical.jpg"
        image = canonicalize_isolated(src, dst, self.limits)
        jpeg = dst.read_bytes()
        t1 = time.perf_counter()
        _thumbnail(jpeg)
        t2 = time.perf_counter()
        self.provider.process_image(PhotoInput(
            jpeg=jpeg, width=image.width, height=image.height,
            source_format=image.source_format, exif=dict(image.exif), filename=src.name))
        return t1 - t0, t2 - t1, time.perf_counter() - t2


_RAW: RawWorker | None = None


def _pool_init(work: str, warmup: list[str]) -> None:
    global _RAW
    _RAW = RawWorker(Path(work) / f"pool-{os.getpid()}")
    _RAW.warm_up([Path(p) for p in warmup])


def _pool_ready(pause: float) -> int:
    time.sleep(pause)  # keeps this process busy so that every process gets one
    return os.getpid()


def _pool_one(path: str) -> tuple[float, float, float]:
    assert _RAW is not None
    return _RAW.one(Path(path))


def raw_photos(paths: list[Path], warmup: list[Path], workers: int, tmp: Path) -> RawRun:
    """One process, sequentially, after a warm-up; then the same photos in a pool of
    ``workers`` spawned processes (each warmed up first), as the attainable ceiling."""
    raw = RawWorker(tmp / "raw")
    started = time.perf_counter()
    raw.warm_up(warmup[:2])
    warmup_s = time.perf_counter() - started
    times = [raw.one(src) for src in paths]
    total = sum(sum(t) for t in times)
    per_min = len(paths) / total * 60
    result = RawRun(len(paths), 1000 * mean([t[0] for t in times]),
                    1000 * mean([t[1] for t in times]), 1000 * mean([t[2] for t in times]),
                    1000 * total / len(paths), per_min, per_min * workers, workers, warmup_s)
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                                 initializer=_pool_init,
                                 initargs=(str(tmp), [str(p) for p in warmup[:1]])) as pool:
            pids = set(pool.map(_pool_ready, [0.5] * workers))
            if len(pids) < workers:
                result.notes.append(f"raw pool: only {len(pids)} of {workers} processes "
                                    "were warmed up before timing")
            started = time.perf_counter()
            list(pool.map(_pool_one, [str(p) for p in paths]))
            wall = time.perf_counter() - started
        result.pool_per_min = len(paths) / wall * 60
    return result


# -- photos: through the pipeline ------------------------------------------------------------


class PhotoSide:
    def __init__(self, settings: Any, setup: str, broker: str, database: str, workers: int,
                 timeout: float) -> None:
        from conveyor.accounts import create_user
        from conveyor.runtime import prepare, storage_for

        self.settings = prepare(settings)
        self.db = settings.resolved_database_url
        self.storage = storage_for(settings)
        self.owner_id = create_user(self.db, "bench")[0].id
        self.setup, self.broker, self.database = setup, broker, database
        self.workers, self.timeout = workers, timeout

    def upload(self, paths: list[Path]) -> tuple[list[str], float]:
        from conveyor.pipelines.photos.service import create_photo

        ids: list[str] = []
        started = time.perf_counter()
        for path in paths:
            with open(path, "rb") as f:
                ids.append(create_photo(self.settings, self.storage, owner_id=self.owner_id,
                                        filename=path.name, stream=f,
                                        content_type="image/jpeg").photo_id)
        return ids, 1000 * (time.perf_counter() - started) / max(1, len(paths))

    def statuses(self, ids: list[str]) -> dict[str, int]:
        from sqlalchemy import func, select

        from conveyor.db.session import read_session
        from conveyor.pipelines.photos.models import Photo

        with read_session(self.db) as session:
            rows = session.execute(select(Photo.ai_processing_status, func.count())
                                   .where(Photo.id.in_(ids))
                                   .group_by(Photo.ai_processing_status)).all()
        return {status: int(n) for status, n in rows}

    def wait(self, ids: list[str], what: str, alive: Callable[[], bool]) -> float:
        def done() -> bool:
            if not alive():
                raise RuntimeError(f"the workers died while waiting for {what}")
            counts = self.statuses(ids)
            return sum(counts.get(s, 0) for s in FINAL) >= len(ids)

        return wait_until(done, timeout=self.timeout, interval=0.1, what=what)

    def tier_ms(self, ids: list[str]) -> dict[str, float]:
        from sqlalchemy import func, select

        from conveyor.db.models import AuditEvent
        from conveyor.db.session import read_session

        with read_session(self.db) as session:
            rows = session.execute(select(AuditEvent.step, func.avg(AuditEvent.duration_ms))
                                   .where(AuditEvent.item_id.in_(ids),
                                          AuditEvent.step.in_(("DECODE", "AI_PROCESS")))
                                   .group_by(AuditEvent.step)).all()
        return {step: float(ms) for step, ms in rows if ms is not None}

    def result(self, phase: str, ids: list[str], wall: float, upload_ms: float,
               raw: RawRun | None, start_utc: datetime | None = None) -> PhotoRun:
        rows = batch_rows(self.db, item_ids=ids)
        tiers = self.tier_ms(ids)
        per_min = len(ids) / wall * 60
        first_done = float("nan")
        if start_utc is not None and rows.first_finish is not None:
            first_done = (rows.first_finish.replace(tzinfo=rows.first_finish.tzinfo or UTC)
                          - start_utc).total_seconds()
        ideal = raw.ideal_per_min if raw is not None else float("nan")
        pool = raw.pool_per_min if raw is not None else float("nan")
        return PhotoRun(self.setup, self.broker, self.database, self.workers, phase, len(ids),
                        wall, per_min, rows.steady(len(ids)) * 60, per_min / ideal,
                        per_min / pool, upload_ms,
                        tiers.get("DECODE", float("nan")), tiers.get("AI_PROCESS", float("nan")),
                        rows.processing_ms / (1000 * self.workers * wall), rows.completed,
                        rows.failed, first_done, rows.workers_seen)

    def measure(self, start: Callable[[], float], alive: Callable[[], bool],
                warmups: list[list[Path]], paths: list[Path], raw: RawRun | None) -> list[PhotoRun]:
        """Cold: the first warm-up photos are uploaded as the workers start; more warm-up
        rounds while a pool process has not run a photo yet. Warm: ``paths``."""
        start_utc = datetime.now(UTC)
        started = start()
        warm_ids, upload_ms = self.upload(warmups[0])
        done = self.wait(warm_ids, f"{len(warm_ids)} warm-up photos ({self.setup})", alive)
        runs = [self.result("cold", warm_ids, done - started, upload_ms, raw, start_utc)]
        seen = runs[0].workers_seen
        for extra in warmups[1:]:
            if seen >= self.workers:
                break
            ids, _ = self.upload(extra)
            self.wait(ids, f"{len(ids)} more warm-up photos ({self.setup})", alive)
            warm_ids += ids
            seen = batch_rows(self.db, item_ids=warm_ids).workers_seen
        if seen < self.workers:
            print(f"   note: {self.setup}: only {seen} of {self.workers} worker processes ran "
                  "a warm-up photo; the warm run includes a cold start")
        started = time.monotonic()
        ids, upload_ms = self.upload(paths)
        done = self.wait(ids, f"{len(ids)} photos ({self.setup})", alive)
        runs.append(self.result("warm", ids, done - started, upload_ms, raw))
        return runs


def photos_embedded(tmp: Path, args: argparse.Namespace, warmups: list[list[Path]],
                    paths: list[Path], raw: RawRun | None) -> list[PhotoRun]:
    from conveyor.engine.executors.local import LocalExecutor
    from conveyor.runtime import build_runner

    settings = bench_settings(tmp / "photos-embedded", workers=args.workers)
    side = PhotoSide(settings, "embedded", "-", "sqlite", args.workers, args.timeout)
    executor = LocalExecutor(settings, build_runner, workers=args.workers)

    def start() -> float:
        t = time.monotonic()
        executor.start()
        return t

    try:
        return side.measure(start, lambda: True, warmups, paths, raw)
    finally:
        executor.stop()


def photos_celery(tmp: Path, args: argparse.Namespace, warmups: list[list[Path]],
                  paths: list[Path], raw: RawRun | None, cleanup: Cleanup) -> list[PhotoRun]:
    home = tmp / "photos-celery"
    db_url, drop = create_database(args.pg_url, cleanup)
    queue = f"conveyor-bench-{uuid.uuid4().hex[:10]}"
    forget_queue = cleanup.add(f"delete queue {queue}",
                               lambda: delete_queue(args.redis_url, queue))
    settings = bench_settings(home, workers=args.workers, database_url=db_url,
                              executor="celery", broker_url=args.redis_url, celery_queue=queue)
    unpublish = cleanup.add("uninstall the publisher", lambda: _unpublish(settings))
    side = PhotoSide(settings, "celery", "redis", "postgresql", args.workers, args.timeout)
    worker = CeleryWorker(home, settings, args.workers)
    stop = cleanup.add("stop the celery worker", worker.stop)
    try:
        return side.measure(worker.start, worker.alive, warmups, paths, raw)
    except Exception:
        print(f"-- the celery worker's log (end):\n{worker.tail()}", file=sys.stderr)
        raise
    finally:
        stop()
        unpublish()
        forget_queue()
        drop()


# -- main ----------------------------------------------------------------------------------


def _cpu(groups: dict[str, float]) -> str:
    if not groups:
        return "-"
    if set(groups) == {"workers"}:
        return f"{groups['workers']:.2f}"
    return " + ".join(f"{groups.get(k, 0.0):.2f}" for k in ("pool", "consumer", "other"))


def _ratio(a: float, b: float) -> float:
    return a / b if b and b == b and a == a else float("nan")


def ratios(noop: list[NoopRun], photos: list[PhotoRun]) -> dict[str, float]:
    """Each setup against the embedded default, same phase and workers (> 1: faster), and
    Celery against the local executor on the same PostgreSQL (the broker's own share)."""
    out: dict[str, float] = {}

    def pick(runs: Sequence[Any], setup: str, broker: str, phase: str) -> Any:
        return next((r for r in runs if (r.setup, r.broker, r.phase) == (setup, broker, phase)),
                    None)

    for phase in ("cold", "warm"):
        base = pick(noop, "embedded", "-", phase)
        local_pg = pick(noop, "local+pg", "-", phase)
        for setup, broker in (("local+pg", "-"), ("celery", "redis"), ("celery", "rabbitmq")):
            other = pick(noop, setup, broker, phase)
            name = setup if broker == "-" else f"{setup} {broker}"
            if base and other:
                out[f"noop {phase} {name} / embedded"] = _ratio(other.per_s, base.per_s)
                out[f"noop {phase} {name} / embedded, steady"] = _ratio(other.steady_per_s,
                                                                        base.steady_per_s)
            if local_pg and other and setup == "celery":
                out[f"noop {phase} {name} / local+pg, steady"] = _ratio(
                    other.steady_per_s, local_pg.steady_per_s)
        pbase, pother = (pick(photos, "embedded", "-", phase),
                         pick(photos, "celery", "redis", phase))
        if pbase and pother:
            out[f"photos {phase} celery redis / embedded"] = _ratio(pother.per_min,
                                                                    pbase.per_min)
    return out


def run(args: argparse.Namespace, tmp: Path, cleanup: Cleanup) -> dict[str, Any]:
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    notes: list[str] = []
    celery_ok = True
    try:
        import celery  # noqa: F401
    except ImportError:
        celery_ok = False
        notes.append("celery is not installed (pip install 'conveyor[scale]'): Celery skipped")
    if celery_ok and not reachable(args.pg_url, 5432):
        celery_ok = False
        notes.append(f"PostgreSQL not reachable at {urlsplit(args.pg_url).hostname}: "
                     "Celery skipped")
    broker_urls = {"redis": (args.redis_url, 6379), "rabbitmq": (args.amqp_url, 5672)}
    usable: dict[str, str] = {}
    for b in brokers:
        if b not in broker_urls:
            raise SystemExit(f"unknown broker {b!r}: redis or rabbitmq")
        url, port = broker_urls[b]
        if celery_ok and reachable(url, port):
            usable[b] = url
        elif celery_ok:
            notes.append(f"{b} not reachable: Celery over {b} skipped")

    if SYNCHRONOUS_COMMIT:
        notes.append(f"synchronous_commit = {SYNCHRONOUS_COMMIT} on this run's PostgreSQL "
                     "databases")
        print(f"   {notes[-1]}")
    noop: list[NoopRun] = []
    if "noop" in parts:
        print(f"-- no-op jobs: {args.jobs} per batch, {args.workers} worker processes", flush=True)
        noop += noop_local(tmp, args, cleanup)
        if celery_ok and not args.no_local_pg:
            noop += noop_local(tmp, args, cleanup, postgres=True)
        for broker, url in usable.items():
            noop += noop_celery(tmp, args, broker, url, cleanup)
        print_table(
            ["setup", "broker", "database", "workers", "phase", "jobs", "enqueue/s", "total s",
             "jobs/s", "steady jobs/s", "ms/job/process", "in task ms", "CPU ms/job",
             "failed"],
            [[r.setup, r.broker, r.database, r.workers, r.phase, r.jobs, r.enqueue_per_s,
              r.total_s, r.per_s, r.steady_per_s, r.job_ms, r.task_ms, _cpu(r.cpu_ms),
              r.failed] for r in noop])
        for n in noop:
            if n.setup == "celery" and n.phase == "cold":
                print(f"   celery over {n.broker}: the worker printed 'ready.' {n.ready_s:.1f} s "
                      "after it was spawned")
        print("   cold: jobs waiting, timed from starting the executor (process start "
              "included); warm: enqueued to running workers, timed from the first enqueue;",
              flush=True)
        print("   steady: jobs / (last finished_at - first started_at) from the job rows; "
              "ms/job/process: workers / steady rate; in task ms: mean Celery task runtime "
              "(claim by id, step, completion) from the worker's log;", flush=True)
        print("   CPU ms/job (warm, from /proc): the local worker processes; for Celery "
              "pool children + consumer (main process) + other (dispatcher...).", flush=True)
        for n in noop:
            if n.inprocess:
                i = n.inprocess
                print(f"   PostgreSQL, one process, no executor: claim next + run + complete "
                      f"{i['next wall']:.2f} ms/job ({i['next cpu']:.2f} ms CPU); claim by id "
                      f"(the Celery task's path) {i['by_id wall']:.2f} ms/job "
                      f"({i['by_id cpu']:.2f} ms CPU)", flush=True)
            if n.commit_ms == n.commit_ms:
                print(f"   PostgreSQL: a one-row INSERT transaction takes {n.commit_ms:.2f} ms "
                      "here (mean of 200, after the runs); a job makes two write "
                      "transactions (claim, completion + event)", flush=True)

    raw: RawRun | None = None
    photos: list[PhotoRun] = []
    if "photos" in parts:
        started = time.monotonic()
        folder = tmp / "photos"
        paths = make_photos(folder, args.photos, args.seed, "photo")
        rounds = [max(4, 2 * args.workers), args.workers, args.workers]
        warm_all = make_photos(folder, sum(rounds), args.seed + 1, "warmup")
        warmups, at = [], 0
        for n in rounds:
            warmups.append(warm_all[at:at + n])
            at += n
        megabytes = sum(p.stat().st_size for p in paths) / 1e6
        print(f"\n-- photos: {len(paths)} synthetic JPEGs ({megabytes:.1f} MB, made in "
              f"{time.monotonic() - started:.1f} s), {args.workers} worker processes, "
              f"provider local", flush=True)
        if not args.no_raw:
            raw = raw_photos(paths, warm_all, args.workers, tmp)
            print(f"   raw, 1 process: decode {raw.decode_ms:.0f} ms + thumbnail "
                  f"{raw.thumbnail_ms:.0f} ms + process_image {raw.analyse_ms:.0f} ms = "
                  f"{raw.total_ms:.0f} ms/photo → {raw.per_min:.1f}/min; ideal x"
                  f"{args.workers}: {raw.ideal_per_min:.1f}/min (warm-up {raw.warmup_s:.1f} s)",
                  flush=True)
            if raw.pool_per_min == raw.pool_per_min:
                print(f"   raw, pool of {args.workers} processes (measured): "
                      f"{raw.pool_per_min:.1f}/min = {raw.pool_per_min / raw.ideal_per_min:.2f}"
                      " of the ideal", flush=True)
            for note in raw.notes:
                print(f"   note: {note}")
        photos += photos_embedded(tmp, args, warmups, paths, raw)
        if "redis" in usable:
            photos += photos_celery(tmp, args, warmups, paths, raw, cleanup)
        elif celery_ok:
            notes.append("photos on Celery need Redis: skipped")
        w = args.workers
        print_table(
            ["setup", "broker", "database", "phase", "photos", "wall s", "photos/min",
             "steady/min", f"vs raw x{w}", f"vs raw pool {w}", "upload ms", "decode ms",
             "analyse ms", "busy", "failed"],
            [[r.setup, r.broker, r.database, r.phase, r.photos, r.wall_s, r.per_min,
              r.steady_per_min, f"{r.vs_ideal:.2f}", f"{r.vs_pool:.2f}", r.upload_ms,
              r.decode_ms, r.analyse_ms, f"{100 * r.busy:.0f} %", r.failed] for r in photos])
        for ph in photos:
            if ph.phase == "cold":
                print(f"   {ph.setup} cold: first photo done {ph.first_done_s:.1f} s after "
                      "the workers were started")
        print("   cold: warm-up photos uploaded as the workers start (spawn, imports, OCR "
              "model load included); warm: from the first upload until all are final;")
        print(f"   vs raw x{w}: photos/min / (raw 1-process rate x {w}); vs raw pool: / the "
              f"same work measured in a pool of {w} processes; decode, analyse: mean DECODE "
              "(decode + thumbnail + storage) / AI_PROCESS time inside the step (audit rows); "
              "busy: job time / (workers x wall).", flush=True)

    result_ratios = ratios(noop, photos)
    if result_ratios:
        print("\n-- ratios (> 1: faster than the reference)")
        for key, value in result_ratios.items():
            print(f"   {key}: {value:.2f}x")
    for note in notes:
        print(f"   {note}")
    return {"benchmark": "scaled_throughput",
            "args": {k: v for k, v in vars(args).items() if "url" not in k},
            "noop": [{**asdict(r), "job_ms": r.job_ms} for r in noop],
            "photos": [asdict(r) for r in photos],
            "raw": asdict(raw) if raw is not None else None, "ratios": result_ratios,
            "notes": notes}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000, help="no-op jobs per batch")
    parser.add_argument("--batch", type=int, default=500, help="jobs per enqueue transaction")
    parser.add_argument("--photos", type=int, default=60, help="timed photos per setup")
    parser.add_argument("--workers", type=int, default=2,
                        help="worker processes (local) / Celery pool processes")
    parser.add_argument("--parts", default="noop,photos", help="noop, photos (comma separated)")
    parser.add_argument("--brokers", default="redis,rabbitmq",
                        help="Celery brokers for the no-op jobs (photos: redis only)")
    parser.add_argument("--no-raw", action="store_true", help="skip the raw photo cost")
    parser.add_argument("--no-local-pg", action="store_true",
                        help="skip the no-op run of the local executor on PostgreSQL")
    parser.add_argument("--seed", type=int, default=2, help="seed of the synthetic photos")
    parser.add_argument("--pg-url", default=PG_URL,
                        help="a PostgreSQL database to connect to for CREATE/DROP DATABASE")
    parser.add_argument("--pg-synchronous-commit", choices=("on", "off"),
                        help="set synchronous_commit on the benchmark's databases (default: "
                        "the server's setting)")
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument("--amqp-url", default=AMQP_URL)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per batch")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    global SYNCHRONOUS_COMMIT
    SYNCHRONOUS_COMMIT = args.pg_synchronous_commit or ""

    clean_environment()
    header(f"scale-out throughput: embedded (SQLite, local) vs Celery (PostgreSQL + broker), "
           f"{args.workers} processes each")
    previous = signal.signal(signal.SIGTERM, _interrupt)
    cleanup = Cleanup()
    tmp = Path(tempfile.mkdtemp(prefix="conveyor-bench-scale-"))
    cleanup.add(f"remove {tmp}", lambda: shutil.rmtree(tmp, ignore_errors=True))
    interrupted = False
    try:
        payload = run(args, tmp, cleanup)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        # clean-up must not be cut short by a second Ctrl-C
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            cleanup.close()
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, previous)
    if interrupted:
        print("\ninterrupted: workers stopped, databases, queues and temporary files removed",
              file=sys.stderr)
        raise SystemExit(130)
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
