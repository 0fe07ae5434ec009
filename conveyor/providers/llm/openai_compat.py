"""A vision LLM behind any OpenAI-compatible ``/chat/completions`` endpoint.

Works with OpenAI, vLLM, Ollama (``http://host:11434/v1``), llama.cpp server, LM Studio…
``base_url`` is the prefix that ``/chat/completions`` is appended to, i.e. it normally ends
in ``/v1`` (``https://api.openai.com/v1``). It is used exactly as given: a base URL without
``/v1`` is not "fixed up", because some servers mount the API elsewhere.

Structured output is requested with ``response_format = {"type": "json_schema", ...,
"strict": true}``; with ``strict`` the schema must follow OpenAI's strict-mode rules (every
property listed in ``required``, ``additionalProperties: false``). The answer is not
validated against the schema here: the caller validates (e.g. with a pydantic model).
"""

from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING, Any

import httpx

from conveyor.errors import PermanentError, TransientError
from conveyor.providers.base import CallGuard
from conveyor.providers.http import request_json
from conveyor.providers.llm.base import ImageInput, LLMResponse, VisionLLM

if TYPE_CHECKING:
    from conveyor.config import Settings

PROVIDER = "llm"

#: USD per 1M input tokens, per 1M output tokens. LIST PRICES copied from the vendors' public
#: price pages (2025); they change and may be out of date. Override them with the ``prices``
#: argument / ``CONVEYOR_LLM_PRICES``. Cached-input discounts and batch prices are ignored.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
    "o4-mini": (1.10, 4.40),
    "o3": (2.00, 8.00),
}

_DATE_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4})$")
_FENCE = re.compile(r"^\s*```[a-zA-Z0-9_-]*\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL)


def lookup_price(
    prices: dict[str, tuple[float, float]], *models: str
) -> tuple[float, float] | None:
    """The price for the first of ``models`` found, also trying each without a trailing
    date stamp (``gpt-4o-mini-2024-07-18`` → ``gpt-4o-mini``)."""
    for model in models:
        if not model:
            continue
        for candidate in (model, _DATE_SUFFIX.sub("", model)):
            if candidate in prices:
                return prices[candidate]
    return None


def parse_json_content(content: str) -> dict[str, Any]:
    """The model's message as a JSON object: strips a ```json fence and, failing that,
    tries the outermost ``{...}``. Raises ``TransientError(code="llm_bad_output")``."""
    text = content.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    candidates = [text]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end and (start, end) != (0, len(text) - 1):
        candidates.append(text[start : end + 1])
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    raise TransientError(
        f"{PROVIDER}: the model's answer was not a JSON object ({len(content)} chars)",
        code="llm_bad_output",
    )


def _message_text(message: dict[str, Any]) -> str | None:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # some servers answer with content parts
        parts = [
            p.get("text", "")
            for p in content
            if isinstance(p, dict) and isinstance(p.get("text"), str)
        ]
        return "".join(parts) if parts else None
    return None


def _int(value: Any) -> int:
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


class OpenAICompatibleLLM:
    """:class:`VisionLLM` over ``POST {base_url}/chat/completions``."""

    name = PROVIDER

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        model: str,
        timeout_s: float,
        guard: CallGuard,
        prices: dict[str, tuple[float, float]] | None = None,
        transport: httpx.BaseTransport | None = None,
        *,
        max_tries: int = 3,
        backoff_base_s: float = 0.5,
        max_tokens: int | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.guard = guard
        self.prices: dict[str, tuple[float, float]] = {**DEFAULT_PRICES, **(prices or {})}
        self.max_tries = max_tries
        self.backoff_base_s = backoff_base_s
        self.max_tokens = max_tokens
        headers = {"Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            transport=transport,
            follow_redirects=False,
        )

    def __repr__(self) -> str:  # no key in reprs
        return f"OpenAICompatibleLLM(base_url={self.base_url!r}, model={self.model!r})"

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> OpenAICompatibleLLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def build_request(
        self,
        *,
        system: str,
        prompt: str,
        schema: dict[str, Any],
        schema_name: str,
        image: ImageInput | None = None,
    ) -> dict[str, Any]:
        """The JSON body sent to ``/chat/completions``."""
        user_content: str | list[dict[str, Any]]
        if image is None:
            user_content = prompt
        else:
            user_content = [
                {"type": "text", "text": prompt},
                {"type": "image_url", "image_url": {"url": image.as_url()}},
            ]
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": user_content},
            ],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": schema_name, "schema": schema, "strict": True},
            },
        }
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        return body

    def complete_json(
        self,
        *,
        system: str,
        prompt: str,
        schema: dict[str, Any],
        schema_name: str,
        image: ImageInput | None = None,
    ) -> LLMResponse:
        body = self.build_request(
            system=system, prompt=prompt, schema=schema, schema_name=schema_name, image=image
        )
        started = time.monotonic()
        payload, _ = request_json(
            self._client,
            "POST",
            f"{self.base_url}/chat/completions",
            provider=PROVIDER,
            guard=self.guard,
            max_tries=self.max_tries,
            backoff_base_s=self.backoff_base_s,
            json=body,
        )
        duration_ms = int((time.monotonic() - started) * 1000)
        if not isinstance(payload, dict):
            raise TransientError(
                f"{PROVIDER}: chat completion was not a JSON object", code="provider_bad_response"
            )
        choices = payload.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise TransientError(
                f"{PROVIDER}: chat completion had no choices", code="provider_bad_response"
            )
        message = choices[0].get("message")
        if not isinstance(message, dict):
            raise TransientError(
                f"{PROVIDER}: chat completion had no message", code="provider_bad_response"
            )
        text = _message_text(message)
        if text is None:
            if message.get("refusal"):
                raise PermanentError(f"{PROVIDER}: the model refused to answer", code="llm_refused")
            raise TransientError(f"{PROVIDER}: the model's answer was empty", code="llm_bad_output")
        data = parse_json_content(text)

        usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else None
        input_tokens = _int(usage.get("prompt_tokens")) if usage else 0
        output_tokens = _int(usage.get("completion_tokens")) if usage else 0
        answered_model = payload.get("model") if isinstance(payload.get("model"), str) else None
        price = lookup_price(self.prices, self.model, answered_model or "")
        if price is not None and usage is not None:
            cost = (input_tokens * price[0] + output_tokens * price[1]) / 1_000_000
            cost_known = True
        else:
            cost, cost_known = 0.0, False
        return LLMResponse(
            data=data,
            model=answered_model or self.model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=round(cost, 8),
            duration_ms=duration_ms,
            cost_known=cost_known,
            raw={"id": payload.get("id"), "finish_reason": choices[0].get("finish_reason")},
        )


def build_llm(settings: Settings, guard: CallGuard) -> VisionLLM | None:
    """The configured vision LLM, or None when ``llm_base_url`` is not set."""
    if not settings.llm_base_url:
        return None
    key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
    return OpenAICompatibleLLM(
        base_url=settings.llm_base_url,
        api_key=key or None,
        model=settings.llm_model,
        timeout_s=settings.llm_timeout_s,
        guard=guard,
        prices=dict(settings.llm_prices),
    )
