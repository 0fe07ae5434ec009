"""Level 1 of seed 000: metadata from OCR lines by simple, explainable heuristics.

Each field gets a value, a confidence and a source. The item's confidence is the weighted
sum of its fields' confidences, so "we read the artist and the album but nothing else"
cannot look as certain as "we also read the catalogue number, label, year and barcode".
Which of two large lines is the artist and which the album cannot be known from OCR alone;
that ambiguity lowers the confidence and is what sends a cover to the vision model.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from conveyor.providers.ocr.base import OcrLine

# How much each field contributes to the item's confidence (sums to 1).
FIELD_WEIGHTS: dict[str, float] = {
    "artist": 0.30,
    "album": 0.30,
    "catalog_number": 0.15,
    "label": 0.10,
    "barcode": 0.10,
    "year": 0.05,
}
AMBIGUOUS_ROLE_FACTOR = 0.8  # artist/album told apart only by size and position

KNOWN_LABELS = (
    "4AD", "A&M", "Apple", "Arista", "Asylum", "Atlantic", "Blue Note", "Brunswick",
    "Capitol", "Chess", "Chrysalis", "Columbia", "Decca", "Def Jam", "Deutsche Grammophon",
    "Domino", "ECM", "Elektra", "EMI", "Epic", "Factory", "Geffen", "Harvest", "Impulse!",
    "Interscope", "Island", "Matador", "MCA", "Mercury", "Merge", "Motown", "Mute",
    "Ninja Tune", "Nonesuch", "Parlophone", "Philips", "Polydor", "Prestige", "RCA",
    "Reprise", "Riverside", "Rough Trade", "Sire", "Sony", "Stax", "Stones Throw",
    "Sub Pop", "Telarc", "Verve", "Vertigo", "Virgin", "Warner Bros", "Warp", "XL",
    "8bitpeoples",
)
_LABEL_RE = re.compile(
    r"(?<![\w])(" + "|".join(re.escape(x) for x in KNOWN_LABELS) + r")(?![\w])", re.IGNORECASE
)
_YEAR_RE = re.compile(r"(?:[℗©]\s*|\(P\)\s*|\(C\)\s*)?\b(19[3-9]\d|20[0-3]\d)\b")
_DIGITS_RE = re.compile(r"(?<!\d)(\d[\d -]{10,16}\d)(?!\d)")
_CATNO_RE = re.compile(
    r"\b((?=[A-Z0-9 .-]*\d)(?=[A-Z0-9.-]*[A-Z])[A-Z0-9]{1,6}[ .-]?\d{1,7}[A-Z]?)\b"
)


@dataclass
class FieldValue:
    value: Any
    confidence: float
    source: str  # ocr, llm, discogs, discogs-csv, ai, cache, user

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "confidence": round(self.confidence, 4),
                "source": self.source}


@dataclass
class Extraction:
    fields: dict[str, FieldValue] = field(default_factory=dict)

    @property
    def confidence(self) -> float:
        return round(sum(FIELD_WEIGHTS.get(k, 0.0) * f.confidence
                         for k, f in self.fields.items()), 4)

    def values(self) -> dict[str, Any]:
        return {k: f.value for k, f in self.fields.items()}

    def sources(self) -> dict[str, str]:
        return {k: f.source for k, f in self.fields.items()}


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())


def valid_barcode(digits: str) -> bool:
    """EAN-13 / UPC-A (12) / EAN-8 check digit."""
    if len(digits) not in (8, 12, 13) or not digits.isdigit():
        return False
    body, check = [int(c) for c in digits[:-1]], int(digits[-1])
    weights = [3, 1] if len(digits) % 2 == 0 else [1, 3]
    total = sum(d * weights[i % 2] for i, d in enumerate(body))
    return (10 - total % 10) % 10 == check


def _is_noise(text: str) -> bool:
    letters = sum(c.isalpha() for c in text)
    return letters < 2 or len(text.strip()) < 2


def extract_from_ocr(lines: list[OcrLine]) -> Extraction:
    """Parse artist, album, label, catalogue number, year and barcode from OCR lines."""
    out = Extraction()
    used: set[int] = set()

    for i, line in enumerate(lines):
        for m in _DIGITS_RE.finditer(line.text):
            digits = re.sub(r"\D", "", m.group(1))
            if valid_barcode(digits) and "barcode" not in out.fields:
                out.fields["barcode"] = FieldValue(digits, line.score, "ocr")
                if re.sub(r"\D", "", line.text) == digits:
                    used.add(i)

    for i, line in enumerate(lines):
        lm = _LABEL_RE.search(line.text)
        if lm and "label" not in out.fields:
            canonical = next(x for x in KNOWN_LABELS if x.casefold() == lm.group(1).casefold())
            out.fields["label"] = FieldValue(canonical, line.score, "ocr")
            rest = _LABEL_RE.sub("", line.text)
            cat = _CATNO_RE.search(rest.upper())
            if cat is not None and not _YEAR_RE.fullmatch(cat.group(1)):
                out.fields["catalog_number"] = FieldValue(cat.group(1).strip(), line.score, "ocr")
            used.add(i)

    if "catalog_number" not in out.fields:
        for i, line in enumerate(lines):
            if i in used and "label" not in out.fields:
                continue
            for m in _CATNO_RE.finditer(line.text):
                token = m.group(1).strip()
                digits = re.sub(r"\D", "", token)
                if _YEAR_RE.fullmatch(token) or valid_barcode(digits) or token.isdigit():
                    continue
                out.fields["catalog_number"] = FieldValue(token, line.score * 0.9, "ocr")
                if len(token) >= len(line.text.strip()) - 1:
                    used.add(i)
                break
            if "catalog_number" in out.fields:
                break

    for i, line in enumerate(lines):
        ym = _YEAR_RE.search(line.text)
        if ym and "year" not in out.fields:
            barcode = out.fields.get("barcode")
            if barcode is not None and ym.group(1) in str(barcode.value):
                continue
            out.fields["year"] = FieldValue(int(ym.group(1)), line.score, "ocr")
            if len(line.text.strip()) <= 8:
                used.add(i)

    candidates = [
        (i, ln) for i, ln in enumerate(lines) if i not in used and not _is_noise(ln.text)
    ]
    candidates.sort(key=lambda p: (-p[1].height, p[1].top))
    titles = candidates[:2]
    if len(titles) == 1:
        line = titles[0][1]
        out.fields["artist"] = FieldValue(line.text, line.score * AMBIGUOUS_ROLE_FACTOR, "ocr")
    elif len(titles) == 2:
        a, b = titles[0][1], titles[1][1]
        # the artist is usually the bigger text; when sizes are close, the upper line
        close = abs(a.height - b.height) <= 0.15 * max(a.height, b.height, 1.0)
        artist, album = (a, b) if not close or a.top <= b.top else (b, a)
        factor = AMBIGUOUS_ROLE_FACTOR if close else 0.9
        out.fields["artist"] = FieldValue(artist.text, artist.score * factor, "ocr")
        out.fields["album"] = FieldValue(album.text, album.score * factor, "ocr")
    return out


def merge(base: Extraction, other: dict[str, Any], other_confidence: float,
          source: str) -> Extraction:
    """Merge another tier's fields into ``base``: agreement raises confidence, a stronger
    reading replaces a weaker one, and nothing known is dropped."""
    merged = Extraction(fields=dict(base.fields))
    for key, value in other.items():
        if value in (None, "", [], {}):
            continue
        current = merged.fields.get(key)
        if current is None:
            merged.fields[key] = FieldValue(value, other_confidence, source)
        elif normalise(str(current.value)) == normalise(str(value)):
            boosted = 1 - (1 - current.confidence) * (1 - other_confidence)
            merged.fields[key] = FieldValue(current.value, boosted, f"{current.source}+{source}")
        elif other_confidence > current.confidence:
            merged.fields[key] = FieldValue(value, other_confidence, source)
    return merged
