"""The local executor: N worker processes claiming from the database, and a reaper.

Worker processes are started with the ``spawn`` method so each gets a clean interpreter
(OCR runtimes are not fork-safe). The supervisor thread restarts a worker that dies
(``kill -9``, OOM) and periodically returns expired leases to the queue.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from multiprocessing.process import BaseProcess
from typing import Any

from sqlalchemy import select, update

from conveyor.config import Settings
from conveyor.db.base import utcnow
from conveyor.db.models import Job
from conveyor.db.session import read_session, transaction
from conveyor.engine.events import prune_events
from conveyor.engine.jobs import reap_expired_leases
from conveyor.engine.runner import Runner

log = logging.getLogger("conveyor.local")

RunnerFactory = Callable[[Settings], Runner]


def worker_main(settings: Settings, factory: RunnerFactory, stop: Any) -> None:
    """Entry point of one worker process: claim and run until ``stop`` is set.

    SIGTERM finishes the current job and exits 0; the worker also exits when its
    supervisor is gone (so a ``kill -9`` of the server leaves no orphans).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when we stop
    terminated = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: terminated.set())
    parent = os.getppid()
    runner = factory(settings)
    runner.warm_up()
    idle = settings.poll_interval_s
    while not stop.is_set() and not terminated.is_set() and os.getppid() == parent:
        try:
            if runner.run_one():
                continue
        except Exception:  # database locked for too long, etc.: keep the worker alive
            log.exception("worker loop error")
        stop.wait(idle)


class LocalExecutor:
    def __init__(self, settings: Settings, factory: RunnerFactory, workers: int | None = None):
        self.settings = settings
        self.factory = factory
        self.count = max(1, workers or settings.workers)
        self.ctx = mp.get_context("spawn")
        self.stop_event = self.ctx.Event()
        self.processes: list[BaseProcess] = []
        self._supervisor: threading.Thread | None = None
        self._halt = threading.Event()
        self._next_prune = 0.0

    def _spawn(self) -> BaseProcess:
        # not a daemon: a worker starts its own child for image decoding
        proc = self.ctx.Process(target=worker_main, name="conveyor-worker", daemon=False,
                                args=(self.settings, self.factory, self.stop_event))
        proc.start()
        return proc

    def start(self) -> None:
        self.processes = [self._spawn() for _ in range(self.count)]
        self._supervisor = threading.Thread(target=self._supervise, daemon=True,
                                            name="conveyor-supervisor")
        self._supervisor.start()
        log.info("started %d local workers", self.count)

    def _supervise(self) -> None:
        reap_every = max(1.0, min(self.settings.lease_seconds / 4,
                                  self.settings.step_timeout_s / 2))
        next_reap = 0.0
        started = {i: time.monotonic() for i in range(len(self.processes))}
        delay = dict.fromkeys(started, 0.0)
        restart_at: dict[int, float] = {}
        while not self._halt.wait(0.5):
            now = time.monotonic()
            for i, proc in enumerate(self.processes):
                # exit code 0 is a requested stop (SIGTERM); anything else is a crash
                if proc.is_alive() or proc.exitcode == 0 or self.stop_event.is_set():
                    continue
                if i not in restart_at:
                    # a worker that keeps dying young is restarted ever more slowly
                    young = now - started[i] < 10.0
                    delay[i] = min(30.0, max(1.0, delay[i] * 2)) if young else 0.0
                    restart_at[i] = now + delay[i]
                    log.warning("worker pid %s exited (%s); starting another in %.0f s",
                                proc.pid, proc.exitcode, delay[i])
                if now < restart_at[i]:
                    continue
                del restart_at[i]
                self.processes[i] = self._spawn()
                started[i] = time.monotonic()
            if now >= next_reap:
                next_reap = now + reap_every
                self._kill_overrunning_workers()
                self._housekeeping()

    def _kill_overrunning_workers(self) -> None:
        """A step that runs past ``step_timeout_s`` is stuck (a thread cannot be stopped):
        kill its worker process; the supervisor starts another and the job is retried."""
        cutoff = utcnow() - timedelta(seconds=self.settings.step_timeout_s)
        ours = {p.pid: p for p in self.processes if p.pid is not None and p.is_alive()}
        try:
            with read_session(self.settings.resolved_database_url) as session:
                stuck = session.execute(select(Job.id, Job.locked_by).where(
                    Job.status == "running", Job.started_at < cutoff)).all()
        except Exception:
            log.exception("could not look for stuck jobs")
            return
        for job_id, locked_by in stuck:
            parts = (locked_by or "").split(":")
            pid = int(parts[-2]) if len(parts) >= 3 and parts[-2].isdigit() else None
            if pid not in ours:
                continue
            log.error("job %s ran longer than %.0f s: killing worker pid %s", job_id,
                      self.settings.step_timeout_s, pid)
            os.kill(pid, signal.SIGKILL)
            with transaction(self.settings.resolved_database_url) as session:
                session.execute(update(Job).where(Job.id == job_id, Job.status == "running")
                                .values(lease_until=utcnow(),
                                        last_error=f"step_timeout: ran longer than "
                                                   f"{self.settings.step_timeout_s:.0f} s"))

    def _housekeeping(self) -> None:
        """Return expired leases to the queue; now and then drop day-old events."""
        url = self.settings.resolved_database_url
        try:
            n = reap_expired_leases(url)
            if n:
                log.warning("reaper returned %d expired job(s) to the queue", n)
            if time.monotonic() >= self._next_prune:
                self._next_prune = time.monotonic() + 600
                with transaction(url) as session:
                    prune_events(session, keep_hours=24)
        except Exception:
            log.exception("housekeeping failed")

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    def stop(self, timeout: float = 10.0) -> None:
        self._halt.set()
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        for proc in self.processes:
            proc.join(max(0.0, deadline - time.monotonic()))
        for proc in self.processes:
            if proc.is_alive():
                proc.terminate()
                proc.join(2)
