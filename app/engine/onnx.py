"""ONNX export of a trained model, checked against the eager model, and an onnxruntime runner.

The graph has one input ``images`` (N x 3 x H x W float32, normalised as the card's preprocessing
says) and one output ``logits`` (N x classes), with a dynamic batch axis ``batch``.

NOTE exporter: the TorchScript exporter (``dynamo=False``) first, the torch.export-based one
(``dynamo=True``, needs onnxscript) only if that fails or is gone. Measured on 2 CPU cores
(2 runs each): TorchScript 0.10-0.18 s for test_resnet at 32 px and 0.29-0.38 s
for resnet18 at 112 px; torch.export 3.4-4.9 s and 3.8-4.4 s. The export runs inside every
training job (worker.runner), and the torch.export one made a 30-epoch linear_probe job of
test_resnet 2.00x a forward pass over its images against the 1.5x target of bench/speed.py
(1.11x before exports). Both are checked against the eager model the same way.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from app.engine.errors import EngineError
from app.engine.specs import ModelCard
from app.onnxrt import create_onnx_session

ONNX_FILE = "model.onnx"
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
CHECK_BATCH = 8  # inputs the export is checked on; batch 1 is checked too (the dynamic axis)


@dataclass(frozen=True)
class OnnxReport:
    """What an export did: stored in the version's metrics as ``onnx``."""

    file: str
    exporter: str  # "dynamo" or "torchscript"
    max_abs_diff: float  # largest |onnxruntime - eager| logit over the check batches
    check_batches: tuple[int, ...]
    export_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "exporter": self.exporter,
            "max_abs_diff": self.max_abs_diff,
            "check_batches": list(self.check_batches),
            "export_seconds": round(self.export_seconds, 3),
        }


def export_onnx(model: nn.Module, card: ModelCard, directory: Path, *, seed: int = 0) -> OnnxReport:
    """Write ``directory/model.onnx`` from an eval-mode CPU model; check it against the model.

    The file is written under a temporary name and renamed once it passed its check.
    """
    model = model.eval()
    size = tuple(int(v) for v in card.preprocessing["input_size"])
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn((CHECK_BATCH, *size), generator=generator)
    target = Path(directory) / ONNX_FILE
    partial = target.with_name(ONNX_FILE + ".tmp")
    start = time.perf_counter()
    try:
        exporter = _export(model, sample, partial)
    except Exception as exc:
        partial.unlink(missing_ok=True)
        raise EngineError(f"ONNX export failed ({type(exc).__name__}: {exc})"[:500]) from exc
    seconds = time.perf_counter() - start
    session = create_onnx_session(partial, threads=1)
    worst = 0.0
    batches = (CHECK_BATCH, 1)
    with torch.inference_mode():
        for n in batches:
            eager = model(sample[:n]).float().numpy()
            ort_out = run_onnx(session, sample[:n])
            if ort_out.shape != eager.shape:
                partial.unlink(missing_ok=True)
                raise EngineError(f"ONNX output shape {ort_out.shape} != eager {eager.shape}")
            worst = max(worst, float(np.abs(ort_out - eager).max()))
    os.replace(partial, target)
    return OnnxReport(ONNX_FILE, exporter, worst, batches, seconds)


def _export(model: nn.Module, sample: torch.Tensor, path: Path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notes of the exporters, not actionable here
        try:
            torch.onnx.export(
                model,
                (sample,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
            return "torchscript"
        except Exception:
            path.unlink(missing_ok=True)
            program = torch.onnx.export(
                model,
                (sample,),
                None,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=65536)},),
                dynamo=True,
                verbose=False,
            )
            assert program is not None
            program.save(str(path))
            return "dynamo"


def run_onnx(session: Any, batch: torch.Tensor) -> np.ndarray:
    array = batch.detach().to("cpu", torch.float32).contiguous().numpy()
    return session.run([OUTPUT_NAME], {INPUT_NAME: array})[0]
