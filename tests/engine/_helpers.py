"""Small helpers shared by the engine tests (fixtures live in conftest.py)."""

from __future__ import annotations

import torch

from app.engine import ModelSource

CLASS_NAMES = tuple(f"digit_{i}" for i in range(10))

# A plain 32 px eval config (no resize margin, mean/std 0.5) for cards built by hand in tests.
PREPROCESSING_32 = {
    "input_size": [3, 32, 32],
    "interpolation": "bilinear",
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "crop_pct": 1.0,
    "crop_mode": "center",
}


def take(samples: tuple[tuple[str, int], ...], per_class: int) -> tuple[tuple[str, int], ...]:
    seen: dict[int, int] = {}
    out = []
    for path, label in samples:
        if seen.get(label, 0) < per_class:
            seen[label] = seen.get(label, 0) + 1
            out.append((path, label))
    return tuple(out)


def scratch(name: str = "test_resnet") -> ModelSource:
    return ModelSource(kind="timm", name=name, pretrained=False)


def state_copy(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed_keys(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    """State-dict keys whose tensors are not bitwise equal."""
    assert before.keys() == after.keys()
    return {k for k in before if not before[k].equal(after[k])}
