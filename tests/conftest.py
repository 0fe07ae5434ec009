"""Fixtures shared by every test folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.config import Settings
from conveyor.db.session import dispose_all
from conveyor.engine.cache import clear_local_cache
from conveyor.runtime import prepare
from tests.support import make_settings


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    """Migrated SQLite database and storage under a fresh temporary home."""
    s = prepare(make_settings(tmp_path / "home"))
    clear_local_cache()
    yield s
    dispose_all()
