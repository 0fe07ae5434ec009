"""The `conveyor` command line, run as a user would run it (a subprocess)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sqlalchemy import select

from conveyor.accounts import _auth_cache, authenticate
from conveyor.db.models import Item
from conveyor.db.session import dispose_all, read_session
from tests.support import FULL_COVER, env_for, make_cover, run_cli


def test_users_ingest_items_and_jobs(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {**env_for(home), "COLUMNS": "200"}
    out = run_cli(home, "users", "create", "carol", env=env)
    token = out.strip().splitlines()[-1]
    url = f"sqlite:///{home / 'conveyor.db'}"
    who = authenticate(url, token)
    assert who is not None and who.name == "carol" and not who.is_admin
    second = run_cli(home, "users", "token", "carol", env=env).strip().splitlines()[-1]
    assert second != token and authenticate(url, second) is not None
    assert "revoked 2 token(s)" in run_cli(home, "users", "revoke", "carol", env=env)
    _auth_cache.clear()  # this process cached the tokens a moment ago (for 5 s at most)
    assert authenticate(url, token) is None and authenticate(url, second) is None
    run_cli(home, "users", "token", "carol", env=env)
    dup = subprocess.run([sys.executable, "-m", "conveyor.cli", "users", "create", "carol"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert dup.returncode == 1 and "already exists" in dup.stderr

    cover = make_cover(tmp_path / "cover.jpg", FULL_COVER)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    table = run_cli(home, "ingest", "records", str(cover), str(junk), "--user", "carol",
                    env=env, timeout=300)
    assert "ARCHIVED" in table and "FAILED" in table and "PINK FLOYD" in table
    with read_session(url) as session:
        items = session.scalars(select(Item)).all()
        assert sorted(i.state for i in items) == ["ARCHIVED", "FAILED"]
        assert len({i.run_id for i in items}) == 1 and items[0].run_id is not None
    listing = run_cli(home, "items", env=env)
    assert "ARCHIVED" in listing and "image_" in listing
    jobs = run_cli(home, "jobs", env=env)
    assert "records.ocr" in jobs and "recent failures" in jobs
    dispose_all()


def test_unknown_user_is_a_clear_error(tmp_path: Path) -> None:
    home = tmp_path / "home"
    cover = make_cover(tmp_path / "c.jpg", FULL_COVER)
    proc = subprocess.run([sys.executable, "-m", "conveyor.cli", "ingest", "records",
                           str(cover), "--user", "nobody"], env=env_for(home),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no user named 'nobody'" in proc.stderr
