"""All configuration, read once from the environment (prefix ``TRANSFERLAB_``).

Only this module reads environment variables. With nothing set, the service runs on the embedded
default: SQLite and a filesystem message broker under ``./data``, so one laptop needs no services.
Two variables switch it to the production stack:

    TRANSFERLAB_DATABASE_URL=postgresql+psycopg://user:pass@db/transferlab
    TRANSFERLAB_BROKER_URL=redis://redis:6379/0
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.storage.layout import DataLayout

EMBEDDED_BROKER = "filesystem://"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRANSFERLAB_", env_file=None, extra="ignore")

    environment: Literal["dev", "production"] = "dev"
    data_dir: Path = Path("data")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default sqlite:///<data_dir>/transferlab.db"
    )
    broker_url: str = Field(
        default=EMBEDDED_BROKER,
        description="Celery broker; the default is a folder under data_dir (no Redis needed)",
    )
    host: str = "127.0.0.1"
    port: int = 8000

    # Upload and ingest limits (see app.storage.datasets.IngestLimits for what each guards).
    max_upload_bytes: int = 2 * 2**30
    max_archive_entries: int = 100_000
    max_extracted_bytes: int = 10 * 2**30
    max_compression_ratio: float = 100.0
    max_image_pixels: int = 89_478_485
    max_predict_files: int = 64
    max_predict_bytes: int = 64 * 2**20

    # Worker and serving.
    device: str = "auto"
    loader_workers: int = 2
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        description="intra-op threads of a worker's torch; default: torch's own (one per core)",
    )
    model_cache_size: int = 4
    progress_interval_s: float = Field(
        default=2.0, description="how often a running job writes its step progress"
    )
    stale_job_after_s: float = Field(
        default=600.0,
        description="a running job without a heartbeat for this long is failed when a worker "
        "starts (its worker died)",
    )

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Settings:
        if self.environment == "production":
            url = self.resolved_database_url
            if url.startswith("sqlite"):
                raise ValueError("environment=production needs a server database, not SQLite")
            if self.broker_url == EMBEDDED_BROKER:
                raise ValueError("environment=production needs a real broker (Redis)")
        return self

    @property
    def layout(self) -> DataLayout:
        return DataLayout(self.data_dir.resolve())

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.layout.root / 'transferlab.db'}"

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url == EMBEDDED_BROKER


@lru_cache
def get_settings() -> Settings:
    return Settings()
