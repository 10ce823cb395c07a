"""Savable training state: what a resumed run needs to continue exactly where one stopped.

A ``TrainState`` at every finished epoch and, inside long epochs, every few minutes (the trainer
decides when: ``app.engine.trainer``), written by a ``Checkpointer`` into its folder as
``epoch-NNNN/`` (after epoch NNNN) or ``epoch-NNNN-SSSSSSS/`` (after SSSSSSS steps of the next
epoch; names sort in training order). It holds ``state.safetensors`` (the weights of every module
trained, the optimizer's tensors, the best epoch's weights, torch and loader RNG states, a partial
epoch's loss) and ``state.json`` (the history, optimizer hyperparameters, early stopping, Python
and NumPy RNG states). No pickle anywhere. A folder is written as ``<name>.partial`` and renamed
when complete, so ``latest()`` only ever sees whole states; older ones are removed once a newer
one is in place.

What is deliberately not saved: the penalty anchors (l2sp/l1sp pull towards the source weights,
which the resumed run rebuilds exactly: the same seed, the same immutable source) and anything that
follows from the epoch number (freezing, the learning rate, so there is no scheduler state). There
is no AMP loss scaler to save either: mixed precision is bf16, which needs none
(``app.engine.loop.Runtime``).
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from app.engine.specs import EpochMetrics

_PREFIX = "epoch-"


@dataclass
class TrainState:
    phase: str  # the phase that wrote it ("train", "finetune")
    epoch: int  # the last finished epoch, 1-based over the whole job
    history: list[EpochMetrics]
    # Steps done of epoch + 1 (0: none). Such a state also holds the epoch's partial loss and
    # the order generator as the epoch began (``epoch.*`` tensors, ``epoch_progress``).
    step: int = 0
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def capture_rng(generators: Mapping[str, torch.Generator]) -> tuple[dict, dict]:
    """Every RNG a training epoch draws from: torch (CPU and CUDA), the batches' own generators
    by name (``loader``: the shuffling one), Python's ``random`` (timm's augmentations) and
    NumPy."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    for name, generator in generators.items():
        tensors[f"rng.{name}"] = generator.get_state()
    version, internal, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(np_keys, dtype=np.int64))
    meta = {
        "python": [version, list(internal), gauss],
        "numpy": [np_kind, int(np_pos), int(np_has_gauss), float(np_gauss)],
    }
    return tensors, meta


def restore_rng(state: TrainState, generators: Mapping[str, torch.Generator]) -> None:
    t, meta = state.tensors, state.meta["rng"]
    torch.set_rng_state(t["rng.torch"])
    cuda = sorted(k for k in t if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t[k] for k in cuda])
    for name, generator in generators.items():
        generator.set_state(t[f"rng.{name}"])
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, pos, has_gauss, cached = meta["numpy"]
    keys = t["rng.numpy"].numpy().astype(np.uint32)
    np.random.set_state((kind, keys, pos, has_gauss, cached))


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """The optimizer's state as flat tensors ``optim.<param index>.<key>`` plus its JSON rest."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in sd["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer(optimizer: torch.optim.Optimizer, state: TrainState) -> None:
    meta = state.meta["optimizer"]
    per_param: dict[int, dict[str, Any]] = {}
    for name, value in state.tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            per_param.setdefault(int(index), {})[key] = value
    for index, values in meta["scalars"].items():
        per_param.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": per_param, "param_groups": meta["param_groups"]})
    # Keep each moment in its parameter's memory format (channels_last convolutions): the
    # values are the same either way, the kernels faster.
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor) and value.shape == param.shape:
                    optimizer.state[param][key] = torch.empty_like(param).copy_(value)


def module_tensors(prefix: str, module_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in module_state.items()}


def module_state(prefix: str, state: TrainState) -> dict[str, torch.Tensor]:
    cut = len(prefix) + 1
    return {k[cut:]: v for k, v in state.tensors.items() if k.startswith(prefix + ".")}


def load_module(module: nn.Module, prefix: str, state: TrainState) -> None:
    # load_state_dict copies into the existing tensors: device and memory format are kept.
    module.load_state_dict(module_state(prefix, state))


class Checkpointer:
    """Writes a job's ``TrainState`` after each epoch and finds the latest one."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def save(self, state: TrainState) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{_PREFIX}{state.epoch:04d}" + (f"-{state.step:07d}" if state.step else "")
        final = self.folder / name
        partial = final.with_name(final.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        # safetensors takes contiguous CPU tensors that share no memory.
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.tensors.items()}
        save_file(tensors, str(partial / "state.safetensors"))
        meta = {
            "phase": state.phase,
            "epoch": state.epoch,
            "step": state.step,
            "history": [asdict(m) for m in state.history],
            **state.meta,
        }
        (partial / "state.json").write_text(json.dumps(meta))
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        for old in self.folder.glob(f"{_PREFIX}*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        return final

    def _complete(self) -> list[Path]:
        return sorted(
            p for p in self.folder.glob(f"{_PREFIX}*") if p.is_dir() and p.suffix != ".partial"
        )

    def latest_position(self) -> tuple[int, int]:
        """(epoch, step) of the latest complete state: after ``step`` steps of the epoch that
        follows ``epoch``; (0, 0) when there is none."""
        done = self._complete()
        if not done:
            return 0, 0
        epoch, _, step = done[-1].name[len(_PREFIX) :].partition("-")
        return int(epoch), int(step or 0)

    def latest(self) -> TrainState | None:
        done = self._complete()
        if not done:
            return None
        folder = done[-1]
        meta = json.loads((folder / "state.json").read_text())
        return TrainState(
            phase=meta.pop("phase"),
            epoch=int(meta.pop("epoch")),
            step=int(meta.pop("step", 0)),
            history=[EpochMetrics(**m) for m in meta.pop("history")],
            tensors=load_file(str(folder / "state.safetensors")),
            meta=meta,
        )

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
