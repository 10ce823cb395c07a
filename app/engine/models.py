"""timm models: creation with user-facing errors, input size, freezing, backbone listing."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any

import timm
import torch
from timm.models import is_model_pretrained, split_model_name_tag
from torch import nn

from app.engine.errors import EngineError, WeightsUnavailable


def list_backbones(pattern: str | None = None) -> list[str]:
    """timm architecture names matching a shell-style pattern (all of them by default)."""
    return timm.list_models(pattern or "*")


def is_known_backbone(name: str) -> bool:
    """True for a timm architecture, optionally with a known pretrained tag ("resnet18.a1_in1k")."""
    arch, tag = split_model_name_tag(name)
    if not timm.is_model(arch):
        return False
    return not tag or is_model_pretrained(name)


def default_image_size(name: str) -> int | None:
    """The input size a timm backbone is published with, without building it (None: unknown)."""
    try:
        cfg = timm.get_pretrained_cfg(name)
    except Exception:  # an unknown or architecture-only name
        return None
    size = getattr(cfg, "input_size", None) if cfg is not None else None
    return int(size[-1]) if size else None


def _short(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if len(first) > limit:
        first = first[: limit - 3] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def create_timm_model(name: str, num_classes: int, *, pretrained: bool) -> nn.Module:
    """``timm.create_model`` with errors a user can act on."""
    if not is_known_backbone(name):
        raise EngineError(
            f"Unknown timm model {name!r}. List the available names with the backbones endpoint "
            "(timm.list_models), e.g. 'resnet18', 'efficientnet_b0', 'vit_small_patch16_224'."
        )
    if not pretrained:
        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    if not is_model_pretrained(name):
        # timm would log a warning and silently fall back to random weights.
        raise EngineError(
            f"timm model {name!r} has no published pretrained weights. Submit the job with "
            "pretrained=false, or pick a model listed with pretrained weights."
        )
    try:
        return timm.create_model(name, pretrained=True, num_classes=num_classes)
    except Exception as exc:
        # Weight loading fails through huggingface_hub, httpx/requests, urllib, torch.load and
        # safetensors, which share no base class; the name was validated above, so an error here
        # is about getting the weights.
        raise WeightsUnavailable(
            f"pretrained weights for timm model {name!r} could not be loaded ({_short(exc)}). "
            "This machine may have no internet access: pre-populate the Hugging Face cache "
            "(HF_HOME) on the worker, or submit the job with pretrained=false, or start from a "
            "registered model (base_model 'model:<id>')."
        ) from exc


def set_input_size(model: nn.Module, current: Sequence[int], wanted: Sequence[int]) -> None:
    """Rebuild size-dependent parts (ViT position embeddings) when the input size changes.

    CNNs pool globally and take any size. ViT-style models fix their patch grid at construction;
    timm's ``set_input_size`` resamples the position embeddings, keeping pretrained weights useful.
    ``current`` and ``wanted`` are (C, H, W).
    """
    if tuple(current[-2:]) == tuple(wanted[-2:]):
        return
    resizable: Any = model  # timm's method, not declared on nn.Module
    if hasattr(resizable, "set_input_size"):
        patch = getattr(getattr(resizable, "patch_embed", None), "patch_size", None)
        pad = getattr(getattr(resizable, "patch_embed", None), "dynamic_img_pad", False)
        if patch and not pad and any(s % p for s, p in zip(wanted[-2:], patch, strict=True)):
            # timm would accept the size here and fail an assert at the first forward pass.
            raise EngineError(
                f"image_size {wanted[-1]} is not a multiple of this model's patch size "
                f"{patch[-1]}; use e.g. {max(1, round(wanted[-1] / patch[-1])) * patch[-1]}."
            )
        resizable.set_input_size(img_size=tuple(wanted[-2:]))
        return
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    if cfg.get("fixed_input_size"):
        raise EngineError(
            f"This model only accepts {current[-1]}x{current[-2]} px inputs; leave image_size "
            f"unset or set it to {current[-1]}."
        )


def freeze_stages(model: nn.Module, num_stages: int) -> list[nn.Module]:
    """Freeze every parameter up to the ``num_stages``-th entry of timm's ``feature_info``.

    NOTE the entries are what timm lists, not "stages" in the paper's sense: on ResNets the first
    entry is the stem (``act1``), so 1 freezes the stem alone and 3 the stem, layer1 and layer2;
    on ViTs the entries are blocks, and the patch embedding comes before the first.

    Returns the frozen modules: the training loop keeps them in eval mode so BatchNorm running
    statistics (buffers, not parameters) stay frozen too.

    timm models register their submodules in forward order, and ``named_parameters`` /
    ``named_modules`` yield in registration order (a module's own parameters first, which is how
    ViT's cls_token/pos_embed come out ahead of the patch embedding). So "every parameter up to and
    including the module named by ``feature_info[N-1]['module']``" is exactly that prefix.
    """
    if num_stages == 0:
        return []
    stages = [info["module"] for info in getattr(model, "feature_info", None) or []]
    if not stages:
        raise EngineError(
            "This model does not describe its stages (no feature_info), so freeze_stages cannot be "
            "used with it; use freeze_stages=0 or the linear_probe strategy."
        )
    if num_stages > len(stages):
        raise EngineError(
            f"freeze_stages={num_stages} but the model has {len(stages)} stages "
            f"({', '.join(stages)}); use a value from 0 to {len(stages)}."
        )
    last = stages[num_stages - 1]
    names = [name for name, _ in model.named_modules()]
    if last not in names:
        raise EngineError(f"Stage module {last!r} was not found in the model; cannot freeze it.")
    # Pre-order: a module's subtree follows it directly, so the frozen range ends at the last
    # descendant of the stage module.
    end = names.index(last)
    while end + 1 < len(names) and names[end + 1].startswith(last + "."):
        end += 1
    in_range = names[: end + 1]
    # Ancestors of the stage (the root, "blocks" of a ViT) also hold later, trainable stages: only
    # their directly owned parameters (pos_embed, cls_token) are frozen, not their subtrees.
    ancestors = {n for n in in_range if n == "" or last.startswith(n + ".")}
    modules = dict(model.named_modules())
    frozen: list[nn.Module] = []
    inside: str | None = None  # prefix of the subtree frozen last; its descendants are covered
    for name in in_range:
        if inside is not None and name.startswith(inside):
            continue
        module = modules[name]
        if name in ancestors:
            for param in module.parameters(recurse=False):
                param.requires_grad_(False)
        else:
            module.requires_grad_(False)
            frozen.append(module)
            inside = name + "."
    return frozen


def match_parameters(model: nn.Module, patterns: Sequence[str]) -> list[nn.Parameter]:
    """Parameters whose names match any shell-style pattern (fnmatch: "layer1.*", "*.bn*")."""
    named = list(model.named_parameters())
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name, _ in named):
            examples = ", ".join(name for name, _ in named[:3])
            raise EngineError(
                f"freeze_patterns entry {pattern!r} matches no parameter of this model; "
                f"parameter names look like {examples}, so e.g. {named[0][0].split('.')[0]}.* "
                "matches a whole module."
            )
    return [p for name, p in named if any(fnmatch.fnmatchcase(name, pat) for pat in patterns)]


def batchnorm_layers(model: nn.Module, *, all_layers: bool) -> list[nn.Module]:
    """BatchNorm layers to keep in eval mode: all of them, or those whose affine parameters are
    all frozen. A frozen layer's running statistics are buffers that a train-mode forward would
    still update; eval mode keeps them bitwise unchanged too."""
    layers: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if all_layers or (params and not any(p.requires_grad for p in params)):
                layers.append(module)
    return layers


def trainable_parameters(model: nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]
