from __future__ import annotations

import uuid
import zipfile
from pathlib import Path
from typing import Protocol

from sqlalchemy.orm import Session

from app.db.models import ModelVersion
from app.db.repositories import models as repo
from app.engine import export_onnx, load_artifact
from app.engine.onnx import ONNX_FILE
from app.errors import Conflict, NotFound
from app.storage.artifacts import ArtifactStore


class ModelNotFound(NotFound):
    code = "model_not_found"


def get_model(session: Session, model_id: uuid.UUID) -> ModelVersion:
    model = repo.get(session, model_id)
    if model is None:
        raise ModelNotFound(f"model version {model_id} does not exist; GET /v1/models lists them")
    return model


class VersionFiles(Protocol):
    """What finding a version's files needs: a row, or a cached resolution of one."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def name(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def artifact_key(self) -> str: ...


class OnnxUnavailable(Conflict):
    code = "onnx_unavailable"


def onnx_file(model: VersionFiles, store: ArtifactStore) -> Path:
    path = store.path(model.artifact_key) / ONNX_FILE
    if not path.is_file():
        raise OnnxUnavailable(
            f"{model.name}:{model.version} has no ONNX export (made before exports, or its "
            "export failed: its metrics.onnx says why); download format=zip instead",
            details={"model_id": str(model.id)},
        )
    return path


def download_archive(model: VersionFiles, store: ArtifactStore) -> Path:
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


def export_onnx_of(session: Session, store: ArtifactStore, model_id: uuid.UUID) -> dict:
    """Export a version made before ONNX exports (or re-export one): ``model.onnx`` beside its
    weights, checked as the worker checks new versions; the report replaces ``metrics.onnx``."""
    row = get_model(session, model_id)
    folder = store.path(row.artifact_key)
    model, card = load_artifact(folder, device="cpu")
    report = export_onnx(model, card, folder).to_dict()
    row.metrics = {**row.metrics, "onnx": report}
    session.flush()
    return report
