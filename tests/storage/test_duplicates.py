"""Exact and near duplicates, leakage and dedupe, on real archives of real (digit) images."""

from __future__ import annotations

import io
import json
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image

from app.storage.datasets import IngestLimits, ingest_archive, load_manifest
from app.storage.duplicates import (
    HASH_BYTES,
    Fingerprinter,
    fingerprint,
    near_groups,
    near_pairs,
)

from ._build import digit_image, write_zip

LIMITS = IngestLimits()
SIZE = 48


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def digit(i: int) -> Image.Image:
    """A digit drawn as MNIST draws them: a 20 px glyph centred in a 28 px black frame (here
    scaled to SIZE px). The bare 8x8 digits have no border and too few pixels to be photos."""
    canvas = Image.new("L", (28, 28), 0)
    canvas.paste(digit_image(i, 8).resize((20, 20), Image.Resampling.BILINEAR), (4, 4))
    return canvas.resize((SIZE, SIZE), Image.Resampling.BICUBIC)


def base_entries(n: int = 6, prefix: str = "") -> dict[str, bytes | None]:
    """Distinct digits 0..2n-1, n per class (none of them near each other; checked below)."""
    entries: dict[str, bytes | None] = {}
    for k in range(n):
        entries[f"{prefix}cats/{k}.png"] = png(digit(k))
        entries[f"{prefix}dogs/{k}.png"] = png(digit(20 + k))
    return entries


def ingest(tmp_path: Path, dest: Path, entries: dict, **kw):
    return ingest_archive(write_zip(tmp_path / "d.zip", entries), dest, LIMITS, **kw)


def groups_of(section: dict, kind: str) -> list[set[str]]:
    return [{m["path"] for m in group} for group in section["examples"][kind]]


def test_distinct_images_are_not_duplicates(tmp_path: Path, dest: Path) -> None:
    report = ingest(tmp_path, dest, base_entries(10))
    assert report.duplicates["exact"]["groups"] == 0
    assert report.duplicates["near"]["groups"] == 0
    assert report.leakage["val_images"] == 0
    assert report.dedupe == {"mode": "none", "removed": 0, "examples": []}


def test_exact_copies_within_across_classes_and_splits(tmp_path: Path, dest: Path) -> None:
    entries = {
        **base_entries(4, "train/"),
        "val/cats/v0.png": png(digit(40)),
        "val/dogs/v1.png": png(digit(41)),
        "train/cats/copy-of-0.png": png(digit(0)),  # within class
        "train/dogs/also-cat-1.png": png(digit(1)),  # same bytes, other label
        "val/cats/leak-2.png": png(digit(2)),  # train image in val
    }
    report = ingest(tmp_path, dest, entries)
    exact = report.duplicates["exact"]
    assert (exact["groups"], exact["images"], exact["redundant"]) == (3, 6, 3)
    assert (exact["within_class"], exact["across_classes"], exact["across_splits"]) == (1, 1, 1)
    assert groups_of(exact, "within_class") == [{"train/cats/0.png", "train/cats/copy-of-0.png"}]
    assert groups_of(exact, "across_classes") == [{"train/cats/1.png", "train/dogs/also-cat-1.png"}]
    assert groups_of(exact, "across_splits") == [{"train/cats/2.png", "val/cats/leak-2.png"}]
    assert report.leakage["val_images"] == 1 and report.leakage["exact"] == 1
    assert report.leakage["val_total"] == 3
    assert report.leakage["examples"] == [
        {"val": "val/cats/leak-2.png", "train": ["train/cats/2.png"]}
    ]
    codes = {w["code"] for w in report.warnings}
    assert {"label_conflicts", "val_leakage"} <= codes
    # Nothing dropped without dedupe.
    assert report.num_images == len(entries)


@pytest.mark.parametrize(
    "copy",
    [
        pytest.param(lambda im: png(im.resize((24, 24), Image.Resampling.BILINEAR)), id="half"),
        pytest.param(lambda im: png(im.resize((96, 96), Image.Resampling.BILINEAR)), id="double"),
        pytest.param(lambda im: png(im.resize((67, 67), Image.Resampling.BICUBIC)), id="1.4x"),
        pytest.param(lambda im: jpeg(im, 50), id="jpeg-q50"),
        pytest.param(lambda im: jpeg(im, 95), id="jpeg-q95"),
        pytest.param(lambda im: png(im.crop((3, 2, SIZE - 3, SIZE - 2))), id="border-crop"),
    ],
)
def test_near_copies_are_found_but_are_not_exact(tmp_path: Path, dest: Path, copy) -> None:
    entries = {**base_entries(6), "dogs/near-cat-3.png": copy(digit(3))}
    report = ingest(tmp_path, dest, entries)
    assert report.duplicates["exact"]["groups"] == 0
    near = report.duplicates["near"]
    assert near["groups"] == 1 and near["across_classes"] == 1
    assert groups_of(near, "across_classes") == [{"train/cats/3.png", "train/dogs/near-cat-3.png"}]


def test_dedupe_exact_keeps_one_per_split_and_class(tmp_path: Path, dest: Path) -> None:
    entries = {
        **base_entries(4, "train/"),
        "val/cats/v0.png": png(digit(40)),
        "val/dogs/v1.png": png(digit(41)),
        "train/cats/0-copy-a.png": png(digit(0)),
        "train/cats/0-copy-b.png": png(digit(0)),
        "train/dogs/also-cat-1.png": png(digit(1)),
        "val/cats/leak-2.png": png(digit(2)),
        "train/cats/near-3.png": jpeg(digit(3), 60),  # near, not exact: kept by dedupe=exact
    }
    report = ingest(tmp_path, dest, entries, dedupe="exact")
    assert report.dedupe["mode"] == "exact" and report.dedupe["removed"] == 2
    assert report.dedupe["examples"] == [
        {"path": "train/cats/0-copy-a.png", "kept": "train/cats/0.png"},
        {"path": "train/cats/0-copy-b.png", "kept": "train/cats/0.png"},
    ]
    assert not (dest / "train/cats/0-copy-a.png").exists()
    assert (dest / "train/dogs/also-cat-1.png").exists()  # another label: reported, kept
    assert (dest / "val/cats/leak-2.png").exists()  # another split: reported, kept
    assert (dest / "train/cats/near-3.png").exists()
    manifest = load_manifest(dest)
    stored = {rel for rel, _ in manifest.train + manifest.val}
    assert "train/cats/0-copy-b.png" not in stored and "val/cats/leak-2.png" in stored
    assert report.num_images == len(entries) - 2
    assert report.splits["train"]["cats"] == 5
    assert report.leakage["val_images"] == 1
    on_disk = json.loads((dest / "manifest.json").read_text())["report"]
    assert on_disk["dedupe"]["removed"] == 2


def test_dedupe_near_drops_resized_and_reencoded_copies(tmp_path: Path, dest: Path) -> None:
    entries = {
        **base_entries(4),
        "cats/0-small.png": png(digit(0).resize((24, 24), Image.Resampling.BILINEAR)),
        "cats/0-jpeg.jpg": jpeg(digit(0), 70),
        "dogs/cat-1.jpg": jpeg(digit(1), 70),
    }
    report = ingest(tmp_path, dest, entries, dedupe="near")
    assert report.dedupe["removed"] == 2
    assert report.dedupe["examples"] == [
        {"path": "train/cats/0-jpeg.jpg", "kept": "train/cats/0.png"},  # same size, longer name
        {"path": "train/cats/0-small.png", "kept": "train/cats/0.png"},  # fewer pixels
    ]
    assert (dest / "train/dogs/cat-1.jpg").exists()
    assert report.duplicates["near"]["across_classes"] == 1


def test_unknown_dedupe_mode_is_a_programming_error(tmp_path: Path, dest: Path) -> None:
    with pytest.raises(ValueError, match="dedupe"):
        ingest(tmp_path, dest, base_entries(2), dedupe="fuzzy")
    assert not dest.exists()


def test_phash_agrees_with_imagehash_phash() -> None:
    """The batched pHash is imagehash's but for Pillow's 8-bit rounding and clipping inside its
    resize: the two hashes stay within a few of 256 bits, far inside MAX_DISTANCE."""
    fp = Fingerprinter()
    images = [digit(i) for i in range(30)]
    images += [digit(5).resize((100, 37)).convert("RGB"), digit(6).resize((300, 280))]
    for img in images:
        fp.add(img)
    distances = []
    for img, got in zip(images, fp.finish(), strict=True):
        expected = np.packbits(imagehash.phash(img, hash_size=16).hash)
        distances.append(int(np.unpackbits(np.frombuffer(got.phash, np.uint8) ^ expected).sum()))
    assert np.median(distances) <= 6 and max(distances) <= 12, distances
    assert distances[-1] == 0  # over 256 px: Pillow makes the 64x64 thumbnail, as imagehash does


def test_content_hash_ignores_a_cropped_border() -> None:
    canvas = Image.new("L", (64, 64), 0)
    canvas.paste(digit(7).crop((8, 8, 40, 40)), (16, 12))
    cropped = canvas.crop((5, 2, 60, 63))
    a, b = fingerprint(canvas), fingerprint(cropped)
    assert a.content_phash is not None and a.content_phash == b.content_phash
    # A photo-like image with no uniform border has no content hash.
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8), "L")
    assert fingerprint(noisy).content_phash is None


def test_near_pairs_finds_every_pair_within_the_distance() -> None:
    """Multi-index search against brute force, with planted pairs at every distance 0..24."""
    rng = np.random.default_rng(1)
    hashes = rng.integers(0, 256, (300, HASH_BYTES), dtype=np.uint8)
    bits = np.unpackbits(hashes, axis=1)
    for d in range(25):
        flipped = bits[d].copy()
        flipped[rng.choice(256, d, replace=False)] ^= 1
        bits[100 + d] = flipped
    hashes = np.packbits(bits, axis=1)
    got = {tuple(p) for p in near_pairs(hashes, 20).tolist()}
    dist = np.unpackbits(hashes[:, None, :] ^ hashes[None, :, :], axis=2).sum(2)
    expected = {(i, j) for i, j in zip(*np.nonzero(dist <= 20), strict=True) if i < j}
    assert got == expected
    assert {(d, 100 + d) for d in range(21)} <= got and (21, 121) not in got


def test_near_groups_are_connected_components() -> None:
    fp = Fingerprinter()
    for img in (digit(0), digit(0).resize((20, 20)), digit(21), digit(0).resize((50, 50))):
        fp.add(img)
    assert near_groups(fp.finish()) == [[0, 1, 3]]
