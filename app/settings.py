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

from app.cpu import usable_cpus
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
    upload_ttl_s: float = Field(
        default=24 * 3600.0,
        gt=0,
        description="a resumable upload with no part stored for this long is swept with its parts",
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
    predict_max_batch: int = Field(
        default=64, ge=1, le=1024, description="most images in one forward pass of a served model"
    )
    predict_lanes: int = Field(
        default_factory=lambda: min(4, usable_cpus()),
        ge=1,
        le=64,
        description="forward passes one served model may run at once, each on its share of the "
        "cores (onnx backend; torch runs one at a time); a lone request uses every core instead",
    )
    predict_lane_processes: bool = Field(
        default=True,
        description="run an onnx model's lanes as processes of their own (numpy, Pillow and "
        "onnxruntime), fed by the event loop, instead of threads of the API process",
    )
    predict_max_queued: int = Field(
        default=256,
        ge=1,
        description="most images waiting for one served model; past it, 503 overloaded",
    )
    decode_budget_pixels: int = Field(
        default=2**24,
        ge=1,
        description="pixels decoded at full size at once in an API process, all requests "
        "together (about 4 bytes each): bounds decoding memory under a flood of large images; "
        "one image larger than this decodes alone",
    )
    predict_channels_last: bool = Field(
        default=True, description="served models run in NHWC (see README, Serving)"
    )
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
    checkpoint_interval_s: float = Field(
        default=300.0,
        ge=0,
        description="inside an epoch, a running job also saves its training state once this many "
        "seconds have passed since its last save (epoch ends always save): the most work a dead "
        "worker can lose. A save of resnet18's state (171 MiB with AdamW moments and the best "
        "epoch) took 0.8-1.6 s on 2 CPU cores, resnet50's (359 MiB) 2.0-2.9 s: under 1% of 300 s",
    )
    max_job_attempts: int = Field(
        default=3, ge=1, description="a job whose worker died this many times is failed"
    )
    # Live job events (GET /v1/jobs/{id}/events): each open stream reads the job row and its new
    # metric rows once per poll, two indexed lookups, so a hundred watchers cost ~200 small
    # queries a second at the default.
    events_poll_s: float = Field(
        default=1.0, gt=0, le=60, description="how often an event stream looks for changes"
    )
    events_heartbeat_s: float = Field(
        default=15.0,
        gt=0,
        description="an idle event stream sends a comment this often, so proxies keep it open",
    )
    # uvicorn's graceful shutdown waits for every response to finish, and a stream finishes only
    # with its job: one open dashboard tab held a stopping API process for as long as the job ran
    # (measured: still up 40 s after SIGTERM). Streams close after this long instead; clients
    # reconnect at once with Last-Event-ID and miss nothing.
    events_max_s: float = Field(
        default=15.0, gt=0, description="an event stream closes after this long; clients reconnect"
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
