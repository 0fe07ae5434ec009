"""A Discogs *collection export* (CSV) as a local, offline catalogue.

Discogs → Collection → Export gives columns ``Catalog#, Artist, Title, Label, Format,
Rating, Released, release_id, CollectionFolder, Date Added, Collection Media Condition,
Collection Sleeve Condition, Collection Notes``. Only ``Artist`` and ``Title`` are required;
column names are matched case-insensitively, a UTF-8 BOM is fine, extra columns are kept in
``raw``. The file is read once and re-read when its modification time (or size) changes.
"""

from __future__ import annotations

import csv
import os
import re
import threading
from dataclasses import replace
from pathlib import Path

from conveyor.errors import PermanentError
from conveyor.providers.catalogs.base import (
    CatalogMatch,
    CatalogQuery,
    normalize_catno,
    score_match,
    strip_disambiguation,
)

SOURCE = "discogs-csv"
REQUIRED = ("artist", "title")


def _year(value: str | None) -> int | None:
    m = re.match(r"\s*(\d{4})", value or "")
    return int(m.group(1)) if m and int(m.group(1)) > 0 else None


def _split(value: str | None) -> list[str]:
    return [p.strip() for p in (value or "").split(",") if p.strip()]


class DiscogsCollectionCatalog:
    """:class:`~conveyor.providers.catalogs.base.RecordCatalog` over a collection CSV."""

    name = SOURCE

    def __init__(
        self, csv_path: str | os.PathLike[str], *, limit: int = 10, min_score: float = 0.35
    ) -> None:
        self.path = Path(csv_path)
        self.limit = limit
        self.min_score = min_score
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._rows: list[CatalogMatch] = []

    def __repr__(self) -> str:
        return f"DiscogsCollectionCatalog({str(self.path)!r})"

    def _load(self) -> list[CatalogMatch]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            raise PermanentError(
                f"{SOURCE}: collection export {self.path} does not exist",
                code="catalog_not_found",
            ) from None
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            if stamp != self._stamp:
                self._rows = self._read()
                self._stamp = stamp
            return self._rows

    def _read(self) -> list[CatalogMatch]:
        try:
            with self.path.open(newline="", encoding="utf-8-sig", errors="replace") as fh:
                reader = csv.reader(fh)
                header = next(reader, None)
                if header is None:
                    raise self._not_export("it is empty")
                names = [h.strip().lstrip("\ufeff").casefold() for h in header]
                if not all(r in names for r in REQUIRED):
                    raise self._not_export("it has no Artist and Title columns")
                rows: list[CatalogMatch] = []
                for line_no, values in enumerate(reader, start=2):
                    if not any(v.strip() for v in values):
                        continue
                    record = {
                        header[i].strip().lstrip("\ufeff"): values[i].strip()
                        for i in range(min(len(header), len(values)))
                    }
                    row = {names[i]: values[i].strip() for i in range(min(len(names), len(values)))}
                    artist = strip_disambiguation(row.get("artist", ""))
                    title = row.get("title", "")
                    if not artist and not title:
                        continue
                    catno = row.get("catalog#") or row.get("catno") or ""
                    labels = _split(row.get("label"))
                    rows.append(
                        CatalogMatch(
                            source=SOURCE,
                            release_id=row.get("release_id") or f"line-{line_no}",
                            artist=artist or None,
                            album=title or None,
                            label=labels[0] if labels else None,
                            catalog_number=None if normalize_catno(catno) is None else catno,
                            year=_year(row.get("released")),
                            format=_split(row.get("format")),
                            raw=record,
                        )
                    )
                return rows
        except csv.Error as exc:
            raise self._not_export(f"it is not valid CSV ({exc})") from None
        except (IsADirectoryError, PermissionError) as exc:
            raise PermanentError(
                f"{SOURCE}: cannot read {self.path}: {type(exc).__name__}",
                code="catalog_not_found",
            ) from None

    def _not_export(self, why: str) -> PermanentError:
        return PermanentError(
            f"{SOURCE}: {self.path} is not a Discogs collection export ({why})",
            code="catalog_invalid",
        )

    def __len__(self) -> int:
        return len(self._load())

    def search(self, query: CatalogQuery) -> list[CatalogMatch]:
        rows = self._load()
        if query.is_empty():
            return []
        scored: list[CatalogMatch] = []
        for row in rows:
            score = score_match(query, row)
            if score >= self.min_score:
                scored.append(replace(row, score=score, format=list(row.format), raw=dict(row.raw)))
        scored.sort(key=lambda m: m.score, reverse=True)
        return scored[: self.limit]
