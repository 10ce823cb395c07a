"""onnxruntime against eager PyTorch on CPU, for the serving backend's default.

For each model (pretrained=False, 10 classes): the version's ONNX export as the worker makes it
(export time, largest |onnx - eager| logit), then the forward pass at batch 1 and batch 32 with
eager torch (contiguous, as the API serves it), eager torch with channels_last, and onnxruntime
(the API's OnnxBackend). Backends are timed in turns, round after round, and each figure is the
median of the rounds, so load from other processes falls on all of them alike.

    .venv/bin/python bench/onnx_vs_torch.py             # about 3 minutes on 2 CPU cores
    .venv/bin/python bench/onnx_vs_torch.py --rounds 9  # steadier figures on a busy machine

OMP_WAIT_POLICY=PASSIVE is set as `transferlab` sets it for the API, unless already set.
(Not named bench/onnx.py: a script's folder comes first on sys.path, so `import onnx` inside
torch's exporter would import the script.)
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table

from app.engine import ModelCard, export_onnx
from app.engine.onnx import ONNX_FILE, run_onnx
from app.onnxrt import create_onnx_session

MODELS = (("resnet10t", 64), ("resnet18", 112))
BATCHES = (1, 32)


def card(name: str, size: int) -> ModelCard:
    return ModelCard(
        architecture={"library": "timm", "name": name, "num_classes": 10},
        class_names=tuple(str(i) for i in range(10)),
        preprocessing={"input_size": [3, size, size]},
    )


def images_per_s(forward: Callable[[torch.Tensor], object], batch: torch.Tensor, budget_s: float):
    """Images/s of repeated ``forward(batch)`` for about ``budget_s`` (after one warm-up call)."""
    forward(batch)
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < budget_s or n < 3:
        forward(batch)
        n += 1
    return n * batch.shape[0] / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="per backend per round")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows, exports = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name, size in MODELS:
            model = timm.create_model(name, pretrained=False, num_classes=10).eval()
            folder = Path(tmp) / name
            folder.mkdir()
            report = export_onnx(model, card(name, size), folder)
            exports.append([f"{name} @ {size}", report.exporter, f"{report.export_seconds:.1f}",
                            f"{report.max_abs_diff:.1e}"])  # fmt: skip
            session = create_onnx_session(folder / ONNX_FILE)
            nhwc = timm.create_model(name, pretrained=False, num_classes=10).eval()
            nhwc.load_state_dict(model.state_dict())
            nhwc = nhwc.to(memory_format=torch.channels_last)

            def eager(x, m=model):
                with torch.inference_mode():
                    return m(x)

            def channels_last(x, m=nhwc):
                with torch.inference_mode():
                    return m(x.contiguous(memory_format=torch.channels_last))

            backends = {
                "torch": eager,
                "torch channels_last": channels_last,
                "onnxruntime": lambda x, s=session: run_onnx(s, x),
            }
            for batch_size in BATCHES:
                x = torch.randn(batch_size, 3, size, size)
                speeds: dict[str, list[float]] = {k: [] for k in backends}
                for _ in range(args.rounds):
                    for label, forward in backends.items():
                        speeds[label].append(images_per_s(forward, x, args.seconds))
                med = {k: statistics.median(v) for k, v in speeds.items()}
                rows.append(
                    [f"{name} @ {size}", batch_size]
                    + [f"{med[k]:,.0f}" for k in backends]
                    + [f"{med['onnxruntime'] / med['torch']:.2f}x"]
                )
                print(rows[-1], flush=True)
    print()
    wait = os.environ["OMP_WAIT_POLICY"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores,"
          f" OMP_WAIT_POLICY={wait}, median of {args.rounds} rounds")  # fmt: skip
    print(table(["model", "exporter", "export s", "max abs diff"], exports))
    print()
    headers = ["model", "batch", "torch img/s", "torch channels_last img/s", "onnxruntime img/s",
               "onnxruntime / torch"]  # fmt: skip
    print(table(headers, rows))


if __name__ == "__main__":
    main()
