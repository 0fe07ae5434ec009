"""Discogs API client (``https://api.discogs.com``, v2 JSON).

Search strategy, cheapest evidence first, stopping as soon as a candidate scores
``stop_at`` or better (every request costs a rate-limit token: 60/min with a token, 25/min
without):

1. ``barcode=...`` when the query has a barcode, else ``catno=...`` when it has a catalogue
   number (``catno`` is also tried after a barcode search that found nothing);
2. ``artist=...&release_title=...`` (or just one of them);
3. ``q=artist album`` as a last resort when nothing good was found.

All searches use ``type=release`` and a small ``per_page``. Candidates from every request
made are merged by release id and ranked with the shared scorer.
"""

from __future__ import annotations

import re
from typing import Any

import httpx

from conveyor import __version__
from conveyor.errors import PermanentError, TransientError
from conveyor.providers.base import CallGuard
from conveyor.providers.catalogs.base import (
    CatalogMatch,
    CatalogQuery,
    normalize_barcode,
    rank,
    strip_disambiguation,
)
from conveyor.providers.http import request_json

PROVIDER = "discogs"
SOURCE = "discogs"
DEFAULT_USER_AGENT = f"Conveyor/{__version__} +https://github.com/conveyor"
ACCEPT = "application/vnd.discogs.v2.discogs+json"


def discogs_rate_per_min(token_set: bool) -> int:
    """Discogs' published limit: 60 requests/min authenticated, 25/min anonymous."""
    return 60 if token_set else 25


def split_title(title: str) -> tuple[str | None, str]:
    """A search result's ``"Artist - Title"`` as ``(artist, title)``; ``(None, title)`` when
    there is no `` - `` separator. Splits at the first separator (titles contain more
    dashes than artist names do) and strips Discogs' ``(2)`` disambiguation suffix."""
    if " - " not in title:
        return None, title.strip()
    artist, album = title.split(" - ", 1)
    return strip_disambiguation(artist) or None, album.strip()


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, list):
        return [str(v) for v in value if v is not None and str(v).strip()]
    return [str(value)]


def _year(value: Any) -> int | None:
    if isinstance(value, int):
        return value or None
    if isinstance(value, str):
        m = re.match(r"\s*(\d{4})", value)
        if m and int(m.group(1)) > 0:
            return int(m.group(1))
    return None


def parse_search_result(item: dict[str, Any], barcode: str | None = None) -> CatalogMatch:
    """One entry of ``/database/search``'s ``results`` as a (not yet scored) match.

    The live API lists every identifier under ``barcode``; the one equal to ``barcode``
    (the query's) is preferred, else the first."""
    artist, album = split_title(str(item.get("title") or ""))
    labels = _as_list(item.get("label"))  # a list in the live API, a string in old fixtures
    barcodes = _as_list(item.get("barcode"))
    wanted = normalize_barcode(barcode)
    if wanted:
        barcodes.sort(key=lambda b: normalize_barcode(b) != wanted)
    cover = item.get("cover_image") or item.get("thumb") or None
    catno = item.get("catno")
    return CatalogMatch(
        source=SOURCE,
        release_id=str(item.get("id")),
        artist=artist,
        album=album or None,
        label=labels[0] if labels else None,
        catalog_number=None if not catno or str(catno).lower() == "none" else str(catno),
        year=_year(item.get("year")),
        genre=_as_list(item.get("genre")),
        style=_as_list(item.get("style")),
        country=item.get("country") or None,
        format=_as_list(item.get("format")),
        barcode=barcodes[0] if barcodes else None,
        cover_url=str(cover) if cover else None,
        raw=item,
    )


class DiscogsCatalog:
    """:class:`~conveyor.providers.catalogs.base.RecordCatalog` over the Discogs API."""

    name = SOURCE

    def __init__(
        self,
        base_url: str,
        token: str | None,
        guard: CallGuard,
        timeout_s: float,
        user_agent: str = DEFAULT_USER_AGENT,
        transport: httpx.BaseTransport | None = None,
        *,
        per_page: int = 10,
        stop_at: float = 0.85,
        max_requests: int = 3,
        max_tries: int = 3,
        backoff_base_s: float = 0.5,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.guard = guard
        self.token_set = bool(token)
        self.per_page = per_page
        self.stop_at = stop_at
        self.max_requests = max_requests
        self.max_tries = max_tries
        self.backoff_base_s = backoff_base_s
        headers = {"User-Agent": user_agent, "Accept": ACCEPT}
        if token:
            headers["Authorization"] = f"Discogs token={token}"
        self._client = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            transport=transport,
            follow_redirects=True,
        )

    def __repr__(self) -> str:  # no token in reprs
        return f"DiscogsCatalog(base_url={self.base_url!r}, token_set={self.token_set})"

    @property
    def rate_per_min(self) -> int:
        return discogs_rate_per_min(self.token_set)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> DiscogsCatalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ requests

    def _get(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        data, _ = request_json(
            self._client,
            "GET",
            path,
            provider=PROVIDER,
            guard=self.guard,
            max_tries=self.max_tries,
            backoff_base_s=self.backoff_base_s,
            params=params,
        )
        if not isinstance(data, dict):
            raise TransientError(
                f"{PROVIDER}: GET {path} answered a JSON array, expected an object",
                code="provider_bad_response",
            )
        return data

    def search_raw(self, **params: str) -> list[dict[str, Any]]:
        """``GET /database/search`` with ``params`` (+ ``type=release``, ``per_page``)."""
        full = {"type": "release", **params, "per_page": str(self.per_page)}
        data = self._get("/database/search", full)
        results = data.get("results")
        if not isinstance(results, list):
            raise TransientError(
                f"{PROVIDER}: search answer has no results list", code="provider_bad_response"
            )
        return [r for r in results if isinstance(r, dict)]

    def get_release(self, release_id: str | int) -> dict[str, Any]:
        """``GET /releases/{id}``: the full release (tracklist, labels, identifiers…)."""
        rid = str(release_id).strip()
        if not rid.isdigit():
            raise PermanentError(
                f"{PROVIDER}: release id must be numeric, got {rid[:40]!r}",
                code="provider_rejected",
            )
        return self._get(f"/releases/{rid}")

    # ------------------------------------------------------------------ search

    def _plan(self, query: CatalogQuery) -> list[dict[str, str]]:
        plan: list[dict[str, str]] = []
        barcode = re.sub(r"\D", "", query.barcode or "")
        catno = (query.catalog_number or "").strip()
        artist = strip_disambiguation(query.artist or "")
        album = (query.album or "").strip()
        if normalize_barcode(barcode):
            plan.append({"barcode": barcode})
        if catno:
            plan.append({"catno": catno})
        text: dict[str, str] = {}
        if artist:
            text["artist"] = artist
        if album:
            text["release_title"] = album
        if text:
            plan.append(text)
        if artist and album:
            plan.append({"q": f"{artist} {album}"})
        return plan

    def search(self, query: CatalogQuery) -> list[CatalogMatch]:
        if query.is_empty():
            return []
        found: dict[str, CatalogMatch] = {}
        requests = 0
        for params in self._plan(query):
            if requests >= self.max_requests:
                break
            is_q = "q" in params
            if is_q and found and max(m.score for m in found.values()) >= 0.5:
                break  # the free-text fallback is only for when nothing plausible came back
            requests += 1
            for item in self.search_raw(**params):
                if item.get("type", "release") != "release" or item.get("id") is None:
                    continue
                match = parse_search_result(item, query.barcode)
                found.setdefault(match.release_id, match)
            ranked = rank(query, list(found.values()))
            if ranked and ranked[0].score >= self.stop_at:
                return ranked
        return rank(query, list(found.values()))
