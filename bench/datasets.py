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
   alternation, median of ``--repeats`` each (the library the API calls, in this process).
3. A resumable upload interrupted at 60% and resumed sends <= 1.1x the archive: over HTTP to a
   real ``transferlab serve``, parts of 8 MiB; the connection is cut in the middle of the part
   that crosses 60%, the client asks what is stored and sends the rest, then completes it into a
   dataset. ``--upload-mib`` sets the archive size (default 256 MiB of incompressible PNGs; the
   issue names 1 GiB: ``--upload-mib 1024`` needs ~4 GiB of free disk).

    .venv/bin/python bench/datasets.py              # about 4 minutes on 2 CPU cores
    .venv/bin/python bench/datasets.py --repeats 5 --upload-mib 1024
    .venv/bin/python bench/datasets.py --upload-only --upload-mib 1024   # target 3 alone
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
import zipfile
from collections.abc import Iterator
from itertools import combinations
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Service, load_mnist, png, table, write_zip

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
    wall: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    for r in range(repeats):
        for analyze in (False, True) if r % 2 == 0 else (True, False):
            dest = work / f"ds-{r}-{analyze}"
            t0, c0 = time.perf_counter(), time.process_time()
            ingest_archive(archive, dest, IngestLimits(), analyze=analyze)
            wall[analyze].append(time.perf_counter() - t0)
            cpu[analyze].append(time.process_time() - c0)
            shutil.rmtree(dest)
    # CPU time of this process as well as wall time: on a shared machine the wall clock mostly
    # measures the neighbours, while CPU seconds are what the ingest itself consumed.
    rows = []
    for what, times in (("wall", wall), ("CPU", cpu)):
        plain, full = statistics.median(times[False]), statistics.median(times[True])
        rows += [
            [f"ingest 10,000 MNIST PNGs, no report ({what} s, median)", repeats, f"{plain:.2f}"],
            [f"ingest with the full report ({what} s, median)", repeats, f"{full:.2f}"],
            [f"ratio, {what} (target <= 1.5)", "", f"{full / plain:.2f}"],
        ]
    return rows


class _Cut(Exception):
    """The simulated dropped connection."""


def resumable_upload(work: Path, mib: int, part_mib: int = 8) -> list[list[object]]:
    archive = _noise_zip(work / "big.zip", mib * 2**20)
    size = archive.stat().st_size
    part_size = part_mib * 2**20
    sent = 0
    cut_at = int(size * 0.6)

    def body(offset: int, length: int, cut: bool) -> Iterator[bytes]:
        nonlocal sent
        with archive.open("rb") as fh:
            fh.seek(offset)
            remaining = length
            while remaining:
                chunk = fh.read(min(2**20, remaining))
                remaining -= len(chunk)
                sent += len(chunk)
                yield chunk
                if cut and sent >= cut_at:
                    raise _Cut

    def put(client: httpx.Client, uid: str, number: int, cut: bool) -> None:
        offset = (number - 1) * part_size
        length = min(part_size, size - offset)
        digest = hashlib.sha256()
        with archive.open("rb") as fh:
            fh.seek(offset)
            digest.update(fh.read(length))
        client.put(
            f"/v1/uploads/{uid}/parts/{number}",
            content=body(offset, length, cut),
            headers={"Content-SHA256": digest.hexdigest(), "Content-Length": str(length)},
        ).raise_for_status()

    with Service() as svc:
        client = svc.client
        t0 = time.perf_counter()
        upload = client.post(
            "/v1/uploads", json={"size": size, "part_size": part_size, "filename": "big.zip"}
        ).json()
        uid, total = upload["id"], upload["parts_total"]
        try:
            for number in range(1, total + 1):
                put(client, uid, number, cut=True)
        except (_Cut, httpx.HTTPError):
            pass  # the line dropped
        before = sent
        missing = client.get(f"/v1/uploads/{uid}").json()["missing"]
        for number in missing:
            put(client, uid, number, cut=False)
        transfer_s = time.perf_counter() - t0
        r = client.post(f"/v1/uploads/{uid}/complete")
        r.raise_for_status()
        complete_s = time.perf_counter() - t0 - transfer_s
    return [
        [f"resumable upload: archive (MiB), parts of {part_mib} MiB", total, f"{size / 2**20:.0f}"],
        ["sent before the cut (MiB)", "", f"{before / 2**20:.0f}"],
        ["parts resent after asking what is stored", len(missing), ""],
        ["sent in all (MiB)", "", f"{sent / 2**20:.0f}"],
        ["sent / archive (target <= 1.1)", "", f"{sent / size:.3f}"],
        ["transfer, then complete + ingest (s)", "", f"{transfer_s:.1f}, {complete_s:.1f}"],
        ["dataset images", "", r.json()["num_images"]],
    ]


def _noise_zip(path: Path, target: int) -> Path:
    """Incompressible 1024x1024 RGB PNGs (~3 MiB each) in two class folders, about ``target``
    bytes in all (stored, so the archive is as large as its images)."""
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        k = 0
        while path.stat().st_size < target:
            pixels = rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
            zf.writestr(f"{'ab'[k % 2]}/{k:05d}.png", png_rgb(pixels))
            k += 1
            zf.fp.flush()  # type: ignore[union-attr]
    return path


def png_rgb(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buf, format="PNG", compress_level=0)
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--planted", type=int, default=1200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--upload-mib", type=int, default=256)
    parser.add_argument("--skip-upload", action="store_true")
    parser.add_argument("--upload-only", action="store_true", help="target 3 alone")
    args = parser.parse_args()
    rows = []
    if not args.upload_only:
        rows += near_duplicates(args.planted, args.seed)
        with tempfile.TemporaryDirectory(prefix="bench-datasets-") as tmp:
            rows += report_cost(Path(tmp), args.repeats)
    if not args.skip_upload:
        with tempfile.TemporaryDirectory(prefix="bench-upload-") as tmp:
            rows += resumable_upload(Path(tmp), args.upload_mib)
    print(table(["measure", "n", "value"], rows))


if __name__ == "__main__":
    main()
