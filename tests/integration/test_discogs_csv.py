"""The Discogs collection-export catalogue on real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conveyor.errors import PermanentError
from conveyor.providers.catalogs.base import CatalogQuery
from conveyor.providers.catalogs.discogs_csv import DiscogsCollectionCatalog

pytestmark = pytest.mark.timeout(30)

HEADER = (
    "Catalog#,Artist,Title,Label,Format,Rating,Released,release_id,CollectionFolder,"
    "Date Added,Collection Media Condition,Collection Sleeve Condition,Collection Notes"
)
ROWS = [
    '8BP086,Trash80,Icarus,8bitpeoples,"CDr, Album",,2008,1743771,Uncategorized,'
    "2020-01-02 10:00:00,Near Mint (NM or M-),Very Good Plus (VG+),",
    'DGCD-24425,Nirvana (2),Nevermind,DGC,"CD, Album",5,1991-09-24,367084,Uncategorized,'
    '2021-03-04 11:00:00,Mint (M),Mint (M),"first pressing, ""signed"""',
    'none,Björk,Homogenic,One Little Indian,"LP, Album",,1997,1,Uncategorized,,,,',
    "8BP037,Trash80,Hologram,8bitpeoples,File,,0,480740,Uncategorized,,,,",
]


def write(path: Path, lines: list[str], *, bom: bool = True) -> Path:
    text = "\r\n".join(lines) + "\r\n"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def test_bom_and_disambiguation_parsed(tmp_path: Path) -> None:
    cat = DiscogsCollectionCatalog(write(tmp_path / "export.csv", [HEADER, *ROWS]))
    assert cat.name == "discogs-csv" and len(cat) == 4
    (best, *_) = cat.search(CatalogQuery(artist="Nirvana", album="Nevermind"))
    assert best.source == "discogs-csv"
    assert best.artist == "Nirvana" and best.album == "Nevermind"
    assert best.release_id == "367084" and best.label == "DGC"
    assert best.catalog_number == "DGCD-24425" and best.year == 1991
    assert best.format == ["CD", "Album"] and best.score == 1.0
    assert best.raw["Collection Notes"] == 'first pressing, "signed"'
    assert best.raw["Catalog#"] == "DGCD-24425"  # BOM not glued to the first column name


def test_search_ranks_and_filters(tmp_path: Path) -> None:
    cat = DiscogsCollectionCatalog(write(tmp_path / "export.csv", [HEADER, *ROWS]))
    matches = cat.search(CatalogQuery(artist="trash 80", album="ICARUS"))
    assert [m.album for m in matches[:2]] == ["Icarus", "Hologram"]
    assert matches[0].score > matches[1].score
    assert all(m.artist != "Nirvana" for m in matches)  # below min_score
    assert cat.search(CatalogQuery(catalog_number="8bp-086"))[0].album == "Icarus"
    bjork = cat.search(CatalogQuery(artist="bjork", album="homogenic"))[0]
    assert bjork.artist == "Björk" and bjork.catalog_number is None
    assert cat.search(CatalogQuery(artist="Trash80", album="Hologram"))[0].year is None
    assert cat.search(CatalogQuery()) == []


def test_results_are_copies(tmp_path: Path) -> None:
    cat = DiscogsCollectionCatalog(write(tmp_path / "export.csv", [HEADER, *ROWS]))
    first = cat.search(CatalogQuery(artist="Trash80", album="Icarus"))[0]
    first.format.append("mutated")
    first.raw["x"] = 1
    again = cat.search(CatalogQuery(artist="Trash80", album="Icarus"))[0]
    assert "mutated" not in again.format and "x" not in again.raw


def test_missing_and_extra_columns_tolerated(tmp_path: Path) -> None:
    lines = [
        "artist,TITLE,Extra Column,released",
        "Trash80,Icarus,whatever,2008,unexpected-extra-value",
        "Only An Artist",
        "",
    ]
    cat = DiscogsCollectionCatalog(write(tmp_path / "slim.csv", lines, bom=False))
    (m, *_) = cat.search(CatalogQuery(artist="Trash80", album="Icarus"))
    assert m.year == 2008 and m.label is None and m.catalog_number is None
    assert m.release_id.startswith("line-")
    assert len(cat) == 2


def test_reloads_when_file_changes(tmp_path: Path) -> None:
    path = write(tmp_path / "export.csv", [HEADER, ROWS[0]])
    cat = DiscogsCollectionCatalog(path)
    assert cat.search(CatalogQuery(artist="Nirvana", album="Nevermind")) == []
    write(path, [HEADER, *ROWS])
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    assert cat.search(CatalogQuery(artist="Nirvana", album="Nevermind"))[0].album == "Nevermind"


def test_missing_file_is_permanent(tmp_path: Path) -> None:
    cat = DiscogsCollectionCatalog(tmp_path / "nope.csv")
    with pytest.raises(PermanentError) as info:
        cat.search(CatalogQuery(artist="x"))
    assert info.value.code == "catalog_not_found" and "nope.csv" in str(info.value)


@pytest.mark.parametrize(
    "content",
    [b"", b"name,year\nfoo,1999\n", b"\x89PNG\r\n\x1a\n\x00\x00binary"],
    ids=["empty", "other-csv", "binary"],
)
def test_not_a_discogs_export_is_permanent(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "other.csv"
    path.write_bytes(content)
    with pytest.raises(PermanentError) as info:
        DiscogsCollectionCatalog(path).search(CatalogQuery(artist="x"))
    assert info.value.code == "catalog_invalid"
    assert "not a Discogs collection export" in str(info.value)
