"""The engine's CUDA paths on a real GPU: bf16 autocast, pinned memory, device placement,
channels_last, the probe's cached features, embeddings and prediction. Prints a table.

    python bench/gpu_check.py [--out results.json]

Needs only torch, torchvision, timm, safetensors, pillow, numpy and scikit-learn (the engine is a
plain library), so it runs on a GPU machine that has none of the service installed. Each check
asserts what must hold; the table gives the speeds the CPU machines cannot measure.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.engine import (
    DatasetSplits,
    Hyperparameters,
    ModelSource,
    extract_embeddings,
    load_artifact,
    predict,
    run_training,
    save_artifact,
)


def digits_on_disk(root: Path) -> DatasetSplits:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    train = []
    for i, (pixels, label) in enumerate(zip(bunch.images, bunch.target, strict=True)):
        path = root / f"{int(label)}_{i}.png"
        img = Image.fromarray((pixels * (255 / 16)).astype(np.uint8)).resize((32, 32))
        img.save(path)
        train.append((str(path), int(label)))
    return DatasetSplits(class_names=tuple(f"digit_{d}" for d in range(10)), train=tuple(train))


def scratch(name: str) -> ModelSource:
    return ModelSource(kind="timm", name=name, pretrained=False)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    assert torch.cuda.is_available(), "no CUDA device"
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = digits_on_disk(Path(tmp))
        for backbone, size in (("test_resnet", 64), ("resnet18", 112)):
            for amp in (True, False):
                hp = Hyperparameters(
                    epochs=4, batch_size=128, learning_rate=3e-3, image_size=size,
                    augmentation="light", amp=amp,
                )  # fmt: skip
                torch.cuda.reset_peak_memory_stats()
                start = time.perf_counter()
                result = run_training(
                    source=scratch(backbone), strategy="finetune", data=data, hparams=hp,
                    device="cuda", num_workers=4,
                )  # fmt: skip
                seconds = time.perf_counter() - start
                params = list(result.model.parameters())
                assert all(p.device.type == "cpu" for p in params), "model not returned on CPU"
                assert all(t.is_contiguous() for t in result.model.state_dict().values())
                last = result.history[-1]
                assert all(np.isfinite(m.train_loss) for m in result.history)
                rows.append({
                    "check": f"finetune {backbone} {size}px", "amp (bf16)": amp,
                    "val_acc": round(last.val_accuracy, 3),
                    "train img/s (last epoch)": round(last.images_per_second),
                    "job s": round(seconds, 1),
                    "peak GiB": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                })  # fmt: skip
                print(rows[-1], flush=True)
        # Linear probe: features cached on the GPU, head trained there.
        hp = Hyperparameters(epochs=30, batch_size=128, learning_rate=0.01, image_size=112)
        start = time.perf_counter()
        probe = run_training(
            source=scratch("resnet18"), strategy="linear_probe", data=data, hparams=hp,
            device="cuda", num_workers=4,
        )  # fmt: skip
        rows.append({"check": "linear_probe resnet18 112px (30 epochs)", "amp (bf16)": True,
                     "val_acc": round(probe.history[-1].val_accuracy, 3),
                     "job s": round(time.perf_counter() - start, 1)})  # fmt: skip
        print(rows[-1], flush=True)
        lp = run_training(
            source=scratch("test_resnet"), strategy="lp_ft", data=data,
            hparams=Hyperparameters(epochs=4, batch_size=128, image_size=64), device="cuda",
        )  # fmt: skip
        assert [m.phase for m in lp.history] == ["probe", "probe", "finetune", "finetune"]
        rows.append(
            {"check": "lp_ft test_resnet 64px", "val_acc": round(lp.history[-1].val_accuracy, 3)}
        )
        # Embeddings on the GPU equal (to bf16 precision) the same pass on CPU in fp32.
        small = DatasetSplits(class_names=data.class_names, train=data.train[:256])
        gpu = extract_embeddings(source=scratch("test_resnet"), data=small, image_size=64,
                                 device="cuda", batch_size=64)  # fmt: skip
        cpu = extract_embeddings(source=scratch("test_resnet"), data=small, image_size=64,
                                 device="cpu", batch_size=64, amp=False)  # fmt: skip
        diff = float(np.abs(np.asarray(gpu.features) - np.asarray(cpu.features)).max())
        scale = float(np.abs(np.asarray(cpu.features)).max())
        rows.append({"check": "embeddings cuda (bf16) vs cpu (fp32)",
                     "max abs diff": round(diff, 4), "max abs value": round(scale, 3)})  # fmt: skip
        # A model trained on the GPU, saved, loaded on CPU and on the GPU: the same top-1.
        folder = Path(tmp) / "artifact"
        save_artifact(result.model, result.card, folder)
        model_cpu, card = load_artifact(folder)
        images = [Image.open(p).copy() for p, _ in data.train[:64]]
        on_cpu = predict(model_cpu, card, images, top_k=1)
        on_gpu = predict(model_cpu.to("cuda"), card, images, top_k=1)
        agree = sum(a[0][0] == b[0][0] for a, b in zip(on_cpu, on_gpu, strict=True)) / len(images)
        rows.append({"check": "predict: loaded on cpu vs moved to cuda", "top-1 agreement": agree})
        assert agree >= 0.95, agree
    for row in rows:
        print(json.dumps(row))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
