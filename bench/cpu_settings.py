"""What the worker's CPU settings are worth: OpenMP wait policy, thread count, memory format.

Each setting runs in a fresh process (libgomp reads OMP_WAIT_POLICY once, when torch loads),
with 2 DataLoader workers and plain PyTorch loops over MNIST images written as PNG files:
forward passes (eval transform) and training (timm's training transform, AdamW).

    .venv/bin/python bench/cpu_settings.py     # about 8 minutes on 2 CPU cores
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_mnist, table

# (row label, environment, torch threads or None for torch's default, channels_last)
SETTINGS = [
    ("torch's defaults", {}, None, False),
    ("one torch thread", {}, 1, False),
    ("OMP_WAIT_POLICY=PASSIVE", {"OMP_WAIT_POLICY": "PASSIVE"}, None, False),
    ("PASSIVE + channels_last (the worker)", {"OMP_WAIT_POLICY": "PASSIVE"}, None, True),
]
# (backbone, image size, "forward" | "train", images used)
CASES = [
    ("test_resnet", 32, "forward", 4000),
    ("test_resnet", 64, "forward", 4000),
    ("test_resnet", 32, "train", 4000),
    ("resnet10t", 64, "forward", 4000),
    ("resnet10t", 64, "train", 1000),
]


def write_images(root: Path, n: int) -> Path:
    from PIL import Image

    images, labels = load_mnist(n)
    for i, (image, label) in enumerate(zip(images, labels.tolist(), strict=True)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(folder / f"{i:05d}.png")
    return root


def measure(root: Path, threads: int | None, channels_last: bool) -> list[float]:
    """Images/s of each case, in this process."""
    import timm
    import torch
    from torch.utils.data import DataLoader, Subset
    from torchvision.datasets import ImageFolder

    from app.engine.data import create_eval_transform, create_train_transform, resolve_preprocessing

    if threads is not None:
        torch.set_num_threads(threads)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    rates = []
    for backbone, size, mode, n in CASES:
        torch.manual_seed(0)
        model = timm.create_model(backbone, pretrained=False, num_classes=10)
        model = model.to(memory_format=fmt)
        cfg = resolve_preprocessing(timm.data.resolve_data_config({}, model=model), size)
        train = mode == "train"
        transform = create_train_transform(cfg) if train else create_eval_transform(cfg)
        data = Subset(ImageFolder(str(root), transform=transform), range(n))
        loader = DataLoader(data, batch_size=64, shuffle=train, num_workers=2)
        start = time.perf_counter()
        if train:
            model.train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
            for x, y in loader:
                optimizer.zero_grad(set_to_none=True)
                loss = torch.nn.functional.cross_entropy(model(x.contiguous(memory_format=fmt)), y)
                loss.backward()
                optimizer.step()
        else:
            model.eval()
            with torch.inference_mode():
                for x, _ in loader:
                    model(x.contiguous(memory_format=fmt))
        rates.append(n / (time.perf_counter() - start))
    return rates


def measure_setting(
    root: Path, label: str, env: dict[str, str], threads: int | None, channels_last: bool
) -> list[str]:
    """One row of the table, measured in a fresh interpreter."""
    child_env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    child_env |= {**env, "CPU_BENCH_IMAGES": str(root)}
    args = [sys.executable, __file__, "--measure", str(threads or "default"),
            "1" if channels_last else "0"]  # fmt: skip
    out = subprocess.run(args, env=child_env, capture_output=True, text=True, check=True)
    rates = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{label} done", flush=True)
    return [label, *(f"{r:.0f}" for r in rates)]


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--measure":
        threads = None if sys.argv[2] == "default" else int(sys.argv[2])
        images = Path(os.environ["CPU_BENCH_IMAGES"])
        print(json.dumps(measure(images, threads, channels_last=sys.argv[3] == "1")))
        return
    work = Path(tempfile.mkdtemp(prefix="bench-cpu-"))
    try:
        root = write_images(work / "mnist", max(n for *_, n in CASES))
        rows = [measure_setting(root, *setting) for setting in SETTINGS]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    headers = ["setting", *(f"{b} {s}px {m}" for b, s, m, _ in CASES)]
    print(f"\nimages/s, 2 DataLoader workers, batch 64, {os.cpu_count()} CPUs")
    print(table(headers, rows))


if __name__ == "__main__":
    main()
