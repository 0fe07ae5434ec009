"""The real OpenAI-compatible client against the fake server on 127.0.0.1."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from conveyor.config import Settings
from conveyor.errors import PermanentError, ProviderUnavailable, TransientError
from conveyor.providers.base import NoGuard
from conveyor.providers.llm.base import ImageInput, VisionLLM
from conveyor.providers.llm.openai_compat import (
    DEFAULT_PRICES,
    OpenAICompatibleLLM,
    build_llm,
    lookup_price,
    parse_json_content,
)
from tests.fakes.fake_openai import FakeOpenAI
from tests.fakes.guard import RecordingGuard

pytestmark = pytest.mark.timeout(30)

KEY = "sk-test-5ecret-abcdef123456"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"artist": {"type": "string"}, "album": {"type": "string"}},
    "required": ["artist", "album"],
    "additionalProperties": False,
}
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=KEY) as server:
        server.respond_with({"artist": "Trash80", "album": "Icarus"})
        yield server


def make_llm(
    fake: FakeOpenAI, *, key: str | None = KEY, model: str = "gpt-4o-mini", **kw: Any
) -> OpenAICompatibleLLM:
    kw.setdefault("backoff_base_s", 0.01)
    timeout = kw.pop("timeout_s", 5.0)
    guard = kw.pop("guard", NoGuard())
    prices = kw.pop("prices", None)
    return OpenAICompatibleLLM(fake.base_url, key, model, timeout, guard, prices, **kw)


def ask(llm: VisionLLM, image: ImageInput | None = None) -> Any:
    return llm.complete_json(
        system="You read record sleeves.",
        prompt="Who and what is this?",
        schema=SCHEMA,
        schema_name="sleeve",
        image=image,
    )


def test_structured_output_parsed_and_cost_computed(fake: FakeOpenAI) -> None:
    guard = RecordingGuard()
    with make_llm(fake, guard=guard) as llm:
        res = ask(llm, ImageInput.from_bytes(b"\xff\xd8fake-jpeg", "image/jpeg"))
    assert res.data == {"artist": "Trash80", "album": "Icarus"}
    assert res.model == "gpt-4o-mini"
    assert (res.input_tokens, res.output_tokens) == (1000, 100)
    inp, out = DEFAULT_PRICES["gpt-4o-mini"]
    assert res.cost_known is True
    assert res.cost_usd == pytest.approx((1000 * inp + 100 * out) / 1e6)
    assert res.duration_ms >= 0
    assert guard.calls == [("before", "llm", None, None), ("after", "llm", True, None)]

    (req,) = fake.completions
    assert req.headers["authorization"] == f"Bearer {KEY}"
    body = req.body
    assert body["model"] == "gpt-4o-mini"
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "sleeve", "schema": SCHEMA, "strict": True},
    }
    system, user = body["messages"]
    assert system == {"role": "system", "content": "You read record sleeves."}
    text_part, image_part = user["content"]
    assert text_part == {"type": "text", "text": "Who and what is this?"}
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == b"\xff\xd8fake-jpeg"


def test_image_url_passed_through_and_text_only_prompt(fake: FakeOpenAI) -> None:
    with make_llm(fake) as llm:
        ask(llm, ImageInput.from_url("https://example.test/signed/abc.jpg?sig=1"))
        ask(llm)
    with_url, text_only = fake.completions
    assert with_url.body["messages"][1]["content"][1]["image_url"]["url"] == (
        "https://example.test/signed/abc.jpg?sig=1"
    )
    assert text_only.body["messages"][1]["content"] == "Who and what is this?"


def test_no_key_means_no_authorization_header() -> None:
    with FakeOpenAI() as fake, make_llm(fake, key=None) as llm:
        fake.respond_with({"artist": "a", "album": "b"})
        assert ask(llm).data == {"artist": "a", "album": "b"}
        assert "authorization" not in fake.completions[0].headers


def test_unknown_model_has_unknown_cost_and_prices_override(fake: FakeOpenAI) -> None:
    with make_llm(fake, model="llava:13b") as llm:
        res = ask(llm)
    assert res.cost_usd == 0.0 and res.cost_known is False
    with make_llm(fake, model="llava:13b", prices={"llava:13b": (1.0, 2.0)}) as llm:
        res = ask(llm)
    assert res.cost_known is True
    assert res.cost_usd == pytest.approx((1000 * 1.0 + 100 * 2.0) / 1e6)


def test_dated_model_name_in_answer_uses_base_price() -> None:
    assert lookup_price(DEFAULT_PRICES, "gpt-4o-2024-08-06") == DEFAULT_PRICES["gpt-4o"]
    assert lookup_price(DEFAULT_PRICES, "no-such-model") is None
    with FakeOpenAI(model="gpt-4.1-mini-2025-04-14") as fake:
        fake.respond_with({"artist": "a", "album": "b"})
        with make_llm(fake, key=None, model="my-alias") as llm:
            res = ask(llm)
    assert res.model == "gpt-4.1-mini-2025-04-14"
    assert res.cost_known is True


def test_fenced_json_is_accepted(fake: FakeOpenAI) -> None:
    fake.fenced = True
    with make_llm(fake) as llm:
        assert ask(llm).data == {"artist": "Trash80", "album": "Icarus"}
    assert parse_json_content('Here you go:\n{"a": 1}\nThanks') == {"a": 1}


def test_invalid_json_is_a_transient_llm_bad_output(fake: FakeOpenAI) -> None:
    fake.return_invalid_json(1)
    with make_llm(fake) as llm:
        with pytest.raises(TransientError) as info:
            ask(llm)
        assert info.value.code == "llm_bad_output"
        # the next call (a step retry) succeeds
        assert ask(llm).data["album"] == "Icarus"


def test_callable_answer_sees_the_request(fake: FakeOpenAI) -> None:
    fake.respond_with(lambda req: {"artist": req["model"], "album": "x"})
    with make_llm(fake, model="gpt-4.1") as llm:
        assert ask(llm).data == {"artist": "gpt-4.1", "album": "x"}


def test_429_retry_after_is_honoured(fake: FakeOpenAI) -> None:
    fake.fail_next(1, 429, retry_after=1)
    guard = RecordingGuard()
    with make_llm(fake, guard=guard) as llm:
        started = time.monotonic()
        res = ask(llm)
        elapsed = time.monotonic() - started
    assert res.data["artist"] == "Trash80"
    assert elapsed >= 0.95
    assert len(fake.completions) == 2
    assert ("after", "llm", False, 1.0) in guard.calls
    assert guard.calls[-1] == ("after", "llm", True, None)


def test_long_retry_after_gives_up_at_once(fake: FakeOpenAI) -> None:
    fake.fail_next(1, 429, retry_after=120)
    with make_llm(fake) as llm, pytest.raises(TransientError) as info:
        ask(llm)
    assert info.value.code == "provider_rate_limited"
    assert info.value.retry_after == 120
    assert len(fake.completions) == 1


def test_5xx_retried_then_transient_error(fake: FakeOpenAI) -> None:
    fake.fail_next(3, 500)
    with make_llm(fake, max_tries=3) as llm, pytest.raises(TransientError) as info:
        ask(llm)
    assert info.value.code == "provider_unavailable"
    assert len(fake.completions) == 3


def test_5xx_then_success(fake: FakeOpenAI) -> None:
    fake.fail_next(2, 503)
    with make_llm(fake, max_tries=3) as llm:
        assert ask(llm).data["album"] == "Icarus"
    assert [r.status for r in fake.completions] == [503, 503, 200]


def test_wrong_key_is_permanent_and_never_leaks(fake: FakeOpenAI) -> None:
    wrong = "sk-wrong-key-9876543210zyx"
    with make_llm(fake, key=wrong) as llm, pytest.raises(PermanentError) as info:
        ask(llm)
    err = info.value
    assert err.code == "provider_auth"
    assert "401" in str(err) and "llm" in str(err)
    # the fake echoes the key in its error body; the client must mask it
    assert wrong not in str(err) and wrong not in repr(err)
    assert "9876543210zyx" not in str(err)
    assert len(fake.completions) == 1  # auth errors are not retried


def test_bad_request_is_permanent_provider_rejected(fake: FakeOpenAI) -> None:
    fake.respond_with({"x": 1})
    with make_llm(fake) as llm, pytest.raises(PermanentError) as info:
        llm.complete_json(system="s", prompt="p", schema="nope", schema_name="x")  # type: ignore[arg-type]
    assert info.value.code == "provider_rejected"
    assert "400" in str(info.value)


def test_timeout_becomes_provider_timeout() -> None:
    with (
        FakeOpenAI(delay_s=0.5) as fake,
        make_llm(fake, key=None, timeout_s=0.1, max_tries=2) as llm,
        pytest.raises(TransientError) as info,
    ):
        ask(llm)
    assert info.value.code == "provider_timeout"


def test_connection_refused_is_transient() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    llm = OpenAICompatibleLLM(
        f"http://127.0.0.1:{port}/v1",
        KEY,
        "gpt-4o-mini",
        1.0,
        NoGuard(),
        None,
        max_tries=2,
        backoff_base_s=0.01,
    )
    with llm, pytest.raises(TransientError) as info:
        ask(llm)
    assert info.value.code == "provider_unavailable"
    assert KEY not in str(info.value)


def test_open_breaker_stops_the_call(fake: FakeOpenAI) -> None:
    class OpenBreaker:
        def before_call(self, provider: str) -> None:
            raise ProviderUnavailable(f"{provider} breaker open", retry_after=5)

        def after_call(self, provider: str, ok: bool, retry_after: float | None = None) -> None:
            raise AssertionError("no call was made")

    with make_llm(fake, guard=OpenBreaker()) as llm, pytest.raises(ProviderUnavailable):
        ask(llm)
    assert fake.completions == []


def test_build_llm_from_settings(fake: FakeOpenAI) -> None:
    assert build_llm(Settings(llm_base_url=None), NoGuard()) is None
    settings = Settings(
        llm_base_url=fake.base_url,
        llm_api_key=SecretStr(KEY),
        llm_model="gpt-4o",
        llm_prices={"gpt-4o": (10.0, 0.0)},
    )
    llm = build_llm(settings, NoGuard())
    assert llm is not None and llm.name == "llm" and llm.model == "gpt-4o"
    assert KEY not in repr(llm)
    res = ask(llm)
    assert res.cost_usd == pytest.approx(1000 * 10.0 / 1e6)


def test_base_url_without_v1_is_not_guessed(fake: FakeOpenAI) -> None:
    llm = OpenAICompatibleLLM(fake.url, KEY, "gpt-4o-mini", 5.0, NoGuard(), None)
    with llm, pytest.raises(PermanentError) as info:
        ask(llm)
    assert info.value.code == "provider_rejected" and "404" in str(info.value)


def test_runs_as_a_separate_process() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakes.fake_openai",
            "--port",
            "0",
            "--respond-json",
            '{"artist": "P", "album": "Q"}',
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        llm = OpenAICompatibleLLM(base_url, None, "gpt-4o-mini", 5.0, NoGuard(), None)
        with llm:
            assert ask(llm).data == {"artist": "P", "album": "Q"}
        r = httpx.get(base_url.removesuffix("/v1") + "/_fake/requests", timeout=5)
        assert len(r.json()) == 1
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def test_base_url_without_scheme_is_a_config_error() -> None:
    llm = OpenAICompatibleLLM("localhost:1/v1", KEY, "gpt-4o-mini", 1.0, NoGuard(), None)
    with llm, pytest.raises(PermanentError) as info:
        ask(llm)
    assert info.value.code == "config_invalid" and KEY not in str(info.value)
