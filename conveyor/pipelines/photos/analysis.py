"""The photos pipeline's side of the provider port: build the configured provider, know its
identity, keep results JSON-safe, find near-duplicates and explain failures to people."""

from __future__ import annotations

import math
import re
import threading
from typing import Any

from conveyor.config import Settings
from conveyor.errors import ConveyorError, NotConfigured, PermanentError, TransientError
from conveyor.media.hashes import hamming
from conveyor.providers.base import CallGuard, NoGuard
from conveyor.providers.vision import factory as vision_factory
from conveyor.providers.vision.base import AIProviderBase

#: ``Resources`` name of the per-worker provider instance.
PROVIDER_RESOURCE = "photos.provider"
#: Near-duplicates kept per photo (closest first).
MAX_NEAR_DUPLICATES = 20
MAX_ERROR_CHARS = 500
_MAX_DEPTH = 32

_identity_lock = threading.Lock()
_identities: dict[str, tuple[str, str]] = {}


def build_provider(settings: Settings, guard: CallGuard) -> AIProviderBase:
    """The provider chosen by ``CONVEYOR_AI_PROVIDER`` (through the vision factory).

    An unknown name or a provider without its settings is a ``PermanentError``
    (``not_configured``): retrying cannot help until someone configures it."""
    try:
        return vision_factory.build_ai_provider(settings, guard)
    except (NotConfigured, ValueError) as exc:
        message = exc.message if isinstance(exc, NotConfigured) else str(exc)
        raise PermanentError(f"the photo provider is not usable: {message}",
                             code=NotConfigured.code) from None


def provider_identity(settings: Settings) -> tuple[str, str]:
    """``(name, version)`` of the configured provider: what "process missing" compares a
    photo's results with. Built once per process and provider setting; no call is made."""
    key = settings.ai_provider
    with _identity_lock:
        found = _identities.get(key)
        if found is not None:
            return found
    provider = build_provider(settings, NoGuard())
    try:
        identity = (provider.name, provider.version)
    finally:
        provider.close()
    with _identity_lock:
        _identities[key] = identity
    return identity


# --- results ---------------------------------------------------------------------------------

def json_safe(value: Any, depth: int = 0) -> Any:
    """A copy of ``value`` that every database's JSON accepts: no NUL characters (PostgreSQL
    JSONB refuses them), no NaN or infinity, string keys, lists for tuples and sets."""
    if depth > _MAX_DEPTH:
        return None
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace").replace("\x00", "")
    if isinstance(value, dict):
        return {str(k).replace("\x00", ""): json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v, depth + 1) for v in value]
    return str(value).replace("\x00", "")


_HEX16 = re.compile(r"^[0-9a-f]{16}$")


def phash_of(results: dict[str, Any]) -> str | None:
    """The 16-hex perceptual hash in a provider's results (``hashes.phash``), if any."""
    hashes = results.get("hashes")
    value = hashes.get("phash") if isinstance(hashes, dict) else None
    if isinstance(value, str) and _HEX16.match(value.lower()):
        return value.lower()
    return None


def near_duplicates(phash: str, candidates: list[tuple[str, str]], max_distance: int,
                    limit: int = MAX_NEAR_DUPLICATES) -> list[dict[str, Any]]:
    """``[{photo_id, distance}]`` of the candidates ``(id, phash)`` within ``max_distance``
    bits of ``phash``, closest first."""
    found: list[tuple[int, str]] = []
    for other_id, other in candidates:
        try:
            distance = hamming(phash, other)
        except ValueError:  # a malformed stored hash: not comparable
            continue
        if distance <= max_distance:
            found.append((distance, other_id))
    found.sort()
    return [{"photo_id": pid, "distance": d} for d, pid in found[:limit]]


# --- errors ----------------------------------------------------------------------------------

# absolute paths (/var/lib/…/storage/x) and Windows ones (C:\…): never shown to a user
_PATH = re.compile(r"(?:[A-Za-z]:\\|/)(?:[^\s/\\'\"<>:]+[/\\])+([^\s/\\'\"<>:]*)")


def public_error(error: ConveyorError, *, attempts: int, max_attempts: int,
                 stored_name: str | None = None, filename: str | None = None) -> str:
    """What a person reads in ``ai_error_message``: clear, short, no server paths, no
    internals. ``stored_name`` (the storage file name) is replaced by the upload's name."""
    if error.code in ("internal_error", "commit_failed"):
        message = ("an unexpected error stopped the analysis; an administrator can find "
                   "the details in the job's last error (conveyor jobs)")
    else:
        message = error.message
    if stored_name and filename:
        message = message.replace(stored_name, filename)
    message = _PATH.sub(lambda m: m.group(1) or "…", message)
    if isinstance(error, TransientError) and attempts >= max_attempts:
        message = f"gave up after {attempts} attempts: {message}"
    if len(message) > MAX_ERROR_CHARS:
        message = message[:MAX_ERROR_CHARS - 1] + "…"
    return message
