"""Settings: environment variables with the prefix ``CONVEYOR_`` or ``conveyor.toml``.

The table in docs/configuration.md lists every setting; it mirrors DESIGN.md.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CONVEYOR_",
        toml_file=os.environ.get("CONVEYOR_CONFIG_FILE", "conveyor.toml"),
        extra="ignore",
    )

    home: Path = Path("./var")
    database_url: str | None = None
    storage_url: str | None = None
    executor: str = "local"  # "local" | "inline" | "celery"
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1)
    # celery executor: redis://127.0.0.1:6379/0 or amqp://guest:guest@127.0.0.1:5672//
    broker_url: str | None = None
    celery_queue: str = "conveyor"
    # a pending job whose message was published this long ago is published again
    redispatch_after_s: float = 300.0
    dispatch_interval_s: float = 1.0
    secret_key: SecretStr | None = None
    public_url: str = "http://127.0.0.1:8000"
    # extra modules imported at start-up whose steps register themselves (your own pipelines)
    plugins: list[str] = Field(default_factory=list)

    # providers
    ocr_provider: str = "rapidocr"
    llm_base_url: str | None = None
    llm_api_key: SecretStr | None = None
    llm_model: str = "gpt-4o-mini"
    llm_timeout_s: float = 60.0
    llm_image_mode: str = "data_url"  # or "signed_url"
    llm_rate_per_min: float = 60.0
    llm_prices: dict[str, tuple[float, float]] = Field(default_factory=dict)
    discogs_base_url: str = "https://api.discogs.com"
    discogs_token: SecretStr | None = None
    discogs_timeout_s: float = 20.0
    discogs_collection_csv: Path | None = None
    records_catalog: str = "discogs"  # "discogs" (API) or "collection" (CSV export)
    catalog_cache_ttl_s: int = 30 * 24 * 3600

    # photos pipeline: "local" | "openai" | "aws_rekognition" | "google_vision"
    ai_provider: str = "local"
    ai_rate_per_min: float = 120.0
    aws_region: str = "us-east-1"
    aws_endpoint_url: str | None = None  # an S3 / Rekognition compatible endpoint
    google_vision_base_url: str = "https://vision.googleapis.com"
    google_vision_api_key: SecretStr | None = None
    google_vision_timeout_s: float = 30.0
    photos_duplicate_distance: int = 8  # perceptual-hash bits that may differ

    # records pipeline thresholds
    records_escalate_below: float = 0.75
    records_auto_archive_at: float = 0.9

    # engine
    lease_seconds: float = 60.0
    step_timeout_s: float = 900.0
    heartbeat_seconds: float = 10.0
    backoff_base_s: float = 2.0
    backoff_cap_s: float = 300.0
    poll_interval_s: float = 0.2
    breaker_failures: int = 5
    breaker_open_s: float = 30.0

    # media limits
    max_upload_bytes: int = 50 * 1024 * 1024
    max_image_pixels: int = 60_000_000
    image_timeout_s: float = 30.0
    image_memory_mb: int = 2048

    @property
    def home_dir(self) -> Path:
        return _resolved(self.home)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home_dir / 'conveyor.db'}"

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or f"file://{self.home_dir / 'storage'}"

    @property
    def logs_dir(self) -> Path:
        return self.home_dir / "logs"

    def signing_key(self) -> bytes:
        """The HMAC key for signed URLs: from config, else a file created once under home."""
        if self.secret_key is not None:
            return self.secret_key.get_secret_value().encode()
        path = self.home_dir / "secret.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.{secrets.token_hex(4)}.tmp")
            tmp.write_text(secrets.token_hex(32))
            tmp.chmod(0o600)
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)  # atomic: first writer wins, others read its key
            tmp.unlink(missing_ok=True)
        return path.read_text().strip().encode()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


@lru_cache(maxsize=64)
def _resolved(path: Path) -> Path:
    """``Path.resolve`` touches the file system; the home folder is asked for constantly."""
    return path.resolve()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reset_settings(**overrides: Any) -> Settings:
    """Drop the cached settings (tests, CLI options) and return fresh ones."""
    get_settings.cache_clear()
    settings = get_settings()
    for key, value in overrides.items():
        setattr(settings, key, value)
    return settings
