"""The real Discogs client against the fake Discogs server on 127.0.0.1."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from conveyor.config import Settings
from conveyor.errors import PermanentError, TransientError
from conveyor.providers.base import NoGuard
from conveyor.providers.catalogs import build_catalog
from conveyor.providers.catalogs.base import CatalogQuery
from conveyor.providers.catalogs.discogs import DEFAULT_USER_AGENT, DiscogsCatalog
from conveyor.providers.catalogs.discogs_csv import DiscogsCollectionCatalog
from tests.fakes.fake_discogs import FakeDiscogs
from tests.fakes.guard import RecordingGuard

pytestmark = pytest.mark.timeout(30)

TOKEN = "dgs-T0ken-abcdef0123456789"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake() -> Iterator[FakeDiscogs]:
    with FakeDiscogs(token=TOKEN) as server:
        yield server


def client(fake: FakeDiscogs, token: str | None = TOKEN, **kw: Any) -> DiscogsCatalog:
    kw.setdefault("backoff_base_s", 0.01)
    guard = kw.pop("guard", NoGuard())
    return DiscogsCatalog(fake.url, token, guard, 5.0, **kw)


def test_trash80_icarus_search_parsed_from_corpus(fake: FakeDiscogs) -> None:
    guard = RecordingGuard()
    with client(fake, guard=guard) as dc:
        matches = dc.search(CatalogQuery(artist="Trash80", album="Icarus"))
    assert [m.release_id for m in matches[:2]] == ["1743771", "1346442"]
    best = matches[0]
    assert best.source == "discogs"
    assert (best.artist, best.album) == ("Trash80", "Icarus")
    assert best.label == "8bitpeoples" and best.catalog_number == "8BP086"
    assert best.year == 2008 and best.country == "US"
    assert best.genre == ["Electronic"] and best.style == ["Electro", "Chiptune"]
    assert best.format == ["CDr"]
    assert best.score == 1.0
    assert best.raw["id"] == 1743771
    assert all(m.raw.get("type") == "release" for m in matches)  # the artist entry is dropped
    assert matches == sorted(matches, key=lambda m: m.score, reverse=True)

    (req,) = fake.requests  # a perfect match on the first request: no more requests
    assert req.path == "/database/search"
    assert req.query["artist"] == "Trash80" and req.query["release_title"] == "Icarus"
    assert req.query["type"] == "release" and req.query["per_page"] == "10"
    assert req.headers["user-agent"] == DEFAULT_USER_AGENT
    assert req.headers["user-agent"].startswith("Conveyor/")
    assert req.headers["authorization"] == f"Discogs token={TOKEN}"
    assert guard.calls == [("before", "discogs", None, None), ("after", "discogs", True, None)]


def test_barcode_search_path_used_first(fake: FakeDiscogs) -> None:
    rid = fake.add_release(
        artist="Nirvana (2)",
        title="Nevermind",
        barcode=["0720642442517", "Matrix: X"],
        catno="DGCD-24425",
        year=1991,
        label="DGC",
        genre=["Rock"],
        style=["Grunge"],
    )
    with client(fake) as dc:
        matches = dc.search(
            CatalogQuery(
                artist="Nirvanna",
                album="Never mind",
                barcode="720642 442517",
                catalog_number="DGCD-24425",
            )
        )
    assert matches[0].release_id == str(rid)
    assert matches[0].artist == "Nirvana"  # "(2)" stripped
    assert matches[0].barcode == "0720642442517"
    assert matches[0].score >= 0.9
    assert matches[0].cover_url and matches[0].cover_url.startswith("https://")
    (req,) = fake.requests
    assert req.query == {"type": "release", "barcode": "720642442517", "per_page": "10"}


def test_catno_search_when_no_barcode(fake: FakeDiscogs) -> None:
    with client(fake) as dc:
        matches = dc.search(CatalogQuery(artist="Trash80", catalog_number="8BP 086"))
    assert fake.requests[0].query["catno"] == "8BP 086"
    assert {m.release_id for m in matches[:2]} == {"1743771", "1346442"}
    assert len(fake.requests) == 1


def test_free_text_fallback_when_artist_search_finds_nothing(fake: FakeDiscogs) -> None:
    with client(fake) as dc:
        matches = dc.search(CatalogQuery(artist="Trash 80", album="Icarus"))
    assert [r.query.get("q") for r in fake.requests] == [None, "Trash 80 Icarus"]
    assert matches and matches[0].album == "Icarus"


def test_no_match_returns_empty(fake: FakeDiscogs) -> None:
    with client(fake) as dc:
        assert dc.search(CatalogQuery(artist="Nobody", album="Nothing")) == []
        assert dc.search(CatalogQuery()) == []
    assert len(fake.requests) == 2  # artist/title, then q; the empty query sends nothing


def test_get_release_from_corpus_and_added(fake: FakeDiscogs) -> None:
    rid = fake.add_release(
        artist="A",
        title="B",
        tracklist=[{"position": "1", "title": "Song", "duration": "2:00", "type_": "track"}],
    )
    with client(fake) as dc:
        release = dc.get_release(3329867)
        assert release["title"] == "Darwinia Soundtrack"
        assert release["tracklist"]
        assert dc.get_release(rid)["tracklist"][0]["title"] == "Song"
        with pytest.raises(PermanentError) as info:
            dc.get_release(424242)
        assert info.value.code == "provider_rejected" and "404" in str(info.value)
        with pytest.raises(PermanentError):
            dc.get_release("../users/example")
    assert fake.requests[0].path == "/releases/3329867"


def test_5xx_retried_then_success_and_then_transient(fake: FakeDiscogs) -> None:
    with client(fake, max_tries=3) as dc:
        fake.fail_next(1, 500)
        assert dc.search(CatalogQuery(artist="Trash80", album="Icarus"))
        assert [r.status for r in fake.requests] == [500, 200]
        fake.fail_next(3, 502)
        with pytest.raises(TransientError) as info:
            dc.search(CatalogQuery(artist="Trash80", album="Icarus"))
    assert info.value.code == "provider_unavailable"
    assert [r.status for r in fake.requests[2:]] == [502, 502, 502]


def test_429_retry_after_honoured(fake: FakeDiscogs) -> None:
    fake.fail_next(1, 429, retry_after=1)
    with client(fake) as dc:
        started = time.monotonic()
        assert dc.search(CatalogQuery(artist="Trash80", album="Icarus"))
        assert time.monotonic() - started >= 0.95
    assert [r.status for r in fake.requests] == [429, 200]


def test_rate_limit_429_becomes_transient_after_tries() -> None:
    with FakeDiscogs(rate_with_token=2, window_s=1.0) as fake, client(fake, max_tries=1) as dc:
        dc.get_release(3329867)
        dc.get_release(3329867)
        with pytest.raises(TransientError) as info:
            dc.get_release(3329867)  # the fake's own limit: 429, Retry-After: 1
    assert info.value.code == "provider_rate_limited"
    assert info.value.retry_after == 1.0
    assert [r.status for r in fake.requests] == [200, 200, 429]


def test_scripted_429s_exhaust_the_tries(fake: FakeDiscogs) -> None:
    fake.fail_next(2, 429, retry_after=1)
    guard = RecordingGuard()
    with client(fake, max_tries=2, guard=guard) as dc:
        started = time.monotonic()
        with pytest.raises(TransientError) as info:
            dc.get_release(3329867)
        elapsed = time.monotonic() - started
    assert info.value.code == "provider_rate_limited" and info.value.retry_after == 1.0
    assert 0.95 <= elapsed < 2.5  # slept once between the two tries, not after the last
    assert [c for c in guard.calls if c[0] == "after"] == [
        ("after", "discogs", False, 1.0),
        ("after", "discogs", False, 1.0),
    ]


def test_rate_limit_window_waits_and_recovers() -> None:
    with FakeDiscogs(rate_with_token=1, window_s=1.0) as fake, client(fake) as dc:
        dc.get_release(3329867)
        started = time.monotonic()
        dc.get_release(3329867)  # 429 Retry-After: 1 → wait → 200
        assert time.monotonic() - started >= 0.9
        assert [r.status for r in fake.requests] == [200, 429, 200]


def test_long_rate_limit_gives_up_at_once() -> None:
    with FakeDiscogs(rate_with_token=1, window_s=60.0) as fake, client(fake) as dc:
        dc.get_release(3329867)
        with pytest.raises(TransientError) as info:
            dc.get_release(3329867)
    assert info.value.code == "provider_rate_limited"
    assert info.value.retry_after is not None and info.value.retry_after > 30
    assert len(fake.requests) == 2


def test_rate_limit_headers_per_token(fake: FakeDiscogs) -> None:
    ua = {"User-Agent": "test/1"}
    with_token = httpx.get(
        f"{fake.url}/releases/1", headers={**ua, "Authorization": f"Discogs token={TOKEN}"}
    )
    anonymous = httpx.get(f"{fake.url}/releases/1", headers=ua)
    assert with_token.headers["X-Discogs-Ratelimit"] == "60"
    assert with_token.headers["X-Discogs-Ratelimit-Remaining"] == "59"
    assert anonymous.headers["X-Discogs-Ratelimit"] == "25"
    assert anonymous.headers["X-Discogs-Ratelimit-Remaining"] == "24"


def test_missing_user_agent_rejected(fake: FakeDiscogs) -> None:
    host, port = fake.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.putrequest("GET", "/releases/1", skip_accept_encoding=True)
    conn.endheaders()
    assert conn.getresponse().status == 403
    conn.close()


def test_wrong_token_is_provider_auth_without_leaking(fake: FakeDiscogs) -> None:
    wrong = "dgs-wrong-token-zyx9876543210"
    with client(fake, token=wrong) as dc, pytest.raises(PermanentError) as info:
        dc.search(CatalogQuery(artist="Trash80", album="Icarus"))
    assert info.value.code == "provider_auth"
    assert "401" in str(info.value) and "discogs" in str(info.value)
    assert wrong not in str(info.value) and "9876543210" not in str(info.value)
    assert wrong not in repr(dc)
    assert len(fake.requests) == 1


def test_anonymous_search_needs_auth_like_real_discogs(fake: FakeDiscogs) -> None:
    with client(fake, token=None) as dc:
        with pytest.raises(PermanentError) as info:
            dc.search(CatalogQuery(artist="Trash80", album="Icarus"))
        assert info.value.code == "provider_auth"
        assert "authorization" not in fake.requests[0].headers
        assert dc.get_release(3329867)["id"] == 3329867  # releases are public
    with FakeDiscogs(search_requires_auth=False) as open_fake, client(open_fake, None) as dc:
        assert dc.search(CatalogQuery(artist="Trash80", album="Icarus"))


def test_build_catalog(tmp_path: Path) -> None:
    settings = Settings(discogs_base_url="http://127.0.0.1:9", discogs_token=SecretStr(TOKEN))
    cat = build_catalog(settings, NoGuard())
    assert isinstance(cat, DiscogsCatalog) and cat.name == "discogs"
    assert cat.rate_per_min == 60 and TOKEN not in repr(cat)
    # the official API refuses anonymous search: no token → no catalogue
    assert build_catalog(Settings(discogs_token=None), NoGuard()) is None
    assert build_catalog(Settings(discogs_token=SecretStr("")), NoGuard()) is None
    # a mirror (or the fake) may allow it
    anon = build_catalog(
        Settings(discogs_token=None, discogs_base_url="http://127.0.0.1:9"), NoGuard()
    )
    assert isinstance(anon, DiscogsCatalog) and anon.rate_per_min == 25
    assert build_catalog(Settings(records_catalog="collection"), NoGuard()) is None
    csv_cat = build_catalog(
        Settings(records_catalog="collection", discogs_collection_csv=tmp_path / "c.csv"),
        NoGuard(),
    )
    assert isinstance(csv_cat, DiscogsCollectionCatalog) and csv_cat.name == "discogs-csv"
    with pytest.raises(PermanentError):
        build_catalog(Settings(records_catalog="bogus"), NoGuard())


def test_corpus_files_served_by_path(fake: FakeDiscogs) -> None:
    ua = {"User-Agent": "test/1"}
    r = httpx.get(f"{fake.url}/artists/1/releases?per_page=50&page=1", headers=ua)
    assert r.status_code == 200 and r.json()["pagination"]["page"] == 1
    assert httpx.get(f"{fake.url}/labels/1", headers=ua).json()["name"] == "Planet E"
    assert httpx.get(f"{fake.url}/nothing/here", headers=ua).status_code == 404


def test_runs_as_a_separate_process() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.fake_discogs", "--port", "0", "--token", TOKEN],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        added = httpx.post(
            f"{url}/_fake/releases",
            json={"artist": "Zed", "title": "Alpha", "year": 1999},
            timeout=5,
        )
        assert added.status_code == 201
        with DiscogsCatalog(url, TOKEN, NoGuard(), 5.0) as dc:
            matches = dc.search(CatalogQuery(artist="Zed", album="Alpha"))
        assert matches[0].release_id == str(added.json()["id"]) and matches[0].year == 1999
        assert len(httpx.get(f"{url}/_fake/requests", timeout=5).json()) == 1
    finally:
        proc.terminate()
        proc.wait(timeout=5)
