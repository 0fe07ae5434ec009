"""The services a scaled-out Conveyor uses, for tests: PostgreSQL, Redis, RabbitMQ.

Each test that runs on PostgreSQL gets a database of its own, copied from a template that
was migrated once per test session (``CREATE DATABASE … TEMPLATE`` takes ~0.1 s, a fresh
migration ~1 s). On a machine without a service, the tests that need it are skipped with a
reason that says which service and where; in CI (``CI=true``) they fail instead, because
CI has every service and a skip there would hide a broken set-up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.support import free_port, in_ci

PG_URL = os.environ.get("CONVEYOR_TEST_PG_URL",
                        "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("CONVEYOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("CONVEYOR_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def _listening(url: str, default_port: int) -> bool:
    parts = urlsplit(url.replace("+psycopg", ""))
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1",
                                       parts.port or default_port), timeout=1):
            return True
    except OSError:
        return False


def require(service: str, url: str, default_port: int) -> None:
    """Skip (or, in CI, fail) when ``service`` does not answer at ``url``."""
    if _listening(url, default_port):
        return
    where = urlsplit(url.replace("+psycopg", "")).netloc.rsplit("@", 1)[-1]
    message = f"{service} is not reachable at {where}: these tests need it"
    if in_ci():
        pytest.fail(f"{message} (CI=true: every service must run in CI)")
    pytest.skip(message)


def require_postgres() -> None:
    require("PostgreSQL", PG_URL, 5432)


def require_redis() -> None:
    require("Redis", REDIS_URL, 6379)


def require_rabbitmq() -> None:
    require("RabbitMQ", AMQP_URL, 5672)


def _admin_engine():  # type: ignore[no-untyped-def]
    return create_engine(PG_URL, isolation_level="AUTOCOMMIT", pool_size=1, max_overflow=0)


def _url_for(name: str) -> str:
    return make_url(PG_URL).set(database=name).render_as_string(hide_password=False)


@cache
def _template() -> str:
    """A database migrated once for this test session (dropped when the session ends)."""
    from conveyor.db.migrate import upgrade

    name = f"conveyor_tpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    _drop_orphans()
    engine = _admin_engine()
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    upgrade(_url_for(name))
    from conveyor.db.session import dispose_all

    dispose_all()  # a template must have no open connections while it is copied
    return name


def _drop_orphans() -> None:
    """Drop test databases left by test sessions that were killed (their pid is gone)."""
    engine = _admin_engine()
    with engine.connect() as conn:
        names = conn.scalars(text("SELECT datname FROM pg_database WHERE datname LIKE "
                                  "'conveyor\\_t%'")).all()
    engine.dispose()
    for name in names:
        parts = name.split("_")  # conveyor_tpl_<pid>_<hex> or conveyor_t_<pid>_<hex>
        if len(parts) == 4 and parts[2].isdigit() and not Path(f"/proc/{parts[2]}").exists():
            _drop(name)


def drop_template() -> None:
    if _template.cache_info().currsize:
        _drop(_template())
        _template.cache_clear()


def _drop(name: str) -> None:
    engine = _admin_engine()
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for one test; dropped afterwards."""
    require_postgres()
    template = _template()
    name = f"conveyor_t_{os.getpid()}_{uuid.uuid4().hex[:12]}"
    engine = _admin_engine()
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    engine.dispose()
    try:
        yield _url_for(name)
    finally:
        from conveyor.db.session import dispose_all

        dispose_all()
        _drop(name)


# -- private servers, for the fault tests that restart them ------------------------------
# A test that restarts a service gets its own instance on a free port, so it cannot disturb
# anything else using the machine's shared one.

PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None)


def _wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class PrivateRedis:
    """``redis-server`` on a free port, keeping nothing on disk (like the machine's)."""

    def __init__(self, workdir: Path) -> None:
        if shutil.which("redis-server") is None:
            message = "redis-server is not installed: the broker-restart test needs it"
            if in_ci():
                pytest.fail(message)
            pytest.skip(message)
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def restart(self, down_s: float = 1.0) -> None:
        self.kill()
        time.sleep(down_s)
        self.start()

    def __enter__(self) -> PrivateRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


class PrivatePostgres:
    """A throwaway PostgreSQL cluster (initdb) on a free port, run as the postgres user."""

    def __init__(self, workdir: Path) -> None:
        problem = None
        if PG_BIN is None:
            problem = "PostgreSQL server binaries are not installed"
        elif os.geteuid() != 0 or shutil.which("runuser") is None:
            problem = "starting a private PostgreSQL needs root (to run as user postgres)"
        if problem:
            if in_ci():
                pytest.fail(problem)
            pytest.skip(problem)
        # not under pytest's tmp_path: user postgres must be able to reach the folder
        self.root = Path(tempfile.mkdtemp(prefix="conveyor-pg-"))
        self.dir = self.root / "pgdata"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True,
                       capture_output=True, timeout=60)

    def __enter__(self) -> PrivatePostgres:
        self.root.chmod(0o755)
        self.dir.mkdir()
        shutil.chown(self.dir, "postgres", "postgres")
        self._as_postgres(str(PG_BIN / "initdb"), "-D", str(self.dir), "-A", "trust",
                          "-U", "postgres", "--no-sync")
        self.start()
        return self

    def start(self) -> None:
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.dir), "-w", "-l",
                          str(self.dir / "log"), "-o",
                          f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                          "-c fsync=off", "start")
        _wait_port(self.port)

    def stop(self) -> None:
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.dir), "-m", "fast", "-w",
                          "stop")

    def restart(self, down_s: float = 1.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.dir), "-m",
                              "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


# -- the scaled-out stack: PostgreSQL + S3 + Celery over Redis ---------------------------

_s3: Any = None


def shared_s3() -> Any:
    """One moto S3 server on 127.0.0.1 for the test session; each test gets a bucket."""
    global _s3
    if _s3 is None:
        from tests.fakes.s3_server import MotoS3

        _s3 = MotoS3().start()
    return _s3


def stop_shared_s3() -> None:
    global _s3
    if _s3 is not None:
        _s3.stop()
        _s3 = None


def s3_bucket() -> tuple[str, dict[str, str]]:
    """A fresh bucket: its CONVEYOR_STORAGE_URL and the credentials boto3 must see."""
    s3 = shared_s3()
    bucket = f"conveyor-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(bucket)
    return s3.storage_url(bucket, "media"), dict(s3.env)


@contextlib.contextmanager
def scaled_env() -> Iterator[dict[str, str]]:
    """Environment for `conveyor serve` and `conveyor worker` on the scaled-out stack: a
    fresh PostgreSQL database, an S3 bucket, and a Celery queue of its own on Redis."""
    require_redis()
    with postgres_database() as db_url:
        storage_url, aws = s3_bucket()
        yield {"CONVEYOR_DATABASE_URL": db_url, "CONVEYOR_STORAGE_URL": storage_url, **aws,
               "CONVEYOR_EXECUTOR": "celery", "CONVEYOR_BROKER_URL": REDIS_URL,
               "CONVEYOR_CELERY_QUEUE": f"conveyor-test-{uuid.uuid4().hex[:8]}",
               "CONVEYOR_DISPATCH_INTERVAL_S": "0.2", "CONVEYOR_REDISPATCH_AFTER_S": "10"}
