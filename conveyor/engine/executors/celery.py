"""The Celery executor: the same jobs and steps, delivered by a Redis or RabbitMQ broker.

A message carries only a job id. The job row is the truth: the worker claims it by id
(:meth:`Runner.run_by_id`), so a redelivered or duplicated message finds the job claimed or
done and returns. Jobs are published after their enqueueing transaction commits
(:mod:`conveyor.engine.outbox`); a :class:`Dispatcher` loop republishes what a crash or a
broker restart lost, publishes delayed retries when they come due, and reaps expired leases.

Celery settings follow DESIGN.md: late acks, reject on worker loss, prefetch 1, no result
backend, a visibility timeout above the longest step, and the hard time limit of a task at
the step timeout (the pool replaces a child that overruns, and the reaper retries its job).
No chords, no per-worker rate limits: limits live in the shared database buckets.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from conveyor.config import Settings
from conveyor.db.session import transaction
from conveyor.engine import outbox
from conveyor.engine.events import prune_events
from conveyor.engine.jobs import reap_expired_leases

if TYPE_CHECKING:
    from celery import Celery

    from conveyor.engine.runner import Runner

log = logging.getLogger("conveyor.celery")

TASK_NAME = "conveyor.run_job"
RunnerFactory = Callable[[Settings], "Runner"]

_runner: Runner | None = None
_factory: RunnerFactory | None = None
_settings: Settings | None = None


def _broker(settings: Settings) -> str:
    if not settings.broker_url:
        raise ValueError("the celery executor needs CONVEYOR_BROKER_URL, e.g. "
                         "redis://127.0.0.1:6379/0 or amqp://guest:guest@127.0.0.1:5672//")
    return settings.broker_url


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured for Conveyor's delivery guarantees."""
    try:
        from celery import Celery
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("the celery executor needs: pip install 'conveyor[scale]'") from exc

    app = Celery("conveyor", broker=_broker(settings), set_as_current=False)
    longest_step = float(settings.step_timeout_s)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=settings.celery_queue,
        task_create_missing_queues=True,
        # Redis redelivers an unacked message after the visibility timeout: it must be
        # longer than any step (RabbitMQ's consumer_timeout, 30 min by default, likewise).
        broker_transport_options={"visibility_timeout": int(max(3600, 2 * longest_step))},
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        task_publish_retry=True,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0.2,
                                   "interval_step": 0.5, "interval_max": 1.0},
        # the step timeout is enforced here as it is by the local supervisor
        task_time_limit=int(longest_step + 30),
        # soft shutdown: on SIGTERM/SIGQUIT running steps get this long to finish; what is
        # left unacknowledged goes back to the broker (acks_late) and runs elsewhere
        worker_soft_shutdown_timeout=30.0,
        worker_enable_soft_shutdown_on_idle=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        worker_max_tasks_per_child=None,
    )

    @app.task(name=TASK_NAME, ignore_result=True)
    def run_job(job_id: str) -> bool:
        return _worker_runner().run_by_id(job_id)

    return app


def _worker_runner() -> Runner:
    """The runner of this worker child, built on its first task (after the fork)."""
    global _runner
    if _runner is None:
        if _settings is None or _factory is None:
            raise RuntimeError("conveyor celery worker not initialised")
        _allow_children()
        _runner = _factory(_settings)
        _runner.warm_up()
        install_publisher(_settings)  # steps enqueue their next steps
    return _runner


def _allow_children() -> None:
    """Let this pool child start the sandboxed image decoder (a multiprocessing child).

    Celery's pool (billiard) makes its children daemonic, and multiprocessing refuses
    children to daemons; billiard's authkey type also refuses to be pickled for the
    forkserver. The decoder watches its pipe and exits with us, so neither rule protects
    anything here.
    """
    from multiprocessing import process as mp_process

    config = mp.current_process()._config  # type: ignore[attr-defined]
    config.pop("daemon", None)
    config["authkey"] = mp_process.AuthenticationString(  # type: ignore[attr-defined]
        bytes(config["authkey"]))


class CeleryPublisher:
    """Sends job ids to the broker (one Celery app per process, reused)."""

    def __init__(self, settings: Settings) -> None:
        self.app = make_celery(settings)
        self.queue = settings.celery_queue
        self._lock = threading.Lock()

    def __call__(self, job_ids: Sequence[str]) -> None:
        with self._lock, self.app.producer_or_acquire() as producer:
            for job_id in job_ids:
                self.app.send_task(TASK_NAME, args=[job_id], queue=self.queue,
                                   producer=producer)


_publishers: dict[tuple[str, str], CeleryPublisher] = {}


def publisher_for(settings: Settings) -> CeleryPublisher:
    key = (_broker(settings), settings.celery_queue)
    if key not in _publishers:
        _publishers[key] = CeleryPublisher(settings)
    return _publishers[key]


def install_publisher(settings: Settings) -> None:
    """Publish every job this process enqueues as soon as its transaction commits."""
    outbox.install(publisher_for(settings), settings.resolved_database_url)


class Dispatcher:
    """The sweep loop: republish lost or due jobs, reap expired leases, prune events."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.publisher = publisher_for(settings)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> int:
        db_url = self.settings.resolved_database_url
        reap_expired_leases(db_url)
        return outbox.dispatch_due(db_url, self.publisher, self.settings.redispatch_after_s)

    def run(self) -> None:
        next_prune = 0.0
        while not self._stop.is_set():
            try:
                self.tick()
                if time.monotonic() > next_prune:
                    with transaction(self.settings.resolved_database_url) as session:
                        prune_events(session)
                    next_prune = time.monotonic() + 600
            except Exception as exc:  # database or broker down: keep trying
                log.warning("dispatcher: %s: %s", type(exc).__name__, exc)
            self._stop.wait(self.settings.dispatch_interval_s)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="conveyor-dispatcher",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


def _dispatcher_process(settings: Settings, parent: int) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    dispatcher = Dispatcher(settings)
    dispatcher.start()
    while os.getppid() == parent:  # exits with the worker that started it
        time.sleep(1)
    dispatcher.stop()


def run_worker(settings: Settings, factory: RunnerFactory, concurrency: int,
               extra_args: Sequence[str] = ()) -> None:
    """``conveyor worker --executor celery``: a Celery prefork worker plus a dispatcher.

    The dispatcher runs in its own (spawned) process, so no thread is alive in the Celery
    parent when it forks pool children. Each child builds its runner on its first task.
    """
    global _settings, _factory
    _settings, _factory = settings, factory
    app = make_celery(settings)
    dispatcher = mp.get_context("spawn").Process(
        target=_dispatcher_process, args=(settings, os.getpid()), name="conveyor-dispatcher",
        daemon=True)
    dispatcher.start()
    argv: list[Any] = ["worker", "--pool=prefork", f"--concurrency={max(1, concurrency)}",
                       f"--queues={settings.celery_queue}", "--loglevel=INFO",
                       "--without-gossip", "--without-mingle", "--without-heartbeat",
                       *extra_args]
    try:
        app.worker_main(argv)
    finally:
        dispatcher.terminate()
        dispatcher.join(5)
