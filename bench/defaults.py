"""Do the defaults work on the first try? A 6-epoch finetune from scratch, as a new user would
submit it, with each augmentation and with the last or the best epoch kept; accuracy on images
the job never saw (neither trained on nor used to pick the epoch).

    .venv/bin/python bench/defaults.py      # about 4 minutes on 2 cores

Datasets: scikit-learn's digits (1,000 to train, 797 held out) and MNIST (3,000 of its test
images to train, 2,000 others held out; ../shared/data/mnist or $MNIST_DIR), both at 32 px with
test_resnet, through the engine in-process (the job's own code path, without HTTP).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import load_digits_as_mnist, load_mnist, table

from app.engine import DatasetSplits, Hyperparameters, ModelSource, predict, run_training

CONFIGS = [
    ("default (timm's)", {"augmentation": "default"}),
    ("light", {"augmentation": "light"}),
    ("none", {"augmentation": "none"}),
    ("auto, last epoch (keep_best off)", {"keep_best": False}),
    ("auto, best epoch (the defaults)", {}),
]


def write(root: Path, images: np.ndarray, labels: np.ndarray) -> list[tuple[str, int]]:
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        path = root / f"{i}.png"
        Image.fromarray(img).save(path)
        out.append((str(path), int(label)))
    return out


def held_out_accuracy(result, samples: list[tuple[str, int]]) -> float:
    images = [Image.open(p).copy() for p, _ in samples]
    ranked = predict(result.model, result.card, images, top_k=1)
    names = result.card.class_names
    return float(np.mean([r[0][0] == names[y] for r, (_, y) in zip(ranked, samples, strict=True)]))


def main() -> int:
    torch.set_num_threads(1)  # as the engine tests: stable on a shared 2-core machine
    sets = {}
    digits, digit_labels = load_digits_as_mnist()
    sets["digits"] = (digits[:1000], digit_labels[:1000], digits[1000:], digit_labels[1000:])
    mnist, mnist_labels = load_mnist()
    sets["MNIST"] = (mnist[:3000], mnist_labels[:3000], mnist[3000:5000], mnist_labels[3000:5000])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (xtr, ytr, xte, yte) in sets.items():
            train = write(Path(tmp) / name / "train", xtr, ytr)
            test = write(Path(tmp) / name / "test", xte, yte)
            data = DatasetSplits(class_names=tuple(str(c) for c in range(10)), train=tuple(train))
            for label, extra in CONFIGS:
                hp = Hyperparameters(epochs=6, image_size=32, learning_rate=3e-3, **extra)
                start = time.perf_counter()
                result = run_training(
                    source=ModelSource(kind="timm", name="test_resnet", pretrained=False),
                    strategy="finetune", data=data, hparams=hp, device="cpu",
                )  # fmt: skip
                acc = held_out_accuracy(result, test)
                rows.append([name, label, result.choices["augmentation"],
                             result.choices["kept_epoch"], f"{acc:.3f}",
                             f"{time.perf_counter() - start:.0f} s"])  # fmt: skip
                print(rows[-1], flush=True)
    print(table(["data", "setting", "augmentation used", "epoch kept", "held-out acc", "time"],
                rows))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
