"""Serving tests: the real app on real SQLite, a real (untrained) timm model registered as a
model version the way the worker registers one, real torch on the CPU."""

from __future__ import annotations

import io
import threading
import uuid
from collections.abc import Callable

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch import nn

from app.db.models import ModelVersion
from app.db.repositories import models as models_repo
from app.db.session import Database
from app.engine import ModelCard, save_artifact
from app.settings import Settings
from tests.api.conftest import admin_key, client  # noqa: F401  (same real SQLite app)

CLASSES = ("zero", "one", "two")
PREPROCESSING = {
    "input_size": [3, 32, 32],
    "interpolation": "bicubic",
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "crop_pct": 0.875,
    "crop_mode": "center",
}


def register_model(
    settings: Settings, *, backbone: str = "test_resnet", seed: int = 0, preprocessing=None
) -> str:
    """Save an untrained timm model and insert its model version row; returns its id."""
    torch.manual_seed(seed)
    model = timm.create_model(backbone, pretrained=False, num_classes=len(CLASSES))
    card = ModelCard(
        architecture={"library": "timm", "name": backbone, "num_classes": len(CLASSES)},
        class_names=CLASSES,
        preprocessing=preprocessing or PREPROCESSING,
    )
    model_id = uuid.uuid4()
    key = settings.artifacts.model_key(model_id)
    save_artifact(model, card, settings.artifacts.path(key))
    db = Database(settings.resolved_database_url)
    with db.session_scope() as session:
        models_repo.add(
            session,
            ModelVersion(
                id=model_id, name="served", version=models_repo.next_version(session, "served"),
                job_id=None, dataset_id=None, parent_id=None, base_model=f"timm:{backbone}",
                strategy="finetune", class_names=list(CLASSES), metrics={}, lineage={},
                artifact_key=key,
            ),
        )  # fmt: skip
    db.dispose()
    return str(model_id)


@pytest.fixture
def model_id(settings: Settings) -> str:
    return register_model(settings)


def encode(pixels: np.ndarray, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@pytest.fixture(scope="session")
def photos() -> list[bytes]:
    """Eight different RGB images of different sizes (smooth, like photos), as PNG and JPEG."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(8):
        small = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
        size = (40 + 7 * i, 30 + 5 * i)
        img = np.asarray(Image.fromarray(small).resize(size, Image.BILINEAR))
        out.append(encode(img, "PNG" if i % 2 else "JPEG", **({} if i % 2 else {"quality": 90})))
    return out


class Gate(nn.Module):
    """The real model behind a gate: a forward pass waits until the test opens it, so the test
    knows that requests arriving meanwhile queue (no sleeps, no timing)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner = model
        self.entered = threading.Event()
        self.opened = threading.Event()

    def _wait(self) -> None:
        self.entered.set()
        assert self.opened.wait(60), "the test never opened the gate"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._wait()
        return self.inner(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self._wait()
        return self.inner.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.inner.forward_head(x, pre_logits=pre_logits)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    done = threading.Event()
    deadline = threading.Timer(timeout, done.set)
    deadline.start()
    try:
        while not condition():
            assert not done.wait(0.01), f"timed out waiting until {what}"
    finally:
        deadline.cancel()
