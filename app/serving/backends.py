"""What runs a prediction's forward pass: ``backend.forward(batch, wide) -> logits``.

``TRANSFERLAB_SERVING_BACKEND`` picks one for every model an API process loads:

* ``onnx`` (the default): onnxruntime on the version's ``model.onnx`` (written when the version
  was made and checked against the eager model); a version without one is served by ``torch``,
  with a warning. bench/onnx_vs_torch.py measured it 1.42-2.21x eager torch's images/s on 2
  shared CPU cores (resnet10t at 64 px and resnet18 at 112 px, batch 1 and 32; README, Measured);
* ``torch``: the eager model.

Lanes. A backend runs up to ``lanes`` forward passes at once, one per inference thread of the
model's batcher. The onnx backend gives each lane its own session with one intra-op thread, and
a pass with nothing else to run beside it (``wide``, a lone request on an idle model) a session
that uses every core. Under load, passes side by side on one core each do more per CPU second
than one pass split over the cores (no synchronisation inside a pass, no threads spin-waiting for
the next one), and they leave the cores to the event loop between passes. Measured on 2 cores,
32 clients of one image, one 8 s window each (images/s, one lane on every core -> two lanes of
one core): resnet10t at 64 px 210 -> 243 with the API's CPU per image 7.9 -> 5.8 ms, resnet18
at 112 px 79 -> 93; a lone request on a lane's session instead of the wide one was slower
(resnet18: p50 17 -> 24 ms), hence ``wide``. bench/serve.py has the figures of record (README,
Serving). The price is memory: ``lanes + 1`` sessions per model (resnet18: about 30 MB each).
Eager torch's threads are process-wide, so ``torch`` runs one pass at a time. An onnx model
whose predictions run in lane processes (app.serving.lanes, the default) never calls
``forward`` here: this process then holds no session (``load()`` is not called).

A batcher calls ``forward`` with a CPU float32 batch (N x 3 x H x W, the card's preprocessing
applied) and gets logits (N x classes) back on the CPU or the model's device.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from app.cpu import usable_cpus
from app.engine import torch_forward
from app.engine.onnx import ONNX_FILE, run_onnx
from app.onnxrt import create_onnx_session

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx")


class Backend(Protocol):
    name: str
    lanes: int

    def forward(self, batch: torch.Tensor, wide: bool = True) -> torch.Tensor: ...


class TorchBackend:
    name = "torch"
    lanes = 1

    def __init__(self, model: nn.Module) -> None:
        self._forward = torch_forward(model.eval())

    def forward(self, batch: torch.Tensor, wide: bool = True) -> torch.Tensor:
        return self._forward(batch)


class OnnxBackend:
    name = "onnx"

    def __init__(self, path: Path, lanes: int = 1) -> None:
        self.path = path
        self.lanes = max(1, lanes)
        self._wide: Any = None  # made by load(), or by the first wide pass
        # Each lane's session gets its share of the cores: one each on a 2-core machine.
        self.lane_threads = max(1, usable_cpus() // self.lanes)
        self._lean: dict[int, Any] = {}  # thread id -> its session, made on first use
        self._lock = threading.Lock()

    def load(self) -> None:
        """Make the every-core session now: a broken file fails the model's load. Not called
        when the model's predictions run in lane processes (app.serving.lanes), which load the
        file themselves: then this process holds no session of it."""
        with self._lock:
            if self._wide is None:
                self._wide = create_onnx_session(self.path)

    def forward(self, batch: torch.Tensor, wide: bool = True) -> torch.Tensor:
        if wide or self.lanes == 1:
            if self._wide is None:
                self.load()
            session = self._wide
        else:
            session = self._lean_session()
        return torch.from_numpy(run_onnx(session, batch))

    def _lean_session(self) -> Any:
        key = threading.get_ident()
        session = self._lean.get(key)
        if session is None:
            with self._lock:
                session = self._lean.setdefault(
                    key, create_onnx_session(self.path, threads=self.lane_threads, spinning=False)
                )
        return session


def create_backend(kind: str, model: nn.Module, artifact_dir: Path, lanes: int = 1) -> Backend:
    if kind not in BACKENDS:
        raise ValueError(f"unknown serving backend {kind!r}; choose one of {', '.join(BACKENDS)}")
    if kind == "onnx":
        path = Path(artifact_dir) / ONNX_FILE
        if path.is_file():
            return OnnxBackend(path, lanes)
        log.warning("%s has no %s: serving it with torch", artifact_dir, ONNX_FILE)
    return TorchBackend(model)
