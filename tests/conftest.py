"""Fixtures shared by every test folder."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.config import Settings
from conveyor.db.session import dispose_all
from conveyor.engine.cache import clear_local_cache
from conveyor.runtime import prepare
from tests.backends import drop_template, postgres_database, s3_bucket, stop_shared_s3
from tests.support import make_settings

# The stacks every engine and pipeline test runs on: the embedded default (SQLite, local
# files) and the scaled-out one (PostgreSQL, S3 storage).
STACKS = ("embedded", "scaled")


@contextlib.contextmanager
def stack_overrides(stack: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Settings that put a test on ``stack``; the services it needs live while it runs."""
    if stack == "embedded":
        yield {}
        return
    with postgres_database() as db_url:
        storage_url, aws_env = s3_bucket()
        for key, value in aws_env.items():  # boto3 reads its credentials from the env
            monkeypatch.setenv(key, value)
        yield {"database_url": db_url, "storage_url": storage_url}


@pytest.fixture(params=STACKS)
def stack_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_stack_settings(tmp_path: Path, stack_name: str,
                        monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Settings]]:
    """Builds migrated settings on the test's stack, with the overrides a test asks for."""
    with stack_overrides(stack_name, monkeypatch) as base:
        def make(**overrides: Any) -> Settings:
            s = prepare(make_settings(tmp_path / "home", **{**base, **overrides}))
            clear_local_cache()
            return s

        yield make
        dispose_all()


@pytest.fixture
def settings(make_stack_settings: Callable[..., Settings]) -> Settings:
    """A migrated database and storage under a fresh temporary home, on each stack."""
    return make_stack_settings()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    drop_template()
    stop_shared_s3()
