from __future__ import annotations

import uuid
import zipfile
from pathlib import Path

from sqlalchemy.orm import Session

from app.db.models import ModelVersion
from app.db.repositories import models as repo
from app.errors import NotFound
from app.storage.artifacts import ArtifactStore


class ModelNotFound(NotFound):
    code = "model_not_found"


def get_model(session: Session, model_id: uuid.UUID) -> ModelVersion:
    model = repo.get(session, model_id)
    if model is None:
        raise ModelNotFound(f"model version {model_id} does not exist; GET /v1/models lists them")
    return model


def download_archive(model: ModelVersion, store: ArtifactStore) -> Path:
    """A zip of the model folder (weights + model.json), built once: versions are immutable.

    NOTE the file name is fixed: no user text (the model's name) ever becomes part of a path.
    """
    folder = store.path(model.artifact_key)
    archive = folder / "bundle" / "model.zip"
    if not archive.exists():
        archive.parent.mkdir(exist_ok=True)
        # A name of its own per call: two first downloads at once must not write one file.
        partial = archive.with_name(f"model.{uuid.uuid4().hex}.partial")
        # Weights do not compress; storing them makes the bundle cheap to build.
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED) as zf:
            for name in ("model.safetensors", "model.json"):
                zf.write(folder / name, arcname=name)
        partial.replace(archive)  # atomic: concurrent downloads never see half a zip
    return archive
