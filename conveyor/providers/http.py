"""One shared way to call a JSON HTTP API: guard, retry in-call, classify errors.

:func:`request_json` is used by every HTTP provider client (the vision LLM, Discogs). It

- asks the :class:`~conveyor.providers.base.CallGuard` for a token before every try and
  reports the outcome after it (a 429/503 ``Retry-After`` is passed on so the guard can
  pause the provider for every worker);
- retries in-call on 429, 5xx (except 501), connection errors and timeouts, honouring
  ``Retry-After`` (seconds or an HTTP date) up to ``max_retry_after_s``, and otherwise
  sleeping a short exponential backoff with full jitter;
- raises :class:`~conveyor.errors.TransientError` once the tries are spent (codes
  ``provider_rate_limited``, ``provider_unavailable``, ``provider_timeout``,
  ``provider_bad_response``) and :class:`~conveyor.errors.PermanentError` for other 4xx
  (``provider_auth`` for 401/403, ``provider_rejected`` otherwise).

Error messages name the provider, the method, the URL path and the status. They never
contain the query string, a request header or a secret: any credential found in the
request's auth headers is masked out of the (short) response-body excerpt as well.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from conveyor.errors import PermanentError, TransientError
from conveyor.providers.base import CallGuard

JSONValue = dict[str, Any] | list[Any]

#: Statuses retried in-call (and reported to the guard as failures).
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: A ``Retry-After`` longer than this is not slept in-call: the call gives up at once and the
#: engine reschedules the job (``TransientError.retry_after`` carries the server's value).
DEFAULT_MAX_RETRY_AFTER_S = 30.0
#: Upper bound on the ``retry_after`` we report, whatever the server says.
RETRY_AFTER_REPORT_CAP_S = 3600.0
BACKOFF_CAP_S = 8.0
_SECRET_HEADERS = ("authorization", "x-api-key", "api-key", "proxy-authorization", "x-goog-api-key")
_AUTH_WORDS = frozenset({"bearer", "basic", "token", "discogs", "key", "secret"})
_BODY_EXCERPT = 200


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; None if absent."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def backoff_delay(attempt: int, base_s: float, cap_s: float = BACKOFF_CAP_S) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)] (attempt counts from 0)."""
    return random.uniform(0.0, min(cap_s, base_s * (2**attempt)))


def _secrets_of(request: httpx.Request | None) -> list[str]:
    if request is None:
        return []
    found: list[str] = []
    for name in _SECRET_HEADERS:
        value = request.headers.get(name)
        if not value:
            continue
        found.append(value)
        for piece in re.split(r"[\s=,:]+", value):
            if len(piece) >= 4 and piece.lower() not in _AUTH_WORDS:
                found.append(piece)
    # longest first, so that a whole header value is masked before its parts
    return sorted(set(found), key=len, reverse=True)


def redact(text: str, request: httpx.Request | None) -> str:
    """Mask every credential carried by ``request``'s auth headers out of ``text``."""
    for secret in _secrets_of(request):
        text = text.replace(secret, "***")
    return text


def _body_excerpt(response: httpx.Response) -> str:
    try:
        text = response.text
    except Exception:  # undecodable body: say nothing rather than fail
        return ""
    text = " ".join(text.split())
    if len(text) > _BODY_EXCERPT:
        text = text[:_BODY_EXCERPT] + "…"
    return redact(text, response.request)


def _where(method: str, url: str | httpx.URL, client: httpx.Client) -> str:
    """``GET /path`` without query string or credentials."""
    try:
        full = client.build_request(method, url).url
        path = full.path
    except Exception:
        path = str(url).split("?", 1)[0]
    return f"{method.upper()} {path}"


def request_json(
    client: httpx.Client,
    method: str,
    url: str,
    *,
    provider: str,
    guard: CallGuard,
    max_tries: int = 3,
    backoff_base_s: float = 0.5,
    max_retry_after_s: float = DEFAULT_MAX_RETRY_AFTER_S,
    sleep: Callable[[float], None] = time.sleep,
    **kwargs: Any,
) -> tuple[JSONValue, httpx.Response]:
    """Send one request (retrying in-call) and return ``(parsed JSON, response)``.

    ``kwargs`` go to :meth:`httpx.Client.request` (``params``, ``json``, ``headers``…).
    ``guard.before_call`` may raise :class:`~conveyor.errors.ProviderUnavailable`; it
    propagates untouched (no request is sent).
    """
    tries = max(1, max_tries)
    where = _where(method, url, client)
    last_code = "provider_unavailable"
    last_detail = ""
    last_retry_after: float | None = None

    for attempt in range(tries):
        guard.before_call(provider)
        retry_after: float | None = None
        try:
            response = client.request(method, url, **kwargs)
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise PermanentError(
                f"{provider}: the configured URL cannot be used ({type(exc).__name__}); "
                "it needs http:// or https:// and a host",
                code="config_invalid",
            ) from None
        except httpx.TimeoutException as exc:
            guard.after_call(provider, False, None)
            last_code = "provider_timeout"
            last_detail = f"timed out ({type(exc).__name__})"
        except httpx.TransportError as exc:
            guard.after_call(provider, False, None)
            last_code = "provider_unavailable"
            last_detail = f"connection failed ({type(exc).__name__})"
        else:
            status = response.status_code
            if 200 <= status < 300:
                try:
                    data = response.json()
                except ValueError:
                    guard.after_call(provider, False, None)
                    raise TransientError(
                        f"{provider}: HTTP {status} from {where} was not valid JSON",
                        code="provider_bad_response",
                    ) from None
                if not isinstance(data, dict | list):
                    guard.after_call(provider, False, None)
                    raise TransientError(
                        f"{provider}: HTTP {status} from {where} was JSON but not an "
                        "object or array",
                        code="provider_bad_response",
                    )
                guard.after_call(provider, True, None)
                return data, response

            if status in RETRY_STATUSES:
                retry_after = parse_retry_after(response.headers.get("retry-after"))
                if retry_after is not None:
                    retry_after = min(retry_after, RETRY_AFTER_REPORT_CAP_S)
                guard.after_call(provider, False, retry_after)
                last_code = "provider_rate_limited" if status == 429 else "provider_unavailable"
                last_detail = f"HTTP {status}"
                if retry_after is not None and retry_after > max_retry_after_s:
                    raise TransientError(
                        f"{provider}: HTTP {status} from {where}; server asks to retry "
                        f"after {retry_after:.0f}s",
                        code=last_code,
                        retry_after=retry_after,
                    )
            else:
                # The provider answered: for the breaker this is not an outage.
                guard.after_call(provider, True, None)
                excerpt = _body_excerpt(response)
                suffix = f": {excerpt}" if excerpt else ""
                if status in (401, 403):
                    raise PermanentError(
                        f"{provider}: HTTP {status} from {where} (check the credentials){suffix}",
                        code="provider_auth",
                    )
                raise PermanentError(
                    f"{provider}: HTTP {status} from {where}{suffix}",
                    code="provider_rejected",
                )

        last_retry_after = retry_after
        if attempt + 1 < tries:
            delay = (
                retry_after if retry_after is not None else backoff_delay(attempt, backoff_base_s)
            )
            if delay > 0:
                sleep(delay)

    raise TransientError(
        f"{provider}: {last_detail} from {where} after {tries} tries",
        code=last_code,
        retry_after=last_retry_after,
    )
