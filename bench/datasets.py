"""Targets of the dataset report (issue 12), on MNIST with planted copies.

1. Near duplicates: recall >= 0.95 with precision >= 0.99. The 10,000 MNIST test digits, with
   copies of 1,200 of them planted as exact copies, resized 0.5-2x, re-encoded as JPEG at
   quality 50-95 and cropped by 1-2 px a side; each copy goes to the same class, another
   class, or the other split (train: the first 8,000 digits, val: the rest). Recall: planted
   (original, copy) pairs that end in one group. Precision: of all pairs inside the reported
   groups, those whose two images come from the same original. MNIST's own near-identical
   digits count as false positives.
2. The report (duplicates, leakage, statistics) for 10,000 images costs <= 1.5x the time of
   ingest without it: ``ingest_archive`` on the same zip with ``analyze`` off and on, in
   alternation, median of ``--repeats`` each.

    .venv/bin/python bench/datasets.py              # about 3 minutes on 2 CPU cores
    .venv/bin/python bench/datasets.py --repeats 5

Both measure the library the API calls (``app.storage``), in this process: no HTTP.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import random
import shutil
import statistics
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_mnist, png, table, write_zip

from app.storage.datasets import IngestLimits, ingest_archive
from app.storage.duplicates import MAX_DISTANCE, Fingerprinter, exact_groups, near_groups

KINDS = ("exact", "resize", "jpeg", "crop")
PLACES = ("same class", "other class", "other split")


def plant(image: np.ndarray, kind: str, rng: random.Random) -> bytes:
    img = Image.fromarray(image, mode="L")
    if kind == "exact":
        return png(image)
    if kind == "resize":
        side = round(28 * rng.uniform(0.5, 2.0))
        return _encode(img.resize((side, side), Image.Resampling.BILINEAR), "PNG")
    if kind == "jpeg":
        return _encode(img, "JPEG", quality=rng.randint(50, 95))
    left, top, right, bottom = (rng.randint(1, 2) for _ in range(4))
    return _encode(img.crop((left, top, 28 - right, 28 - bottom)), "PNG")


def _encode(img: Image.Image, fmt: str, **kw: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def near_duplicates(n_planted: int, seed: int) -> list[list[object]]:
    images, labels = load_mnist()
    rng = random.Random(seed)
    items: list[tuple[bytes, int, str, int, str]] = []  # bytes, label, split, source, kind
    for i, (image, label) in enumerate(zip(images, labels.tolist(), strict=True)):
        items.append((png(image), label, "train" if i < 8000 else "val", i, "original"))
    for n, source in enumerate(rng.sample(range(len(images)), n_planted)):
        kind, place = KINDS[n % len(KINDS)], PLACES[(n // len(KINDS)) % len(PLACES)]
        label, split = int(labels[source]), "train" if source < 8000 else "val"
        if place == "other class":
            label = (label + rng.randint(1, 9)) % 10
        elif place == "other split":
            split = "val" if split == "train" else "train"
        items.append((plant(images[source], kind, rng), label, split, source, kind))
    prints = Fingerprinter()
    t0 = time.perf_counter()
    for data, *_ in items:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            prints.add(img)
    fingerprints = prints.finish()
    t_hash = time.perf_counter() - t0
    t0 = time.perf_counter()
    groups = near_groups(fingerprints)
    t_group = time.perf_counter() - t0
    exact = exact_groups([_digest(data) for data, *_ in items])

    group_of = {i: g for g, members in enumerate(groups) for i in members}
    rows = []
    for kind in KINDS:
        planted = [i for i, it in enumerate(items) if it[4] == kind]
        found = sum(
            1
            for i in planted
            if i in group_of and group_of.get(items[i][3]) == group_of[i]  # source index == i
        )
        rows.append([f"near: {kind} copies", len(planted), f"{found / len(planted):.3f}"])
    planted_all = [i for i, it in enumerate(items) if it[4] != "original"]
    recall = sum(1 for i in planted_all if group_of.get(items[i][3], -1) == group_of.get(i, -2))
    true = false = 0
    for members in groups:
        for a, b in combinations(members, 2):
            if items[a][3] == items[b][3]:
                true += 1
            else:
                false += 1
    exact_of = {i: g for g, members in enumerate(exact) for i in members}
    planted_exact = [i for i, it in enumerate(items) if it[4] == "exact"]
    exact_found = sum(1 for i in planted_exact if exact_of.get(items[i][3], -1) == exact_of.get(i))
    n_exact = len(planted_exact)
    return [
        *rows,
        ["near: all planted copies (recall)", len(planted_all), f"{recall / len(planted_all):.3f}"],
        [
            "near: precision (pairs in groups from one original)",
            true + false,
            f"{true / max(true + false, 1):.4f}",
        ],
        ["near: pairs joining different MNIST digits", false, ""],
        ["exact: planted exact copies found", n_exact, f"{exact_found / n_exact:.3f}"],
        [f"fingerprint {len(items)} images (s)", "", f"{t_hash:.2f}"],
        [f"group them, max distance {MAX_DISTANCE} of 256 bits (s)", "", f"{t_group:.2f}"],
    ]


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def report_cost(work: Path, repeats: int) -> list[list[object]]:
    images, labels = load_mnist()
    pairs = list(zip(images, labels.tolist(), strict=True))
    archive = write_zip(work / "mnist.zip", {"train": pairs[:8000], "val": pairs[8000:]})
    times: dict[bool, list[float]] = {False: [], True: []}
    for r in range(repeats):
        for analyze in (False, True) if r % 2 == 0 else (True, False):
            dest = work / f"ds-{r}-{analyze}"
            t0 = time.perf_counter()
            ingest_archive(archive, dest, IngestLimits(), analyze=analyze)
            times[analyze].append(time.perf_counter() - t0)
            shutil.rmtree(dest)
    plain, full = statistics.median(times[False]), statistics.median(times[True])
    return [
        ["ingest 10,000 MNIST PNGs, no report (s, median)", repeats, f"{plain:.2f}"],
        ["ingest with duplicates, leakage, statistics (s, median)", repeats, f"{full:.2f}"],
        ["ratio (target <= 1.5)", "", f"{full / plain:.2f}"],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--planted", type=int, default=1200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = near_duplicates(args.planted, args.seed)
    with tempfile.TemporaryDirectory(prefix="bench-datasets-") as tmp:
        rows += report_cost(Path(tmp), args.repeats)
    print(table(["measure", "n", "value"], rows))


if __name__ == "__main__":
    main()
