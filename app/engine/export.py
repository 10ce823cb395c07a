"""Trained models on disk (safetensors + a JSON card) and predictions from them."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import safetensors.torch
import torch
from PIL import Image
from torch import nn

from app.engine.data import create_eval_transform
from app.engine.errors import EngineError
from app.engine.heads import build_probed_model, is_probed
from app.engine.loop import Runtime, resolve_device
from app.engine.models import create_timm_model, set_input_size
from app.engine.specs import ModelCard

# Version 2 adds the probe entries of the card (app.engine.heads). Plain models are still written
# as version 1, so services that predate version 2 keep reading them; a version-2 artifact tells
# such a service to upgrade instead of failing to load its weights.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model.json"
PREDICT_BATCH = 64  # bounds memory; the API batches across requests itself (app/serving)


def save_artifact(model: nn.Module, card: ModelCard, directory: Path) -> None:
    """Write ``model.safetensors`` and ``model.json`` (the card plus ``format_version``).

    Each file is written under a temporary name and renamed, and the card goes last, so a
    directory with a ``model.json`` always holds complete weights even if the worker dies midway.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in model.state_dict().items():
        tensor = value.detach().to("cpu").contiguous()
        # safetensors refuses tensors that share storage (tied weights); copy the repeats.
        if tensor.untyped_storage().data_ptr() in seen:
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        tensors[key] = tensor
    weights_tmp = directory / (WEIGHTS_FILE + ".tmp")
    safetensors.torch.save_file(tensors, str(weights_tmp), metadata={"format": "pt"})
    os.replace(weights_tmp, directory / WEIGHTS_FILE)
    card_tmp = directory / (CARD_FILE + ".tmp")
    version = FORMAT_VERSION if is_probed(card.architecture) else 1
    card_tmp.write_text(json.dumps({"format_version": version, **card.to_dict()}, indent=2))
    os.replace(card_tmp, directory / CARD_FILE)


def read_card(directory: Path) -> ModelCard:
    path = Path(directory) / CARD_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise EngineError(
            f"{str(directory)!r} is not a model artifact (no {CARD_FILE}); was training finished?"
        ) from None
    except (OSError, ValueError) as exc:
        raise EngineError(f"The model card {str(path)!r} cannot be read ({exc}).") from exc
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if version not in READABLE_VERSIONS:
        raise EngineError(
            f"The artifact in {str(directory)!r} has format_version {version!r}; this engine "
            f"reads versions {', '.join(map(str, READABLE_VERSIONS))}. Upgrade the service or "
            "re-export the model."
        )
    return ModelCard.from_dict(raw)


def load_artifact(directory: Path, device: str = "cpu") -> tuple[nn.Module, ModelCard]:
    """Rebuild the model described by the card, load its weights strictly; eval mode.

    A linear_probe model with an MLP head or stage features comes back as a ``ProbedModel``.
    """
    directory = Path(directory)
    card = read_card(directory)
    model: nn.Module = create_timm_model(
        card.architecture["name"], int(card.architecture["num_classes"]), pretrained=False
    )
    input_size = card.preprocessing["input_size"]
    built_for = (getattr(model, "pretrained_cfg", None) or {}).get("input_size", input_size)
    set_input_size(model, built_for, input_size)
    if is_probed(card.architecture):
        model = build_probed_model(model, card.architecture)
    try:
        state = safetensors.torch.load_file(str(directory / WEIGHTS_FILE), device="cpu")
        model.load_state_dict(state, strict=True)
    except FileNotFoundError:
        raise EngineError(f"The artifact in {str(directory)!r} has no {WEIGHTS_FILE}.") from None
    except (RuntimeError, OSError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EngineError(
            f"The weights in {str(directory)!r} do not match the model card ({first_line})."
        ) from exc
    return model.to(resolve_device(device)).eval(), card


def predict(
    model: nn.Module, card: ModelCard, images: Sequence[Image.Image], top_k: int = 5
) -> list[list[tuple[str, float]]]:
    """Top-k (class name, probability) per image, most likely first."""
    if model.training:
        model.eval()  # BatchNorm/dropout in train mode would give batch-dependent answers
    return predict_with(torch_forward(model), card, images, top_k=top_k)


def torch_forward(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The eager forward pass of an eval-mode model: a CPU batch in, logits out."""
    runtime = Runtime.on(next(model.parameters()).device)

    def forward(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), runtime.autocast():
            return model(runtime.to(batch))

    return forward


def predict_with(
    forward: Callable[[torch.Tensor], torch.Tensor],
    card: ModelCard,
    images: Sequence[Image.Image],
    top_k: int = 5,
) -> list[list[tuple[str, float]]]:
    """``predict`` with any forward pass (eager torch, onnxruntime: app.serving.backends)."""
    if not images:
        return []
    transform = create_eval_transform(card.preprocessing)
    k = max(1, min(int(top_k), len(card.class_names)))
    results: list[list[tuple[str, float]]] = []
    with torch.inference_mode():
        for first in range(0, len(images), PREDICT_BATCH):
            batch = torch.stack([transform(img) for img in images[first : first + PREDICT_BATCH]])
            logits = forward(batch)
            probs, indices = logits.float().softmax(dim=1).topk(k, dim=1)
            names = card.class_names
            for row_p, row_i in zip(probs.tolist(), indices.tolist(), strict=True):
                results.append([(names[i], p) for p, i in zip(row_p, row_i, strict=True)])
    return results
