"""Where things live under the data directory.

<data_dir>/
  transferlab.db          SQLite database (embedded default only)
  datasets/<id>/          extracted, validated images + manifest.json (immutable)
  models/<id>/            model.safetensors + model.json (immutable)
  uploads/<id>/           parts of resumable uploads (app.storage.parts), until completed or swept
  tmp/                    uploads in flight (upload-<id>) and their ingest locks (ingest-<id>.lock);
                          same filesystem so a finished upload is a rename
  broker/                 the embedded Celery broker's message folders
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

UPLOAD_PREFIX = "upload-"
LOCK_PREFIX = "ingest-"
LOCK_SUFFIX = ".lock"
PARTIAL_SUFFIX = ".partial"  # written under this name, then renamed into place


@dataclass(frozen=True)
class DataLayout:
    root: Path

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def features(self) -> Path:
        return self.root / "features"

    @property
    def uploads(self) -> Path:
        return self.root / "uploads"

    def upload_parts_dir(self, upload_id: uuid.UUID | str) -> Path:
        return self.uploads / str(upload_id)

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def broker(self) -> Path:
        return self.root / "broker"

    def dataset_dir(self, dataset_id: uuid.UUID | str) -> Path:
        return self.datasets / str(dataset_id)

    def model_dir(self, model_id: uuid.UUID | str) -> Path:
        return self.models / str(model_id)

    def features_dir(self, job_id: uuid.UUID | str) -> Path:
        return self.features / str(job_id)

    def upload_path(self, dataset_id: uuid.UUID | str) -> Path:
        """Where an upload is spooled while it is ingested (see ``app.storage.sweep``)."""
        return self.tmp / f"{UPLOAD_PREFIX}{dataset_id}"

    def ingest_lock_path(self, dataset_id: uuid.UUID | str) -> Path:
        return self.tmp / f"{LOCK_PREFIX}{dataset_id}{LOCK_SUFFIX}"

    def ensure(self) -> DataLayout:
        for path in (
            self.datasets,
            self.models,
            self.features,
            self.tmp,
            self.broker,
            self.uploads,
        ):
            path.mkdir(parents=True, exist_ok=True)
        return self
