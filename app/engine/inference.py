"""Inference for serving, split where the work is: per image, in the callers' threads, and per
batch, in one inference thread per model.

``Preprocessor`` splits a model's evaluation transform at ToTensor. Its PIL part (upright RGB,
resize, centre crop) runs per image where the image is decoded, and gives model-sized uint8
pixels; ``batch()`` turns any number of those into one normalised float tensor with the same
float32 operations, in the same order, as ToTensor + Normalize: the tensor equals
``torch.stack([transform(img) for img in images])``. Doing the float part once per batch saves
the per-image overhead of two small torch calls, and the batch comes out in NHWC memory order
(a permuted view of the stacked pixels), which is what a channels_last model wants.

``Predictor`` holds the model in eval mode and answers a batch with class probabilities or
with embeddings (pre-logits vectors). It runs torch, so it belongs on a worker thread, never on
an event loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision import transforms
from torchvision.transforms import functional as TF

from app.engine.data import create_eval_transform
from app.engine.heads import ProbedModel
from app.engine.specs import ModelCard
from app.pixels import ResizeCrop, ToRGB

# Decoding keeps at least this many times the resize target on each side before the model's
# own resize runs, so the antialiased resize still sees several source pixels per output pixel
# (Pillow's thumbnail() uses the same margin, its reducing_gap).
DECODE_MARGIN = 2


@dataclass(frozen=True)
class Preprocessor:
    """The PIL part of a model's eval transform, and its ToTensor + Normalize for batches."""

    pil_steps: Callable[[Image.Image], Image.Image]
    mean: torch.Tensor  # (1, C, 1, 1) float32
    std: torch.Tensor
    decode_side: int  # decoders may shrink an image while both its sides stay >= this

    def pixels(self, img: Image.Image) -> np.ndarray:
        """(H, W, 3) uint8 at the model's input size."""
        return np.asarray(self.pil_steps(img), dtype=np.uint8)

    def batch(self, pixels: Sequence[np.ndarray]) -> torch.Tensor:
        """(N, 3, H, W) float32 in NHWC memory order, normalised as the eval transform does."""
        x = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2)
        return x.to(torch.float32).div(255).sub_(self.mean).div_(self.std)


def create_preprocessor(preprocessing: Mapping[str, Any]) -> Preprocessor:
    """Split ``create_eval_transform(preprocessing)`` at its ToTensor."""
    outer = create_eval_transform(preprocessing)
    steps: list[Any] = []
    normalize = None
    for step in _flatten(outer):
        name = type(step).__name__
        if name in ("ToTensor", "MaybeToTensor", "PILToTensor"):
            continue
        if isinstance(step, transforms.Normalize):
            normalize = step
            continue
        if normalize is not None:
            raise ValueError(f"eval transform has {name} after Normalize; cannot batch it")
        steps.append(step)
    if normalize is None or not isinstance(steps[0], ToRGB):
        raise ValueError(f"unexpected eval transform: {outer}")
    mean = torch.as_tensor(normalize.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.as_tensor(normalize.std, dtype=torch.float32).view(1, -1, 1, 1)
    _, height, width = preprocessing["input_size"]
    scale = math.ceil(max(height, width) / float(preprocessing.get("crop_pct") or 1.0))
    pil_steps = _resize_crop(steps) or transforms.Compose(steps)
    return Preprocessor(pil_steps, mean, std, DECODE_MARGIN * scale)


def _resize_crop(steps: list[Any]) -> ResizeCrop | None:
    """``steps`` as a ``ResizeCrop`` if they are ToRGB, Resize and CenterCrop with sizes and a
    filter it handles, else None."""
    if len(steps) != 3 or [type(s) for s in steps[1:]] != [
        transforms.Resize,
        transforms.CenterCrop,
    ]:
        return None
    _, resize, crop = steps
    size = [resize.size] if isinstance(resize.size, int) else list(resize.size)
    resample = TF.pil_modes_mapping.get(resize.interpolation)
    if resize.max_size is not None or resample is None or len(size) not in (1, 2):
        return None
    return ResizeCrop(size, resample, (int(crop.size[0]), int(crop.size[1])))


def _flatten(transform: Any) -> list[Any]:
    if isinstance(transform, transforms.Compose):
        return [step for inner in transform.transforms for step in _flatten(inner)]
    return [transform]


class Logits(Protocol):
    """Something other than the eager model that computes logits (``app.serving.backends``)."""

    name: str
    lanes: int  # forward passes it may run at once (threads calling ``forward``)

    def forward(self, batch: torch.Tensor, wide: bool = True) -> torch.Tensor: ...


class Predictor:
    """A loaded model for serving: eval mode, no gradients, NHWC weights on CPU.

    NOTE channels_last: bench/serve.py measures the forward both ways (see README, Serving).
    """

    def __init__(
        self,
        model: nn.Module,
        card: ModelCard,
        *,
        channels_last: bool = True,
        logits: Logits | None = None,
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.card = card
        # What computes the logits of a normalised batch for probabilities (an onnxruntime
        # session, say); None: the eager model. Embeddings always come from the eager model.
        self.logits = logits
        self.preprocessor = create_preprocessor(card.preprocessing)
        self.channels_last = channels_last
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(memory_format=fmt)
        self.device = next(model.parameters()).device

    @property
    def backend_name(self) -> str:
        return self.logits.name if self.logits is not None else "torch"

    @property
    def lanes(self) -> int:
        """How many forward passes may run at once (eager torch: one; its threads are
        process-wide)."""
        return self.logits.lanes if self.logits is not None else 1

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.to(self.device, memory_format=fmt)

    def probabilities(self, x: torch.Tensor, wide: bool = True) -> torch.Tensor:
        """(N, classes) softmax probabilities, float32 on the CPU. ``wide=False``: other passes
        run beside this one, so it should keep to one core (a backend with lanes)."""
        with torch.inference_mode():
            if self.logits is not None:
                return self.logits.forward(x, wide).float().softmax(dim=1).cpu()
            return self.model(self._input(x)).float().softmax(dim=1).cpu()

    def embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) pre-logits: what the classifier reads (for a probe, the features its head
        reads, pooled from its stage), float32 on the CPU."""
        with torch.inference_mode():
            x = self._input(x)
            model: Any = self.model
            if isinstance(model, ProbedModel):
                out = model.forward_features(x)
            else:
                out = model.forward_head(model.forward_features(x), pre_logits=True)
            return out.float().flatten(1).cpu()


def top_k(
    probabilities: np.ndarray | torch.Tensor, class_names: Sequence[str], k: int
) -> list[list[tuple[str, float]]]:
    """Top-k (class name, probability) per row, most likely first. numpy (a CPU tensor is
    read as an array): the API calls it on its event loop, where torch does not run."""
    probs = np.asarray(probabilities)
    k = max(1, min(int(k), len(class_names)))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    rows = np.take_along_axis(probs, order, axis=1)
    return [
        [(class_names[i], p) for p, i in zip(row_p, row_i, strict=True)]
        for row_p, row_i in zip(rows.tolist(), order.tolist(), strict=True)
    ]
