"""Does transfer help? MNIST -> scikit-learn digits, through the service's own HTTP API.

1. Train a small timm backbone from scratch on MNIST (../shared/data/mnist) as a job.
2. On digits, with N labelled images per class (the rest held out as val/), run `finetune` from
   that MNIST model version, and the same training from scratch, for several seeds.
3. Print held-out accuracy for both (mean and spread over seeds) as a Markdown table.

    .venv/bin/python bench/transfer_digits.py            # about 5 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Service, load_digits_as_mnist, table, train_source, write_zip


def digits_split(per_class: int, seed: int) -> dict[str, list[tuple[np.ndarray, int]]]:
    images, labels = load_digits_as_mnist()
    rng = np.random.default_rng(seed)
    train_idx: list[int] = []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        train_idx.extend(rng.choice(idx, size=per_class, replace=False).tolist())
    held_out = sorted(set(range(len(labels))) - set(train_idx))
    return {
        "train": [(images[i], int(labels[i])) for i in train_idx],
        "val": [(images[i], int(labels[i])) for i in held_out],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="test_resnet")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--source-images", type=int, default=8000, help="MNIST images for source")
    parser.add_argument("--source-epochs", type=int, default=5)
    parser.add_argument("--per-class", type=int, default=10, help="labelled digits per class")
    parser.add_argument("--target-epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-transfer-"))
    hp = {"image_size": args.image_size, "augmentation": "light"}
    with Service() as svc:
        source = train_source(
            svc, work, args.backbone, args.image_size, args.source_images, args.source_epochs
        )
        results: dict[str, list[float]] = {"scratch": [], "finetune from MNIST": []}
        for seed in range(args.seeds):
            target = write_zip(work / f"digits-{seed}.zip", digits_split(args.per_class, seed))
            ds = svc.upload(target)
            common = {
                "strategy": "finetune",
                "dataset_id": ds["id"],
                "hyperparameters": {
                    **hp,
                    "epochs": args.target_epochs,
                    "batch_size": 32,
                    "learning_rate": 1e-3,
                    "seed": seed,
                },
            }
            _, scratch = svc.run(
                {**common, "base_model": f"timm:{args.backbone}", "pretrained": False}
            )
            _, transfer = svc.run({**common, "base_model": f"model:{source['id']}"})
            results["scratch"].append(scratch["metrics"]["val_accuracy"])
            results["finetune from MNIST"].append(transfer["metrics"]["val_accuracy"])
            print(
                f"seed {seed}: scratch {results['scratch'][-1]:.3f}  "
                f"finetune {results['finetune from MNIST'][-1]:.3f}",
                flush=True,
            )

    held_out = 1797 - 10 * args.per_class
    rows = [
        [
            name,
            f"{statistics.mean(accs):.3f}",
            f"{statistics.stdev(accs) if len(accs) > 1 else 0:.3f}",
            " ".join(f"{a:.3f}" for a in accs),
        ]
        for name, accs in results.items()
    ]
    print()
    print(
        f"digits, {args.per_class} labelled images per class, accuracy on {held_out} held-out "
        f"images, {args.backbone} at {args.image_size}px, {args.target_epochs} epochs, "
        f"{args.seeds} seeds"
    )
    print(table(["start", "mean acc", "std", "per seed"], rows))


if __name__ == "__main__":
    main()
