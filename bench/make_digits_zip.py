"""Write scikit-learn's digits as a dataset archive (one folder per class) for trying the API.

.venv/bin/python bench/make_digits_zip.py digits.zip [--per-class 30]
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_digits_as_mnist, png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--per-class", type=int, default=30)
    parser.add_argument("--sample-dir", type=Path, help="also write one PNG per class here")
    args = parser.parse_args()
    images, labels = load_digits_as_mnist()
    counts = dict.fromkeys(range(10), 0)
    with zipfile.ZipFile(args.output, "w") as zf:
        for image, label in zip(images, labels.tolist(), strict=True):
            if counts[label] < args.per_class:
                zf.writestr(f"digit_{label}/{counts[label]:04d}.png", png(image))
                counts[label] += 1
    if args.sample_dir:
        args.sample_dir.mkdir(parents=True, exist_ok=True)
        for c in range(10):
            idx = int((labels == c).nonzero()[0][-1])  # the last one: not in the archive
            (args.sample_dir / f"digit_{c}.png").write_bytes(png(images[idx]))
    print(f"wrote {args.output}: {sum(counts.values())} images in {len(counts)} classes")


if __name__ == "__main__":
    main()
