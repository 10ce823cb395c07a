"""Optimizers over parameter groups, discriminative learning rates and the epoch schedule.

Every group carries ``lr_scale`` (its share of the job's learning rate: backbone_lr_mult, layer
decay, a phase multiplier). ``set_epoch_lr`` writes ``base * factor * lr_scale`` into each group
once per epoch, so the training step itself never touches the schedule.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from timm.models import group_parameters
from torch import nn

from app.engine.errors import EngineError
from app.engine.specs import Hyperparameters


def create_param_groups(
    model: nn.Module,
    params: Iterable[nn.Parameter],
    *,
    head: Sequence[nn.Parameter] = (),
    weight_decay: float = 0.0,
    backbone_lr_mult: float = 1.0,
    layer_decay: float | None = None,
) -> list[dict[str, Any]]:
    """Groups of ``params`` (parameters of ``model``) keyed by (lr_scale, weight_decay).

    ``head`` parameters keep scale 1; the others get ``backbone_lr_mult`` and, with
    ``layer_decay``, ``layer_decay ** (deepest layer - layer)`` using timm's own layer grouping
    (``group_matcher``), as ``timm.optim.param_groups_layer_decay`` computes it; the head is the
    deepest layer there, so its scale stays 1. Weight decay skips biases and normalisation weights
    (1-D tensors), as timm's recipes do: decaying a BatchNorm scale towards zero only fights the
    normalisation.
    """
    wanted = {id(p) for p in params}
    head_ids = {id(p) for p in head}
    layer_of: dict[str, int] = {}
    layer_max = 0
    if layer_decay is not None:
        matcher = getattr(model, "group_matcher", None)
        if matcher is None:
            raise EngineError(
                "layer_decay needs a timm model that describes its layers (group_matcher); "
                "this one does not. Use backbone_lr_mult instead."
            )
        layer_of = group_parameters(model, matcher(coarse=False), reverse=True)
        layer_max = max(layer_of.values(), default=0)  # timm puts unmatched names (heads) last
    groups: dict[tuple[float, float], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if id(param) not in wanted:
            continue
        scale = 1.0
        if id(param) not in head_ids:
            scale = backbone_lr_mult
            if layer_decay is not None:
                scale *= layer_decay ** (layer_max - layer_of.get(name, layer_max))
        decay = weight_decay if param.ndim > 1 else 0.0
        group = groups.setdefault(
            (scale, decay), {"params": [], "lr_scale": scale, "weight_decay": decay}
        )
        group["params"].append(param)
    return list(groups.values())


def create_optimizer(
    params: Iterable[nn.Parameter] | Sequence[dict[str, Any]],
    hparams: Hyperparameters,
    *,
    lr_mult: float = 1.0,
) -> torch.optim.Optimizer:
    """The job's optimizer over trainable parameters only.

    ``params`` is parameters (one group, weight decay as ``create_param_groups`` decides) or the
    groups ``create_param_groups`` built. Parameters frozen now but unfrozen later (gradual
    unfreezing) may be in a group: optimizers skip a parameter whose ``grad`` is None, so it stays
    bitwise unchanged until it gets gradients.
    """
    items = list(params)
    if items and isinstance(items[0], dict):
        groups = [dict(g) for g in items]  # type: ignore[call-overload]
    else:
        trainable = [p for p in items if isinstance(p, nn.Parameter) and p.requires_grad]
        wd = hparams.weight_decay
        groups = [
            {"params": [p for p in trainable if p.ndim > 1], "weight_decay": wd},
            {"params": [p for p in trainable if p.ndim <= 1], "weight_decay": 0.0},
        ]
    groups = [g for g in groups if g["params"]]
    all_params = [p for g in groups for p in g["params"]]
    if not any(p.requires_grad for p in all_params):
        raise EngineError("Nothing to train: every parameter of the model is frozen.")
    base = hparams.learning_rate * lr_mult
    for group in groups:
        group.setdefault("lr_scale", 1.0)
        group["base_lr"] = base * group["lr_scale"]
        group["lr"] = group["base_lr"]
    lr = base
    # One fused kernel per step instead of a multi-tensor loop: measured 25% faster for the
    # linear probe's head on CPU, where per-step overhead is the whole cost.
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in all_params)
    if hparams.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=0.0, fused=fused)
    if hparams.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=0.0, fused=fused)
    if hparams.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=lr, momentum=hparams.momentum, weight_decay=0.0, fused=fused
        )
    raise EngineError(f"Unknown optimizer {hparams.optimizer!r}; use adamw, adam or sgd.")


def lr_factor(epoch: int, epochs: int, hparams: Hyperparameters) -> float:
    """The schedule's multiplier of the learning rate in ``epoch`` (1-based) of ``epochs``.

    Per epoch, not per step: the lr an epoch reports is exactly the one it used, and the step
    pays nothing for scheduling. Warm-up epochs ramp linearly to reach 1 in the first epoch after
    them; cosine is ``0.5 * (1 + cos(pi * t / T))`` over the T post-warm-up epochs, t = 0..T-1,
    so the last epoch still trains (lr > 0), as torch's CosineAnnealingLR(T_max=T) evaluated
    at those epochs.
    """
    warmup = min(hparams.warmup_epochs, epochs - 1)  # a short phase (lp_ft) keeps 1 real epoch
    if epoch <= warmup:
        return epoch / (warmup + 1)
    t, total = epoch - warmup - 1, epochs - warmup
    if hparams.scheduler == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t / total))
    if hparams.scheduler == "step":
        return float(hparams.gamma ** (t // hparams.step_size))
    return 1.0


def set_epoch_lr(optimizer: torch.optim.Optimizer, factor: float) -> float:
    """Apply the schedule's factor to every group; return the largest lr now in use."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    return current_lr(optimizer)


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    # Scales are <= 1 (bounded options), so the largest lr is the head's, the job's own.
    return float(max(group["lr"] for group in optimizer.param_groups))
