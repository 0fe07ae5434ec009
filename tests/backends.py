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
import socket
import uuid
from collections.abc import Iterator
from functools import cache
from urllib.parse import urlsplit

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.support import in_ci

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
    engine = _admin_engine()
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    upgrade(_url_for(name))
    from conveyor.db.session import dispose_all

    dispose_all()  # a template must have no open connections while it is copied
    return name


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
    name = f"conveyor_t_{uuid.uuid4().hex[:12]}"
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
