"""The record-catalogue port and the scorer every catalogue shares.

:func:`score_candidate` says how well a catalogue entry matches what was read off a sleeve:
0..1, accent-, case- and punctuation-insensitive, tolerant of OCR slips (``Trash8O``) and of
extra words (``(Remastered)``, a second artist). An exact barcode match is strong evidence
on its own (>= 0.9); an exact catalogue number nearly so (catalogue numbers are reused across
labels, so the text still counts).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from typing import Any, Protocol


@dataclass(frozen=True)
class CatalogQuery:
    artist: str | None = None
    album: str | None = None
    catalog_number: str | None = None
    barcode: str | None = None

    def is_empty(self) -> bool:
        return not any(
            (v or "").strip() for v in (self.artist, self.album, self.catalog_number, self.barcode)
        )


@dataclass
class CatalogMatch:
    source: str
    release_id: str
    artist: str | None = None
    album: str | None = None
    label: str | None = None
    catalog_number: str | None = None
    year: int | None = None
    genre: list[str] = field(default_factory=list)
    style: list[str] = field(default_factory=list)
    country: str | None = None
    format: list[str] = field(default_factory=list)
    barcode: str | None = None
    cover_url: str | None = None
    score: float = 0.0
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


class RecordCatalog(Protocol):
    name: str

    def search(self, query: CatalogQuery) -> list[CatalogMatch]:
        """Candidates for ``query``, best first (``score`` descending)."""
        ...


# --------------------------------------------------------------------------- normalising

_DISAMBIGUATION = re.compile(r"\s*\(\d+\)\s*$")  # Discogs "Artist (2)"
_PARENS = re.compile(r"\s*[\(\[][^\)\]]*[\)\]]")
_TOKEN = re.compile(r"\w+")
_NO_CATNO = frozenset({"", "none", "n/a", "na", "-"})


def strip_disambiguation(name: str) -> str:
    """``"Nirvana (2)"`` → ``"Nirvana"``; also the ANV asterisk (``"Prince*"``)."""
    name = name.strip().rstrip("*").strip()
    return _DISAMBIGUATION.sub("", name).strip()


def fold(text: str) -> str:
    """Lower case, accents removed, ``&`` spelled ``and``, punctuation as spaces."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = text.casefold().replace("&", " and ").replace("ø", "o").replace("ß", "ss")
    return " ".join(_TOKEN.findall(text.replace("_", " ")))


def tokens(text: str) -> list[str]:
    words = fold(text).split()
    if len(words) > 1 and words[0] == "the":
        words = words[1:]
    return words


def normalize_barcode(value: str | None) -> str | None:
    """Digits only, leading zeros dropped (UPC-A 12 digits == EAN-13 with a leading 0)."""
    if not value:
        return None
    digits = re.sub(r"\D", "", value).lstrip("0")
    return digits or None


def normalize_catno(value: str | None) -> str | None:
    """Case-, space- and punctuation-insensitive: ``"8BP-086"`` == ``"8bp 086"``."""
    if value is None:
        return None
    folded = fold(value).replace(" ", "")
    return None if folded in _NO_CATNO or value.strip().lower() in _NO_CATNO else folded


def _ratio(a: str, b: str) -> float:
    return SequenceMatcher(None, a, b, autojunk=False).ratio()


def _soft_contains(needles: list[str], hay: list[str]) -> float:
    """Mean over ``needles`` of the best fuzzy match in ``hay`` (below 0.8 counts as 0)."""
    total = 0.0
    for word in needles:
        best = 0.0
        for other in hay:
            if word == other:
                best = 1.0
                break
            r = _ratio(word, other)
            if r >= 0.8 and r > best:
                best = r
        total += best
    return total / len(needles)


def _similarity_once(query: list[str], candidate: list[str]) -> float:
    if not query or not candidate:
        return 0.0
    if query == candidate:
        return 1.0
    char = _ratio(" ".join(query), " ".join(candidate))
    # what was read should be in the candidate; extra candidate words cost a little
    token = 0.7 * _soft_contains(query, candidate) + 0.3 * _soft_contains(candidate, query)
    return max(char, token)


def text_similarity(query: str | None, candidate: str | None) -> float:
    """0..1 similarity of a query field to a candidate field (bracketed suffixes such as
    ``(Remastered)`` or ``[Deluxe]`` are tried with and without)."""
    if not query or not candidate:
        return 0.0
    q_variants = {tuple(tokens(v)) for v in (query, _PARENS.sub("", query))} - {()}
    c_variants = {tuple(tokens(v)) for v in (candidate, _PARENS.sub("", candidate))} - {()}
    best = 0.0
    for q in q_variants:
        for c in c_variants:
            best = max(best, _similarity_once(list(q), list(c)))
    return best


def _catnos(value: str | None) -> set[str]:
    """A candidate may list several catalogue numbers (``"ABC 1, ABC 1X"``)."""
    if not value:
        return set()
    parts = [value, *re.split(r"\s*[,;/]\s*", value)]
    return {n for n in (normalize_catno(p) for p in parts) if n}


def score_candidate(
    query: CatalogQuery,
    *,
    artist: str | None = None,
    album: str | None = None,
    catalog_number: str | None = None,
    barcode: str | None = None,
) -> float:
    """How well a candidate matches ``query``: 0..1, rounded to 4 places.

    - barcode equal (digits only) → 0.9 + 0.1 * text agreement;
    - catalogue number equal → 0.6 + 0.4 * text agreement (0.85 with no text to compare);
    - otherwise the mean text similarity of the artist and album fields the query has,
      times 0.8 when both sides have barcodes that differ and 0.9 when both have catalogue
      numbers that differ (a different pressing of the same album still scores well).
    """
    parts: list[float] = []
    if query.artist and query.artist.strip():
        parts.append(
            text_similarity(strip_disambiguation(query.artist), strip_disambiguation(artist))
            if artist
            else 0.0
        )
    if query.album and query.album.strip():
        parts.append(text_similarity(query.album, album) if album else 0.0)
    text = sum(parts) / len(parts) if parts else None

    q_bar, c_bar = normalize_barcode(query.barcode), normalize_barcode(barcode)
    q_cat = normalize_catno(query.catalog_number)
    c_cats = _catnos(catalog_number)

    if q_bar and c_bar and q_bar == c_bar:
        score = 0.9 + 0.1 * (text if text is not None else 1.0)
    elif q_cat and q_cat in c_cats:
        score = 0.6 + 0.4 * text if text is not None else 0.85
    else:
        score = text or 0.0
        if q_bar and c_bar:
            score *= 0.8
        if q_cat and c_cats:
            score *= 0.9
    return round(min(1.0, max(0.0, score)), 4)


def score_match(query: CatalogQuery, match: CatalogMatch) -> float:
    """:func:`score_candidate` on a :class:`CatalogMatch`."""
    return score_candidate(
        query,
        artist=match.artist,
        album=match.album,
        catalog_number=match.catalog_number,
        barcode=match.barcode,
    )


def rank(query: CatalogQuery, matches: list[CatalogMatch]) -> list[CatalogMatch]:
    """Score every match in place and sort best first (stable for equal scores)."""
    for match in matches:
        match.score = score_match(query, match)
    return sorted(matches, key=lambda m: m.score, reverse=True)
