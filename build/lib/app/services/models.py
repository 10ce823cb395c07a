from __future__ import annotations

import uuid
import zipfile
from pathlib import Path

from sqlalchemy.orm import Session

from app.db.models import ModelVersion
from app.db.repositories import models as repo
from app.errors import NotFound


class ModelNotFound(NotFound):
    code = "model_not_found"


def get_model(session: Session, model_id: uuid.UUID) -> ModelVersion:
    model = repo.get(session, model_id)
    if model is None:
        raise ModelNotFound(f"model version {model_id} does not exist; GET /v1/models lists them")
    return model


def download_archive(model: ModelVersion) -> Path:
    """A zip of the model folder (weights + model.json), built once: versions are immutable."""
    folder = Path(model.artifact_dir)
    archive = folder / "bundle" / f"{model.name}-v{model.version}.zip"
    if not archive.exists():
        archive.parent.mkdir(exist_ok=True)
        partial = archive.with_suffix(".partial")
        # Weights do not compress; storing them makes the bundle cheap to build.
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED) as zf:
            for name in ("model.safetensors", "model.json"):
                zf.write(folder / name, arcname=name)
        partial.replace(archive)  # atomic: concurrent downloads never see half a zip
    return archive
