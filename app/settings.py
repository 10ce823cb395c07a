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
from sqlalchemy.engine import make_url

from app.storage.artifacts import ArtifactStore
from app.storage.layout import DataLayout

EMBEDDED_BROKER = "filesystem://"
# Passwords that ship in examples and compose files: production refuses to run with them.
DEFAULT_SECRETS = frozenset({"", "transferlab", "postgres", "password", "changeme", "secret"})


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

    # Network exposure. Both lists are comma-separated; empty means the check is off.
    allowed_hosts: str = Field(
        default="",
        description="Host header allow-list, e.g. 'api.example.com,127.0.0.1' (DNS rebinding)",
    )
    cors_origins: str = Field(
        default="", description="origins allowed to call the API from a browser; empty: none"
    )
    api_key_cache_s: float = Field(
        default=10.0,
        ge=0,
        description="how long an API process trusts a key it has checked; a key revoked from "
        "another process is refused within this time",
    )
    idempotency_ttl_s: float = Field(
        default=24 * 3600.0, gt=0, description="how long an Idempotency-Key is remembered"
    )
    # Observability.
    log_format: Literal["auto", "text", "json"] = Field(
        default="auto", description="auto: JSON in production, text in dev"
    )
    worker_metrics_port: int | None = Field(
        default=None, description="port of a worker's Prometheus endpoint; default: none"
    )

    # Upload and ingest limits (see app.storage.datasets.IngestLimits for what each guards).
    max_upload_bytes: int = 2 * 2**30
    max_archive_entries: int = 100_000
    max_extracted_bytes: int = 10 * 2**30
    max_compression_ratio: float = 100.0
    max_image_pixels: int = 89_478_485
    max_predict_files: int = 64
    max_predict_bytes: int = 64 * 2**20
    max_json_bytes: int = Field(default=256 * 2**10, description="largest JSON request body")

    # Worker and serving.
    device: str = "auto"
    loader_workers: int | None = Field(
        default=None,
        ge=0,
        description="DataLoader worker processes per job; default: 2 on CPU (the cores train), "
        "and on a GPU one per core but one (bench/gpu_check.py: decoding bounds GPU jobs)",
    )
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        description="intra-op threads of a worker's torch; default: torch's own (one per core)",
    )
    model_cache_size: int = 4
    registry_cache_s: float = Field(
        default=5.0,
        ge=0,
        description="how often an API process checks whether aliases moved or versions were "
        "deleted elsewhere: name@alias follows a move made by another process within this time",
    )
    serving_backend: Literal["torch", "onnx"] = Field(
        default="onnx",
        description="what runs a prediction's forward pass: onnxruntime on the version's "
        "model.onnx (versions without one use torch), or eager torch; bench/onnx_vs_torch.py",
    )
    progress_interval_s: float = Field(
        default=2.0, description="how often a running job writes its step progress"
    )
    stale_job_after_s: float = Field(
        default=30.0,
        gt=0,
        description="a running job without a heartbeat for this long has lost its worker: it "
        "goes back to the queue and resumes from its last checkpoint",
    )
    job_heartbeat_s: float = Field(
        default=5.0, gt=0, description="how often a worker writes its running job's heartbeat"
    )
    max_job_attempts: int = Field(
        default=3, ge=1, description="a job whose worker died this many times is failed"
    )

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Settings:
        if self.environment == "production":
            url = self.resolved_database_url
            if url.startswith("sqlite"):
                raise ValueError("environment=production needs a server database, not SQLite")
            if self.broker_url == EMBEDDED_BROKER:
                raise ValueError("environment=production needs a real broker (Redis)")
            password = make_url(url).password
            if password is None or str(password) in DEFAULT_SECRETS:
                raise ValueError(
                    "environment=production refuses a database URL without a password or with a "
                    "default one; set a strong password in TRANSFERLAB_DATABASE_URL"
                )
        return self

    @property
    def allowed_host_list(self) -> list[str]:
        return [h.strip() for h in self.allowed_hosts.split(",") if h.strip()]

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @property
    def json_logs(self) -> bool:
        if self.log_format == "auto":
            return self.environment == "production"
        return self.log_format == "json"

    @property
    def layout(self) -> DataLayout:
        return DataLayout(self.data_dir.resolve())

    @property
    def artifacts(self) -> ArtifactStore:
        return ArtifactStore(self.layout.root)

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
