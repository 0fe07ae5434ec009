from __future__ import annotations

import pytest

from conveyor.providers.catalogs.base import (
    CatalogMatch,
    CatalogQuery,
    fold,
    normalize_barcode,
    normalize_catno,
    rank,
    score_candidate,
    strip_disambiguation,
    text_similarity,
)
from conveyor.providers.catalogs.discogs import discogs_rate_per_min, split_title


def test_fold_removes_accents_case_and_punctuation() -> None:
    assert fold("Björk — HOMOGENIC!") == "bjork homogenic"
    assert fold("Simon & Garfunkel") == "simon and garfunkel"
    assert fold("Sigur Rós") == fold("SIGUR ROS")


def test_strip_disambiguation() -> None:
    assert strip_disambiguation("Nirvana (2)") == "Nirvana"
    assert strip_disambiguation("Prince*") == "Prince"
    assert strip_disambiguation("Boards Of Canada") == "Boards Of Canada"


def test_identifiers_normalise() -> None:
    assert normalize_barcode("0 12345-67890 5") == normalize_barcode("12345678905")
    assert normalize_barcode("") is None
    assert normalize_catno("8BP-086") == normalize_catno("8bp 086") == "8bp086"
    assert normalize_catno("none") is None


def test_exact_match_scores_one() -> None:
    q = CatalogQuery(artist="Trash80", album="Icarus")
    assert score_candidate(q, artist="Trash80", album="Icarus") == 1.0
    assert score_candidate(q, artist="TRASH80", album="icarus") == 1.0


def test_accents_case_and_the_are_ignored() -> None:
    q = CatalogQuery(artist="Bjork", album="Homogenic")
    assert score_candidate(q, artist="Björk (2)", album="HOMOGÉNIC") == 1.0
    q2 = CatalogQuery(artist="Beatles", album="Abbey Road")
    assert score_candidate(q2, artist="The Beatles", album="Abbey Road") == 1.0


def test_right_album_beats_wrong_album_by_same_artist() -> None:
    q = CatalogQuery(artist="Trash80", album="Icarus")
    right = score_candidate(q, artist="Trash80", album="Icarus")
    wrong = score_candidate(q, artist="Trash80", album="Hologram")
    other = score_candidate(q, artist="Nullsleep", album="Unconditional Acceleration")
    assert right > wrong > other
    assert wrong < 0.75 and other < 0.3


def test_ocr_slips_still_score_high() -> None:
    q = CatalogQuery(artist="Trash8O", album="lcarus")
    assert score_candidate(q, artist="Trash80", album="Icarus") >= 0.8


def test_bracketed_suffixes_do_not_hurt() -> None:
    q = CatalogQuery(artist="Trash80", album="Icarus")
    assert score_candidate(q, artist="Trash80", album="Icarus (Remastered) [Deluxe]") == 1.0


def test_barcode_match_is_strong_even_when_text_disagrees() -> None:
    q = CatalogQuery(artist="Unreadable", album="???", barcode="0 720642 442517")
    s = score_candidate(q, artist="Nirvana", album="Nevermind", barcode="720642442517")
    assert s >= 0.9
    only_barcode = CatalogQuery(barcode="720642442517")
    assert score_candidate(only_barcode, barcode="0720642442517") == 1.0


def test_catno_match_is_strong_and_text_still_counts() -> None:
    q = CatalogQuery(catalog_number="8BP-086")
    assert score_candidate(q, artist="Trash80", album="Icarus", catalog_number="8BP086") >= 0.85
    q2 = CatalogQuery(artist="Trash80", album="Icarus", catalog_number="8bp086")
    good = score_candidate(q2, artist="Trash80", album="Icarus", catalog_number="8BP086")
    bad = score_candidate(q2, artist="Someone", album="Else", catalog_number="8BP086")
    assert good == 1.0
    assert 0.6 <= bad < good


def test_different_identifiers_lower_a_text_match() -> None:
    q = CatalogQuery(artist="Trash80", album="Icarus", barcode="111111111111")
    same_text = score_candidate(q, artist="Trash80", album="Icarus", barcode="222222222222")
    assert same_text == pytest.approx(0.8)


def test_missing_fields_and_empty_query() -> None:
    assert score_candidate(CatalogQuery(), artist="A", album="B") == 0.0
    assert score_candidate(CatalogQuery(artist="Trash80"), artist=None, album="Icarus") == 0.0
    assert CatalogQuery().is_empty() and CatalogQuery(artist="  ").is_empty()
    assert text_similarity("", "x") == 0.0


def test_rank_sorts_best_first_and_sets_scores() -> None:
    q = CatalogQuery(artist="Trash80", album="Icarus")
    ms = [
        CatalogMatch(source="t", release_id="1", artist="Trash80", album="Hologram"),
        CatalogMatch(source="t", release_id="2", artist="Trash80", album="Icarus"),
    ]
    ranked = rank(q, ms)
    assert [m.release_id for m in ranked] == ["2", "1"]
    assert ranked[0].score == 1.0 and 0 < ranked[1].score < 1


def test_split_discogs_title() -> None:
    assert split_title("Trash80 - Icarus") == ("Trash80", "Icarus")
    assert split_title("Nirvana (2) - Live - 1991") == ("Nirvana", "Live - 1991")
    assert split_title("Untitled") == (None, "Untitled")


def test_discogs_rate() -> None:
    assert discogs_rate_per_min(True) == 60
    assert discogs_rate_per_min(False) == 25
