"""What runs a prediction's forward pass: ``backend.forward(batch) -> logits``.

``TRANSFERLAB_SERVING_BACKEND`` picks one for every model an API process loads:

* ``onnx`` (the default): onnxruntime on the version's ``model.onnx`` (written when the version
  was made and checked against the eager model); a version without one is served by ``torch``,
  with a warning. bench/onnx_vs_torch.py measured it 1.42-2.21x eager torch's images/s on 2
  shared CPU cores (resnet10t at 64 px and resnet18 at 112 px, batch 1 and 32; README, Measured);
* ``torch``: the eager model.

A batcher calls ``forward`` with a CPU float32 batch (N x 3 x H x W, the card's preprocessing
applied) and gets logits (N x classes) back on the CPU or the model's device.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from app.engine import torch_forward
from app.engine.onnx import ONNX_FILE, create_onnx_session, run_onnx

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx")


class Backend(Protocol):
    name: str

    def forward(self, batch: torch.Tensor) -> torch.Tensor: ...


class TorchBackend:
    name = "torch"

    def __init__(self, model: nn.Module) -> None:
        self._forward = torch_forward(model.eval())

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self._forward(batch)


class OnnxBackend:
    name = "onnx"

    def __init__(self, path: Path) -> None:
        self.session = create_onnx_session(path)
        # NOTE one run at a time: onnxruntime allows concurrent run() calls, but each would use
        # every intra-op thread, and two of them on 2 cores only slow each other down.
        self._lock = threading.Lock()

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        with self._lock:
            return torch.from_numpy(run_onnx(self.session, batch))


def create_backend(kind: str, model: nn.Module, artifact_dir: Path) -> Backend:
    if kind not in BACKENDS:
        raise ValueError(f"unknown serving backend {kind!r}; choose one of {', '.join(BACKENDS)}")
    if kind == "onnx":
        path = Path(artifact_dir) / ONNX_FILE
        if path.is_file():
            return OnnxBackend(path)
        log.warning("%s has no %s: serving it with torch", artifact_dir, ONNX_FILE)
    return TorchBackend(model)
