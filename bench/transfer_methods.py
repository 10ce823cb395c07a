"""The article's transfer methods, side by side, through the service's own HTTP API.

Source task: MNIST (../shared/data/mnist), a small timm backbone trained from scratch as a job.
Target task: scikit-learn's digits drawn like MNIST; a fixed half of it is held out for testing,
and 1, 5, 10 or all of the other half's images per class are labelled. Each method runs as a job
for several seeds (the seed picks the labelled images and seeds training). Cells: held-out
accuracy, mean +- standard deviation over seeds, and the mean wall time of one job.

    .venv/bin/python bench/transfer_methods.py          # about 30 minutes on 2 CPU cores
    .venv/bin/python bench/transfer_methods.py --per-class 1 10 --seeds 2   # a quicker look
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Service, load_digits_as_mnist, seconds_between, table, train_source, write_zip

# (row label, strategy, start from the MNIST model?, options, learning rate)
METHODS = [
    ("scratch (random init)", "finetune", False, {}, 1e-3),
    ("finetune (all layers)", "finetune", True, {}, 1e-3),
    ("finetune, stem + 2 stages frozen", "finetune", True, {"freeze_stages": 3}, 1e-3),
    ("L2-SP (alpha 1, beta 0.01)", "l2sp", True, {"alpha": 1.0, "beta": 0.01}, 1e-3),
    ("L1-SP (alpha 0.1, beta 0.01)", "l1sp", True, {"alpha": 0.1, "beta": 0.01}, 1e-3),
    ("linear_probe", "linear_probe", True, {}, 1e-2),
    ("lp_ft (half probe, then all at 0.1x lr)", "lp_ft", True, {}, 1e-2),
]


def digits_splits(seed: int, per_class: int | None) -> dict[str, list[tuple[np.ndarray, int]]]:
    """Held-out half fixed for all seeds (seed 1234); the labelled images drawn per seed."""
    images, labels = load_digits_as_mnist()
    split_rng = np.random.default_rng(1234)
    test_idx: list[int] = []
    pool: dict[int, list[int]] = {}
    for c in range(10):
        idx = split_rng.permutation(np.flatnonzero(labels == c))
        half = len(idx) // 2
        test_idx.extend(idx[:half].tolist())
        pool[c] = idx[half:].tolist()
    rng = np.random.default_rng(seed)
    train_idx: list[int] = []
    for c in range(10):
        chosen = pool[c] if per_class is None else rng.choice(pool[c], per_class, replace=False)
        train_idx.extend(int(i) for i in chosen)
    return {
        "train": [(images[i], int(labels[i])) for i in train_idx],
        "val": [(images[i], int(labels[i])) for i in test_idx],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="test_resnet")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--source-images", type=int, default=8000)
    parser.add_argument("--source-epochs", type=int, default=5)
    parser.add_argument("--per-class", nargs="+", default=["1", "5", "10", "all"])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    regimes = [None if p == "all" else int(p) for p in args.per_class]

    work = Path(tempfile.mkdtemp(prefix="bench-methods-"))
    acc: dict[tuple[str, str], list[float]] = {}
    wall: dict[tuple[str, str], list[float]] = {}
    t_start = time.monotonic()
    with Service() as svc:
        source = train_source(svc, work, args.backbone, args.image_size, args.source_images,
                              args.source_epochs)  # fmt: skip
        for per_class in regimes:
            col = "all" if per_class is None else str(per_class)
            for seed in range(args.seeds):
                ds = svc.upload(write_zip(work / f"d{col}-{seed}.zip",
                                          digits_splits(seed, per_class)))  # fmt: skip
                for label, strategy, transfer, options, lr in METHODS:
                    spec = {
                        "strategy": strategy,
                        "dataset_id": ds["id"],
                        "options": options,
                        "hyperparameters": {
                            "epochs": args.epochs, "image_size": args.image_size,
                            "batch_size": 32, "learning_rate": lr, "seed": seed,
                            "augmentation": "light",
                        },
                        **({"base_model": f"model:{source['id']}"} if transfer else
                           {"base_model": f"timm:{args.backbone}", "pretrained": False}),
                    }  # fmt: skip
                    job, model = svc.run(spec)
                    acc.setdefault((label, col), []).append(model["metrics"]["val_accuracy"])
                    wall.setdefault((label, col), []).append(
                        seconds_between(job["started_at"], job["finished_at"])
                    )
                    print(f"{col:>3}/class seed {seed} {label:<42} "
                          f"{acc[(label, col)][-1]:.3f}  {wall[(label, col)][-1]:.1f} s",
                          flush=True)  # fmt: skip

    cols = ["all" if p is None else str(p) for p in regimes]
    rows = []
    for label, *_ in METHODS:
        row = [label]
        for col in cols:
            a = acc[(label, col)]
            sd = statistics.stdev(a) if len(a) > 1 else 0.0
            row.append(
                f"{statistics.mean(a):.3f} ± {sd:.3f} ({statistics.mean(wall[(label, col)]):.0f} s)"
            )
        rows.append(row)
    print(
        f"\nsource: {args.backbone} from scratch on {args.source_images} MNIST images -> "
        f"{source['metrics']['val_accuracy']:.3f} on held-out MNIST. target: digits, "
        f"{args.image_size}px, {args.epochs} epochs, {args.seeds} seeds, accuracy on 898 held-out "
        f"images, mean ± std (mean job wall time). total {time.monotonic() - t_start:.0f} s"
    )
    print(table(["method", *[f"{c} / class" for c in cols]], rows))


if __name__ == "__main__":
    main()
