"""providers/catalogs: record catalogues (Discogs API, a Discogs collection CSV)."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from conveyor.errors import PermanentError
from conveyor.providers.base import CallGuard
from conveyor.providers.catalogs.base import CatalogMatch, CatalogQuery, RecordCatalog

if TYPE_CHECKING:
    from conveyor.config import Settings

__all__ = ["CatalogMatch", "CatalogQuery", "RecordCatalog", "build_catalog"]

#: Hosts of the official API, where search needs a token.
OFFICIAL_HOSTS = frozenset({"api.discogs.com"})


def build_catalog(settings: Settings, guard: CallGuard) -> RecordCatalog | None:
    """The configured catalogue, or None when it cannot work.

    - ``records_catalog = "discogs"`` → the API client. The official API
      (``api.discogs.com``) refuses ``/database/search`` without authentication, so with no
      ``discogs_token`` this returns None there; a mirror or fake at another
      ``discogs_base_url`` gets an anonymous client (25 requests/min).
    - ``"collection"`` → the CSV export at ``discogs_collection_csv``, or None when that
      path is not set.
    """
    kind = (settings.records_catalog or "").strip().lower()
    if kind == "discogs":
        from conveyor.providers.catalogs.discogs import DiscogsCatalog

        token = settings.discogs_token.get_secret_value() if settings.discogs_token else None
        if not token and urlsplit(settings.discogs_base_url).hostname in OFFICIAL_HOSTS:
            return None
        return DiscogsCatalog(
            base_url=settings.discogs_base_url,
            token=token or None,
            guard=guard,
            timeout_s=settings.discogs_timeout_s,
        )
    if kind in ("collection", "discogs-csv", "csv"):
        if settings.discogs_collection_csv is None:
            return None
        from conveyor.providers.catalogs.discogs_csv import DiscogsCollectionCatalog

        return DiscogsCollectionCatalog(settings.discogs_collection_csv)
    raise PermanentError(
        f"unknown records_catalog {settings.records_catalog!r} (use 'discogs' or 'collection')",
        code="config_invalid",
    )
