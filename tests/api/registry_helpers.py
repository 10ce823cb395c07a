"""Model versions with real weights on disk, registered without running a job (fast)."""

from __future__ import annotations

import io
import uuid

import timm
import torch
from PIL import Image

from app.db.models import ModelVersion
from app.db.repositories import models as models_repo
from app.db.session import Database
from app.engine import ModelCard, export_onnx, save_artifact
from app.settings import Settings
from tests.engine._helpers import PREPROCESSING_32


def register_version(
    settings: Settings,
    name: str,
    classes: tuple[str, ...] = ("cat", "dog"),
    *,
    seed: int = 0,
    onnx: bool = False,
) -> dict:
    """A test_resnet version at 32 px with ``classes``, as the worker would register it."""
    torch.manual_seed(seed)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=len(classes)).eval()
    card = ModelCard(
        architecture={"library": "timm", "name": "test_resnet", "num_classes": len(classes)},
        class_names=classes,
        preprocessing=PREPROCESSING_32,
    )
    model_id = uuid.uuid4()
    key = settings.artifacts.model_key(model_id)
    folder = settings.artifacts.path(key)
    save_artifact(model, card, folder)
    metrics: dict = {"val_accuracy": 0.5}
    if onnx:
        metrics["onnx"] = export_onnx(model, card, folder).to_dict()
    db = Database(settings.resolved_database_url)
    with db.session_scope() as session:
        row = ModelVersion(
            id=model_id,
            name=name,
            version=models_repo.next_version(session, name),
            base_model="timm:test_resnet",
            strategy="finetune",
            class_names=list(classes),
            metrics=metrics,
            lineage={},
            artifact_key=key,
        )
        models_repo.add(session, row)
        version = row.version
    db.dispose()
    return {"id": str(model_id), "name": name, "version": version, "folder": folder}


def png(seed: int = 0, size: int = 40) -> bytes:
    g = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()
