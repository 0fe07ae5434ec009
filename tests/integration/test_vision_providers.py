"""The photo providers against real protocols: the OCR model, and fake OpenAI, Rekognition
and Google Vision servers on 127.0.0.1 (the real clients: the project's OpenAI-compatible
client, boto3, httpx)."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageDraw

from conveyor.config import Settings
from conveyor.errors import MediaError, NotConfigured, PermanentError, TransientError
from conveyor.media.hashes import hamming
from conveyor.providers.base import NoGuard
from conveyor.providers.vision.aws_rekognition import RekognitionProvider
from conveyor.providers.vision.base import AIProviderBase, PhotoInput, ProviderResult
from conveyor.providers.vision.factory import GUARD_KEYS, PROVIDERS, build_ai_provider
from conveyor.providers.vision.google_vision import GoogleVisionProvider
from conveyor.providers.vision.local import LocalProvider
from conveyor.providers.vision.openai import OpenAIVisionProvider
from tests.fakes.fake_google_vision import FakeGoogleVision
from tests.fakes.fake_openai import FakeOpenAI
from tests.fakes.fake_rekognition import FakeRekognition
from tests.fakes.guard import RecordingGuard
from tests.support import font, free_port, make_settings

pytestmark = pytest.mark.timeout(60)

LLM_KEY = "sk-test-vision-5ecret-0123456789"
GOOGLE_KEY = "AIzaSyFAKE-google-5ecret-0123456789"
AWS_ACCESS_KEY = "AKIAFAKEACCESS0123456"
AWS_SECRET = "fake/secret+key/0123456789abcdefghijklmnop"


# --------------------------------------------------------------------------- inputs


def photo_with_text(words: tuple[str, str] = ("HARBOUR", "SUNSET 2024")) -> PhotoInput:
    im = Image.new("RGB", (900, 600), (200, 215, 230))
    draw = ImageDraw.Draw(im)
    draw.rectangle([0, 420, 899, 599], fill=(40, 90, 160))  # "sea"
    draw.ellipse([650, 60, 800, 210], fill=(250, 200, 60))  # "sun"
    draw.text((60, 90), words[0], font=font(80), fill=(20, 20, 20))
    draw.text((60, 230), words[1], font=font(64), fill=(120, 20, 20))
    out = io.BytesIO()
    im.save(out, "JPEG", quality=90)
    exif = {"camera_make": "Canon", "taken_at": "2024-05-01T14:03:22",
            "gps": {"lat": 52.52, "lon": 13.405}}
    return PhotoInput(out.getvalue(), 900, 600, "JPEG", exif, filename="harbour.jpg")


@pytest.fixture(scope="module")
def photo() -> PhotoInput:
    return photo_with_text()


@pytest.fixture(scope="module")
def local_provider() -> Iterator[LocalProvider]:
    """One warmed-up OCR model for the whole module (loading it takes seconds)."""
    provider = LocalProvider()
    provider.warm_up()
    yield provider
    provider.close()


def settings_for(tmp_path: Path, **overrides: Any) -> Settings:
    return make_settings(tmp_path / "home", **overrides)


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


# --------------------------------------------------------------------------- local

LOCAL_KEYS = {"dimensions", "format", "exif", "colors", "hashes", "quality", "text"}


def test_local_provider_reads_the_words_and_fills_every_documented_key(
    local_provider: LocalProvider, photo: PhotoInput
) -> None:
    result = local_provider.process_image(photo)
    assert isinstance(result, ProviderResult)
    r = result.results
    assert set(r) == LOCAL_KEYS
    assert r["dimensions"] == {"width": 900, "height": 600, "megapixels": 0.54,
                               "orientation": "landscape"}
    assert r["format"] == "JPEG"
    assert r["exif"] == photo.exif
    text = r["text"]["text"].upper()
    assert "HARBOUR" in text and "SUNSET" in text and "2024" in text
    assert set(r["text"]) == {"text", "lines", "model"}
    for line in r["text"]["lines"]:
        assert set(line) == {"text", "confidence", "box"}
        assert 0.0 < line["confidence"] <= 1.0 and len(line["box"]) == 4
    assert set(r["hashes"]) == {"ahash", "dhash", "phash"}
    assert all(len(h) == 16 for h in r["hashes"].values())
    assert set(r["quality"]) == {"sharpness", "exposure"}
    assert set(r["quality"]["sharpness"]) == {"laplacian_var", "score"}
    assert set(r["quality"]["exposure"]) == {"mean", "shadows_clipped", "highlights_clipped",
                                             "score", "label"}
    assert r["quality"]["exposure"]["label"] == "ok"
    assert 1 <= len(r["colors"]) <= 5
    assert r["colors"][0]["hex"].startswith("#") and set(r["colors"][0]) == {"hex", "fraction"}
    assert result.cost_usd == 0.0 and result.model and "rapidocr" in result.model
    json.dumps(r, allow_nan=False)


def test_local_provider_hashes_find_a_resized_copy(
    local_provider: LocalProvider, photo: PhotoInput
) -> None:
    with Image.open(io.BytesIO(photo.jpeg)) as im:
        out = io.BytesIO()
        im.resize((450, 300)).save(out, "JPEG", quality=50)
    copy = PhotoInput(out.getvalue(), 450, 300, "JPEG")
    other = photo_with_text(("MOUNTAIN", "WINTER 1999"))
    a = local_provider.process_image(photo).results["hashes"]["phash"]
    b = local_provider.process_image(copy).results["hashes"]["phash"]
    assert hamming(a, b) <= 6
    assert local_provider.process_image(copy).results["dimensions"]["orientation"] == "landscape"
    assert local_provider.process_image(other).results["text"]["text"] != ""


def test_local_provider_refuses_bytes_that_are_not_a_jpeg(local_provider: LocalProvider) -> None:
    with pytest.raises(MediaError) as info:
        local_provider.process_image(PhotoInput(b"GIF89a nonsense", 1, 1, "GIF"))
    assert info.value.code == "image_corrupt"


# --------------------------------------------------------------------------- openai


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=LLM_KEY) as server:
        server.respond_with({
            "caption": "A harbour at sunset with a sign.",
            "tags": ["Harbour", "sunset", "harbour", " Sea "],
            "objects": [{"name": "sun", "confidence": 0.9}, {"name": "sign", "confidence": 85}],
            "text": "HARBOUR SUNSET 2024",
            "confidence": 0.82,
        })
        yield server


def openai_settings(tmp_path: Path, fake: FakeOpenAI, **kw: Any) -> Settings:
    return settings_for(tmp_path, ai_provider="openai", llm_base_url=fake.base_url,
                        llm_api_key=LLM_KEY, llm_model="gpt-4o-mini", **kw)


def test_openai_provider_caption_tags_cost(
    tmp_path: Path, fake_openai: FakeOpenAI, photo: PhotoInput
) -> None:
    guard = RecordingGuard()
    provider = build_ai_provider(openai_settings(tmp_path, fake_openai), guard)
    assert isinstance(provider, OpenAIVisionProvider) and provider.name == "openai"
    try:
        result = provider.process_image(photo)
    finally:
        provider.close()
    assert result.results == {
        "caption": "A harbour at sunset with a sign.",
        "tags": ["harbour", "sunset", "sea"],
        "objects": [{"name": "sun", "confidence": 0.9}, {"name": "sign", "confidence": 0.85}],
        "text": "HARBOUR SUNSET 2024",
    }
    assert result.model == "gpt-4o-mini"
    assert result.cost_usd == pytest.approx((1000 * 0.15 + 100 * 0.60) / 1_000_000)
    assert result.confidence == 0.82
    assert [c[:2] for c in guard.calls] == [("before", "llm"), ("after", "llm")]
    (request,) = fake_openai.completions
    body = request.body
    assert body["response_format"]["type"] == "json_schema"
    schema = body["response_format"]["json_schema"]["schema"]
    assert set(schema["required"]) == {"caption", "tags", "objects", "text", "confidence"}
    image_url = body["messages"][1]["content"][1]["image_url"]["url"]
    assert image_url.startswith("data:image/jpeg;base64,")
    assert base64.b64decode(image_url.split(",", 1)[1]) == photo.jpeg  # small: sent as is


def test_openai_provider_errors(tmp_path: Path, fake_openai: FakeOpenAI, photo: PhotoInput) -> None:
    with pytest.raises(NotConfigured):
        build_ai_provider(settings_for(tmp_path, ai_provider="openai"), NoGuard())

    provider = build_ai_provider(openai_settings(tmp_path, fake_openai), NoGuard())
    fake_openai.respond_with({"caption": "", "tags": [], "objects": [], "text": "",
                              "confidence": 0})
    with pytest.raises(TransientError) as bad:
        provider.process_image(photo)
    assert bad.value.code == "llm_bad_output"

    wrong = build_ai_provider(
        settings_for(tmp_path, ai_provider="openai", llm_base_url=fake_openai.base_url,
                     llm_api_key="sk-wrong-key-that-the-server-echoes"), NoGuard())
    with pytest.raises(PermanentError) as denied:
        wrong.process_image(photo)
    assert denied.value.code == "provider_auth"
    assert "sk-wrong-key-that-the-server-echoes" not in str(denied.value)
    provider.close()
    wrong.close()


# --------------------------------------------------------------------------- rekognition


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Credentials from the environment only: nothing from ~/.aws or an instance role."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL",
                 "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AWS_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def fake_rekognition(aws_env: None) -> Iterator[FakeRekognition]:
    with FakeRekognition(access_key=AWS_ACCESS_KEY, region="eu-west-1") as server:
        yield server


def rekognition(fake: FakeRekognition, **kw: Any) -> tuple[RekognitionProvider, Sleeps]:
    sleeps = Sleeps()
    guard = kw.pop("guard", NoGuard())
    provider = RekognitionProvider(guard, region="eu-west-1", endpoint_url=fake.url,
                                   sleep=sleeps, **kw)
    return provider, sleeps


def test_rekognition_happy_path_through_the_factory(
    tmp_path: Path, fake_rekognition: FakeRekognition, photo: PhotoInput
) -> None:
    guard = RecordingGuard()
    settings = settings_for(tmp_path, ai_provider="aws_rekognition",
                            aws_endpoint_url=fake_rekognition.url, aws_region="eu-west-1")
    provider = build_ai_provider(settings, guard)
    assert isinstance(provider, RekognitionProvider)
    result = provider.process_image(photo)
    provider.close()
    r = result.results
    assert set(r) == {"labels", "text", "label_model_version", "text_model_version"}
    assert r["labels"][0] == {"name": "Animal", "confidence": 0.9812, "parents": [],
                              "instances": 0}
    dog = next(x for x in r["labels"] if x["name"] == "Dog")
    assert dog == {"name": "Dog", "confidence": 0.9812, "parents": ["Animal", "Pet"],
                   "instances": 1}
    assert r["text"]["text"] == "HELLO WORLD\nCONVEYOR 2024"  # LINEs only, not WORDs
    assert r["text"]["lines"][0]["box"][0] == [90.0, 60.0]  # ratios x canonical pixels
    assert r["label_model_version"] == "3.0"
    assert result.cost_usd == pytest.approx(0.002)
    assert fake_rekognition.targets() == ["RekognitionService.DetectLabels",
                                          "RekognitionService.DetectText"]
    for req in fake_rekognition.requests:
        assert req.headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIAFAKE")
        assert req.headers["content-type"] == "application/x-amz-json-1.1"
        assert req.body["Image"]["Bytes"] == f"<{len(photo.jpeg)} bytes>"
        assert AWS_SECRET not in str(req.headers)  # signed, never sent
    assert [c[:2] for c in guard.calls] == [("before", "vision_aws_rekognition"),
                                            ("after", "vision_aws_rekognition")] * 2


def test_rekognition_throttling_is_transient_with_retry_after(
    fake_rekognition: FakeRekognition, photo: PhotoInput
) -> None:
    guard = RecordingGuard()
    provider, sleeps = rekognition(fake_rekognition, guard=guard, max_tries=2)
    fake_rekognition.fail_next(2, "throttle", retry_after=7)
    with pytest.raises(TransientError) as info:
        provider.process_image(photo)
    assert info.value.code == "provider_rate_limited"
    assert info.value.retry_after == 7.0
    assert "ThrottlingException" in str(info.value)
    assert sleeps.calls == [7.0]  # retried once in-call, honouring Retry-After
    assert ("after", "vision_aws_rekognition", False, 7.0) in guard.calls

    fake_rekognition.fail_next(1, "server")  # one 500, then the retry succeeds
    result = provider.process_image(photo)
    assert result.results["labels"]

    fake_rekognition.fail_next(2, "server")
    with pytest.raises(TransientError) as server:
        provider.process_image(photo)
    assert server.value.code == "provider_unavailable" and server.value.retry_after is None


def test_rekognition_permanent_errors_and_no_secrets(
    fake_rekognition: FakeRekognition, photo: PhotoInput
) -> None:
    provider, sleeps = rekognition(fake_rekognition)
    fake_rekognition.fail_next(
        1, "access_denied",
        message=f"User {AWS_ACCESS_KEY} with secret {AWS_SECRET} is not authorized")
    with pytest.raises(PermanentError) as denied:
        provider.process_image(photo)
    assert denied.value.code == "provider_auth"
    assert AWS_ACCESS_KEY not in str(denied.value) and AWS_SECRET not in str(denied.value)
    assert "AccessDeniedException" in str(denied.value)

    fake_rekognition.fail_next(1, "invalid_image")
    with pytest.raises(PermanentError) as invalid:
        provider.process_image(photo)
    assert invalid.value.code == "provider_rejected"
    assert sleeps.calls == []  # permanent errors are not retried


def test_rekognition_wrong_credentials_and_dead_endpoint(
    fake_rekognition: FakeRekognition, monkeypatch: pytest.MonkeyPatch, photo: PhotoInput
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWN000000000")
    provider, _ = rekognition(fake_rekognition)
    with pytest.raises(PermanentError) as info:
        provider.process_image(photo)
    assert info.value.code == "provider_auth"
    assert "UnrecognizedClientException" in str(info.value)

    dead = RekognitionProvider(NoGuard(), region="eu-west-1",
                               endpoint_url=f"http://127.0.0.1:{free_port()}",
                               connect_timeout_s=1.0, max_tries=1)
    with pytest.raises(TransientError) as down:
        dead.process_image(photo)
    assert down.value.code == "provider_unavailable"


def test_rekognition_without_credentials_is_permanent(
    aws_env: None, monkeypatch: pytest.MonkeyPatch, photo: PhotoInput
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with FakeRekognition() as fake:
        provider, _ = rekognition(fake)
        with pytest.raises(PermanentError) as info:
            provider.process_image(photo)
    assert info.value.code == "provider_auth"
    assert fake.requests == []


def test_rekognition_shrinks_large_photos_below_5_mb(
    fake_rekognition: FakeRekognition
) -> None:
    noise = Image.effect_noise((3000, 2200), 90).convert("RGB")
    out = io.BytesIO()
    noise.save(out, "JPEG", quality=100)
    assert out.tell() > 5 * 1024 * 1024
    provider, _ = rekognition(fake_rekognition)
    provider.process_image(PhotoInput(out.getvalue(), 3000, 2200, "JPEG"))
    sent = fake_rekognition.requests[0].body["Image"]["Bytes"]
    assert 0 < int(sent.strip("<> bytes")) <= 5 * 1024 * 1024


# --------------------------------------------------------------------------- google


@pytest.fixture
def fake_google() -> Iterator[FakeGoogleVision]:
    with FakeGoogleVision(api_key=GOOGLE_KEY) as server:
        yield server


def google(fake: FakeGoogleVision, key: str = GOOGLE_KEY,
           **kw: Any) -> tuple[GoogleVisionProvider, Sleeps]:
    sleeps = Sleeps()
    guard = kw.pop("guard", NoGuard())
    provider = GoogleVisionProvider(key, guard, base_url=fake.url, sleep=sleeps,
                                    backoff_base_s=0.01, **kw)
    return provider, sleeps


def test_google_happy_path_through_the_factory(
    tmp_path: Path, fake_google: FakeGoogleVision, photo: PhotoInput,
    caplog: pytest.LogCaptureFixture,
) -> None:
    guard = RecordingGuard()
    settings = settings_for(tmp_path, ai_provider="google_vision",
                            google_vision_base_url=fake_google.url,
                            google_vision_api_key=GOOGLE_KEY)
    provider = build_ai_provider(settings, guard)
    assert isinstance(provider, GoogleVisionProvider)
    assert GOOGLE_KEY not in repr(provider)
    with caplog.at_level(logging.DEBUG):
        result = provider.process_image(photo)
    provider.close()
    r = result.results
    assert set(r) == {"labels", "text", "colors", "safe_search"}
    assert r["labels"][0] == {"name": "Dog", "confidence": 0.9712, "mid": "/m/0bt9lr"}
    assert r["text"]["text"] == "HELLO WORLD\nCONVEYOR 2024" and r["text"]["locale"] == "en"
    assert r["text"]["lines"] == [{"text": "HELLO WORLD", "confidence": None},
                                  {"text": "CONVEYOR 2024", "confidence": None}]
    assert r["colors"][0] == {"hex": "#c81e1e", "fraction": 0.52, "score": 0.61}
    assert r["safe_search"]["racy"] == "POSSIBLE"
    assert result.cost_usd == pytest.approx(0.0045)
    (req,) = fake_google.requests
    assert req.path == "/v1/images:annotate"
    assert req.query == {}  # the key travels in a header, never in the URL
    assert req.headers["x-goog-api-key"] == GOOGLE_KEY
    features = [f["type"] for f in req.body["requests"][0]["features"]]
    assert features == ["LABEL_DETECTION", "TEXT_DETECTION", "IMAGE_PROPERTIES",
                        "SAFE_SEARCH_DETECTION"]
    assert GOOGLE_KEY not in caplog.text  # httpx logs every request URL at INFO
    assert [c[:2] for c in guard.calls] == [("before", "vision_google_vision"),
                                            ("after", "vision_google_vision")]


def test_google_fake_also_takes_the_key_as_a_query_parameter(
    fake_google: FakeGoogleVision, photo: PhotoInput
) -> None:
    provider, _ = google(fake_google)
    body = provider.build_request(photo.jpeg)
    provider.close()
    ok = httpx.post(f"{fake_google.url}/v1/images:annotate", params={"key": GOOGLE_KEY},
                    json=body)
    assert ok.status_code == 200 and ok.json()["responses"][0]["labelAnnotations"]
    denied = httpx.post(f"{fake_google.url}/v1/images:annotate", json=body)
    assert denied.status_code == 403


def test_google_rate_limit_is_transient_with_retry_after_and_no_key(
    fake_google: FakeGoogleVision, photo: PhotoInput
) -> None:
    guard = RecordingGuard()
    provider, sleeps = google(fake_google, guard=guard, max_tries=2)
    fake_google.fail_next(2, status=429, retry_after=4)
    with pytest.raises(TransientError) as info:
        provider.process_image(photo)
    assert info.value.code == "provider_rate_limited"
    assert info.value.retry_after == 4.0
    assert sleeps.calls == [4.0]
    assert GOOGLE_KEY not in str(info.value)
    assert ("after", "vision_google_vision", False, 4.0) in guard.calls

    fake_google.fail_next(1, status=503, retry_after=1)  # one 503, then success
    assert provider.process_image(photo).results["labels"]

    fake_google.fail_next(1, status=429, retry_after=120)  # too long to wait in-call
    with pytest.raises(TransientError) as later:
        provider.process_image(photo)
    assert later.value.retry_after == 120.0
    provider.close()


def test_google_permanent_errors_never_show_the_key(
    fake_google: FakeGoogleVision, photo: PhotoInput
) -> None:
    wrong_key = "AIzaSyWRONG-key-the-server-echoes-back"
    provider, sleeps = google(fake_google, key=wrong_key)
    with pytest.raises(PermanentError) as denied:
        provider.process_image(photo)
    assert "HTTP 400" in str(denied.value) and "API key not valid" in str(denied.value)
    assert wrong_key not in str(denied.value)
    assert sleeps.calls == []
    provider.close()

    provider, _ = google(fake_google)
    fake_google.image_error_next(1, code=3, message="Bad image data.")
    with pytest.raises(PermanentError) as bad:
        provider.process_image(photo)
    assert bad.value.code == "provider_rejected" and "Bad image data" in str(bad.value)

    fake_google.image_error_next(1, code=14, message="The service is currently unavailable.")
    with pytest.raises(TransientError):
        provider.process_image(photo)
    provider.close()


def test_google_needs_a_key(tmp_path: Path) -> None:
    with pytest.raises(NotConfigured, match="GOOGLE_VISION_API_KEY"):
        build_ai_provider(settings_for(tmp_path, ai_provider="google_vision"), NoGuard())


# --------------------------------------------------------------------------- factory


def test_factory_selects_by_name_and_rejects_unknown_names(tmp_path: Path) -> None:
    assert PROVIDERS == ("local", "openai", "aws_rekognition", "google_vision")
    assert set(GUARD_KEYS) == set(PROVIDERS) - {"local"}
    default = build_ai_provider(settings_for(tmp_path), NoGuard())
    assert isinstance(default, LocalProvider)
    assert (default.name, default.version) == ("local", "1")
    assert isinstance(build_ai_provider(settings_for(tmp_path, ai_provider=" Local "),
                                        NoGuard()), LocalProvider)
    with pytest.raises(ValueError) as info:
        build_ai_provider(settings_for(tmp_path, ai_provider="dummy"), NoGuard())
    message = str(info.value)
    assert "'dummy'" in message
    for name in PROVIDERS:
        assert name in message


def test_every_provider_is_an_ai_provider_with_a_name_and_version(
    tmp_path: Path, aws_env: None
) -> None:
    settings = settings_for(tmp_path, llm_base_url="http://127.0.0.1:9/v1",
                            google_vision_api_key="k" * 20,
                            aws_endpoint_url="http://127.0.0.1:9")
    for name in PROVIDERS:
        settings.ai_provider = name
        provider = build_ai_provider(settings, NoGuard())
        try:
            assert isinstance(provider, AIProviderBase)
            assert provider.name == name and provider.version
        finally:
            provider.close()
