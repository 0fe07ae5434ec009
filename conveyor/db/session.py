"""Database engine and sessions for SQLite (default) and PostgreSQL.

SQLite runs in WAL mode with a busy timeout, and every transaction that may write starts
with ``BEGIN IMMEDIATE`` so that two processes never deadlock upgrading a read lock. On
PostgreSQL the ordinary transaction semantics apply and job claims use
``FOR UPDATE SKIP LOCKED`` (see ``conveyor.engine.jobs``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

_lock = threading.Lock()
_engines: dict[tuple[str, int], Engine] = {}
_factories: dict[tuple[str, int], sessionmaker[Session]] = {}

SQLITE_BUSY_TIMEOUT_MS = 30_000


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = "DEFERRED" if conn.get_execution_options().get("readonly") else "IMMEDIATE"
        conn.exec_driver_sql(f"BEGIN {mode}")


def get_engine(url: str) -> Engine:
    """One engine per URL per process (a forked child gets its own)."""
    key = (url, os.getpid())
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            if url.startswith("sqlite"):
                engine = create_engine(
                    url,
                    connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
                                  "check_same_thread": False},
                    pool_size=20,
                    max_overflow=20,
                )
                _configure_sqlite(engine)
            else:
                engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
            _engines[key] = engine
            _factories[key] = sessionmaker(engine, expire_on_commit=False)
        return engine


def session_factory(url: str) -> sessionmaker[Session]:
    get_engine(url)
    return _factories[(url, os.getpid())]


_sqlite_writer = threading.RLock()


@contextmanager
def write_lock(url: str) -> Iterator[None]:
    """On SQLite, threads of one process take turns to write.

    SQLite admits one writer at a time; without this, threads that find the database
    locked sleep in SQLite's busy handler with growing back-off and the tail latency
    explodes. A Python lock queues them fairly instead (other processes still meet the
    busy timeout). PostgreSQL needs no such thing.
    """
    if url.startswith("sqlite"):
        with _sqlite_writer:
            yield
    else:
        yield


@contextmanager
def transaction(url: str) -> Iterator[Session]:
    """A write transaction: committed on success, rolled back on any exception."""
    with write_lock(url), session_factory(url)() as session, session.begin():
        yield session


@contextmanager
def read_session(url: str) -> Iterator[Session]:
    """A read-only session (deferred BEGIN on SQLite: never waits for writers)."""
    engine = get_engine(url)
    with Session(engine.execution_options(readonly=True), expire_on_commit=False) as session:
        yield session


def dispose_all() -> None:
    with _lock:
        for key, engine in list(_engines.items()):
            if key[1] == os.getpid():
                engine.dispose()
            del _engines[key]
            _factories.pop(key, None)


def affected(result: Any) -> int:
    """Rows changed by an UPDATE/DELETE (``rowcount`` is typed on cursor results only)."""
    return int(getattr(result, "rowcount", 0) or 0)
