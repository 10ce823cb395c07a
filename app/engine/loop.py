"""Epoch loops and the pieces they share: device, seeding, autocast, loss.

The loop is benchmarked against a plain PyTorch loop and must keep >= 0.9x its images/sec, so a
step does only what a plain loop does plus cheap callback calls. The loss is accumulated as a
device tensor and read once per epoch: a per-step ``.item()`` would force a host/device sync every
step and stall the CUDA queue. The optional parts of a step (gradient clipping, a penalty's
proximal step) are fused foreach kernels that queue on the device without a sync either; the
learning-rate schedule is applied between epochs (``app.engine.optim``).
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from app.engine.callbacks import CallbackList
from app.engine.errors import EngineError
from app.engine.optim import create_optimizer, current_lr  # noqa: F401  (their former home)
from app.engine.specs import Hyperparameters


def resolve_device(device: str) -> torch.device:
    """Map "auto" to cuda when available, else cpu; check explicit names ("cuda:1")."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise EngineError(f"Unknown device {device!r}; use 'auto', 'cpu' or 'cuda[:N]'.") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise EngineError(
            f"Device {device!r} was requested but CUDA is not available on this worker; "
            "use device 'auto' or 'cpu'."
        )
    return resolved


def seed_everything(seed: int) -> None:
    """Seed every RNG the job touches: model init (torch), timm augmentation (random, torch)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


@dataclass(frozen=True)
class Runtime:
    """Where tensors go and how forward passes run there. Build it with ``Runtime.on(device)``.

    NOTE ``channels_last``: a model placed with ``place_model`` keeps its convolution weights in
    NHWC, and ``to()`` hands it NHWC image batches. oneDNN on CPU (and cuDNN's tensor-core
    kernels) run most convolutions faster so: bench/cpu_settings.py measured, with passive
    OpenMP waiting on 2 cores, test_resnet forward 1,331 -> 1,885 images/s at 32 px and
    training 508 -> 600; resnet10t forward 244 -> 337 and training 77 -> 88 at 64 px. Weights are
    saved contiguous (``release_model``): safetensors refuses NHWC tensors, and loaders expect the
    usual layout.
    """

    device: torch.device
    bf16: bool = False  # autocast forward passes to bfloat16
    channels_last: bool = False

    @classmethod
    def on(cls, device: torch.device, amp: bool = True, channels_last: bool = False) -> Runtime:
        # bf16 needs no loss scaling; GPUs without native bf16 (before Ampere, capability 8.0)
        # run fp32 rather than fp16 + GradScaler. CPU runs fp32: CPU autocast is slower for the
        # small convolutions of most backbones. Decided once, not per step. amp=False (the
        # job's hyperparameter) runs fp32 everywhere.
        bf16 = amp and device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)
        return cls(device=device, bf16=bf16, channels_last=channels_last)

    @property
    def non_blocking(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def to(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.channels_last and tensor.dim() == 4:
            return tensor.to(
                self.device, non_blocking=self.non_blocking, memory_format=torch.channels_last
            )
        return tensor.to(self.device, non_blocking=self.non_blocking)

    @contextlib.contextmanager
    def small_ops(self) -> Iterator[None]:
        """Run ops too small to share out (a probe's head steps) on one CPU thread.

        NOTE each intra-op parallel region wakes torch's other threads, which sleep between
        regions (OMP_WAIT_POLICY=PASSIVE, see app/cpu.py). A linear head step on a batch of
        cached features is all such overhead: bench/speed.py measured 30 head epochs (1,890
        steps) at 3.25 s on 2 threads and 1.55 s on one (2 CPU cores). On CUDA this changes
        nothing.
        """
        if self.device.type != "cpu":
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def place_model(self, model: nn.Module) -> None:
        """Move ``model`` to the device, in this runtime's memory format."""
        model.to(self.device)
        model.to(
            memory_format=torch.channels_last if self.channels_last else torch.contiguous_format
        )

    def release_model(self, model: nn.Module) -> None:
        """Back to the CPU in the usual contiguous layout, and the GPU memory given back: also
        on failure or cancellation, so a long-lived worker has it for its next job."""
        model.to("cpu")
        model.to(memory_format=torch.contiguous_format)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def class_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """scikit-learn's "balanced" weights ``n / (classes * n_c)``: every class then carries the
    same total weight in the loss. A class without training images gets 1 (it is never a target;
    the value only matters for label smoothing's share)."""
    counts = torch.bincount(torch.as_tensor(list(labels), dtype=torch.int64), minlength=num_classes)
    weights = counts.sum() / (num_classes * counts.clamp(min=1)).double()
    return torch.where(counts > 0, weights, torch.ones_like(weights)).float()


def create_criterion(
    hparams: Hyperparameters, labels: Sequence[int], num_classes: int, device: torch.device
) -> nn.Module:
    """The training loss: cross-entropy with the job's class weighting and label smoothing."""
    weight = None
    if hparams.class_weighting == "balanced":
        weight = class_weights(labels, num_classes).to(device)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=hparams.label_smoothing)


def check_finite(loss: float, epoch: int) -> None:
    if not math.isfinite(loss):
        raise EngineError(
            f"Training diverged at epoch {epoch} (the loss became {loss}). Lower the learning "
            "rate and resubmit the job."
        )


@dataclass(frozen=True)
class TrainStats:
    loss: float  # mean over samples
    images: int
    seconds: float


@dataclass(frozen=True)
class EvalStats:
    loss: float
    accuracy: float
    predictions: torch.Tensor  # CPU int64, in loader order
    targets: torch.Tensor  # CPU int64


@torch.inference_mode()
def evaluate(
    model: nn.Module, loader: DataLoader, *, runtime: Runtime, callbacks: CallbackList
) -> EvalStats:
    model.eval()
    loss_sum = torch.zeros((), device=runtime.device)
    predictions: list[torch.Tensor] = []
    all_targets: list[torch.Tensor] = []
    for images, targets in loader:
        cpu_targets = targets
        images, targets = runtime.to(images), runtime.to(targets)
        with runtime.autocast():
            logits = model(images)
        loss_sum += F.cross_entropy(logits.float(), targets, reduction="sum")
        predictions.append(logits.argmax(dim=1))
        all_targets.append(cpu_targets)
        callbacks.check_stop("during evaluation")
    preds = torch.cat(predictions).cpu()
    targets_cpu = torch.cat(all_targets)
    return EvalStats(
        loss=loss_sum.item() / len(targets_cpu),
        accuracy=float((preds == targets_cpu).float().mean()),
        predictions=preds,
        targets=targets_cpu,
    )


def evaluate_logits(logits: torch.Tensor, targets: torch.Tensor) -> EvalStats:
    """EvalStats for logits already computed (the linear probe's cached validation features)."""
    loss = F.cross_entropy(logits.float(), targets, reduction="sum").item() / len(targets)
    preds = logits.argmax(dim=1).cpu()
    targets_cpu = targets.cpu()
    return EvalStats(
        loss=loss,
        accuracy=float((preds == targets_cpu).float().mean()),
        predictions=preds,
        targets=targets_cpu,
    )
