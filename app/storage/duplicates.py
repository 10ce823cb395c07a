"""Exact and near-duplicate images: fingerprints from decoded pixels, groups from fingerprints.

Exact copies share their bytes' sha256 (already computed while extracting). Near copies are
found with a perceptual hash from ``imagehash``: pHash with ``hash_size=16`` (256 bits: the signs
of the 16x16 lowest frequencies of a 64x64 DCT, against their median).

Why these choices (measured on the 10,000 MNIST test digits, bench/datasets.py):
- The common 64-bit pHash cannot tell digits apart: 36% of MNIST digits have a *different*
  digit within 4 bits of them. At 256 bits, 2 in 1,500 have one within ``MAX_DISTANCE`` (20).
- pHash shrugs off resizing (0.5-2x: 99% within 20 bits) and JPEG (q50-95: 100%), but not
  crops: cutting 1-2 px off a 28 px digit moves the content under the DCT and costs ~44 bits.
  So every image gets a second pHash of its *content box*: the border that matches the corner
  colour is trimmed and the box squared around the content. Crops that take only border (the
  common "small crop" of a scanned or centred object) then hash the same (96% within 20 bits).
  Photos without a uniform border are not trimmed, and have only the first hash.
- Crops combined with resizing are mostly missed (the trimmed box moves by a pixel at the
  smaller scale); the report says "near" for what this finds, not for every edit.

Pairs within ``MAX_DISTANCE`` are found by multi-index hashing: split the 256 bits into
``MAX_DISTANCE + 1`` chunks; two hashes within that distance agree exactly on at least one chunk
(pigeonhole), so only images that share a chunk value are compared. NOTE for 10,000 images
this is ~0.1-0.3 s where comparing all pairs with numpy took 3.5 s per hash kind.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

HASH_SIZE = 16  # bits = HASH_SIZE**2 = 256
HASH_BYTES = HASH_SIZE * HASH_SIZE // 8
MAX_DISTANCE = 20  # Hamming distance (of 256 bits) up to which two images are near copies
HASH_NAME = "imagehash.phash(hash_size=16), also on the border-trimmed content"
# A pixel differs from the border colour by more than this (of 255) when it is content; JPEG
# ringing around content stays under it at quality 50.
_TRIM_TOLERANCE = 64
# A content box this close to the whole image is no border at all: hash it once.
_TRIM_MIN_GAIN = 0.9
_TRIM_MIN_SIDE = 4


@dataclass(frozen=True)
class Fingerprint:
    phash: bytes  # HASH_BYTES
    content_phash: bytes | None  # of the trimmed content box; None when there is no border


class Fingerprinter:
    """Fingerprints of many images: ``add`` each decoded image, then ``finish``.

    pHash is imagehash's, computed in batches: each image is only shrunk to 64x64 here (as
    ``imagehash.phash`` does, LANCZOS on greyscale) and the DCT and median run on 1,024 images at
    once as two matrix products. The bits are the same as ``imagehash.phash(img, 16)`` (a test
    checks it). NOTE per 28x28 image: imagehash.phash 0.5 ms (its median and two scipy DCTs
    dominate), twice per image; this 0.05 ms plus the resizes.
    """

    _BATCH = 1024

    def __init__(self) -> None:
        self._pending: list[np.ndarray] = []
        self._owners: list[tuple[int, int]] = []  # (image index, 0 = whole / 1 = content box)
        self._hashes: dict[tuple[int, int], bytes] = {}
        self._count = 0

    def add(self, img: Image.Image) -> None:
        grey = img if img.mode == "L" else img.convert("L")
        index = self._count
        self._count += 1
        self._queue(index, 0, grey)
        box = _content_box(np.asarray(grey))
        if box is not None:
            self._queue(index, 1, grey.crop(box))

    def finish(self) -> list[Fingerprint]:
        self._flush()
        return [
            Fingerprint(self._hashes[(i, 0)], self._hashes.get((i, 1))) for i in range(self._count)
        ]

    def _queue(self, index: int, kind: int, grey: Image.Image) -> None:
        size = HASH_SIZE * 4
        self._pending.append(np.asarray(grey.resize((size, size), Image.Resampling.LANCZOS)))
        self._owners.append((index, kind))
        if len(self._pending) >= self._BATCH:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        packed = phash_bits(np.stack(self._pending))
        for owner, row in zip(self._owners, packed, strict=True):
            self._hashes[owner] = row.tobytes()
        self._pending.clear()
        self._owners.clear()


def fingerprint(img: Image.Image) -> Fingerprint:
    """The near-duplicate fingerprint of one decoded image (first frame)."""
    fp = Fingerprinter()
    fp.add(img)
    return fp.finish()[0]


def _dct_rows(n: int, keep: int) -> np.ndarray:
    """The first ``keep`` rows of the (unnormalised) DCT-II matrix of size n, as scipy's."""
    k = np.arange(keep)[:, None]
    x = np.arange(n)[None, :]
    return 2.0 * np.cos(np.pi * k * (2 * x + 1) / (2 * n))


_DCT = _dct_rows(HASH_SIZE * 4, HASH_SIZE)


def phash_bits(thumbs: np.ndarray) -> np.ndarray:
    """imagehash's pHash of (n, 64, 64) greyscale thumbnails, packed: (n, HASH_BYTES) uint8."""
    low = np.einsum("ij,njk,lk->nil", _DCT, thumbs.astype(np.float64), _DCT, optimize=True)
    flat = low.reshape(len(thumbs), -1)
    median = np.median(flat, axis=1, keepdims=True)
    return np.packbits(flat > median, axis=1)


def _content_box(pixels: np.ndarray) -> tuple[int, int, int, int] | None:
    """A square box around what differs from the border colour, or None if that is ~all of it.

    The box is placed relative to the content's own corner with integer arithmetic, so the same
    content cropped differently gets the same box (a rounded centre moved it by a pixel).
    """
    h, w = pixels.shape
    corners = sorted(int(pixels[y, x]) for y, x in ((0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)))
    mask = np.abs(pixels.astype(np.int16) - corners[1]) > _TRIM_TOLERANCE
    rows = np.flatnonzero(mask.any(axis=1))
    if len(rows) == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    x0, x1, y0, y1 = int(cols[0]), int(cols[-1]) + 1, int(rows[0]), int(rows[-1]) + 1
    bw, bh = x1 - x0, y1 - y0
    side = max(bw, bh)
    if side < _TRIM_MIN_SIDE or bw * bh > _TRIM_MIN_GAIN * w * h:
        return None
    left, top = x0 - (side - bw) // 2, y0 - (side - bh) // 2
    return left, top, left + side, top + side


def near_pairs(hashes: np.ndarray, max_distance: int = MAX_DISTANCE) -> np.ndarray:
    """Pairs (i, j), i < j, of rows of ``hashes`` (n x HASH_BYTES uint8) within the distance."""
    n = len(hashes)
    found = [np.empty((0, 2), np.int64)]
    if n < 2:
        return found[0]
    bits = np.unpackbits(hashes, axis=1)
    words = np.ascontiguousarray(hashes).view(np.uint64)
    bounds = np.linspace(0, bits.shape[1], max_distance + 2).astype(int)
    for start, end in itertools.pairwise(bounds):
        keys = bits[:, start:end].astype(np.int64) @ (1 << np.arange(end - start, dtype=np.int64))
        for left, right in _same_key_pairs(keys):
            # Checked per chunk, not after collecting: the candidates are millions (skewed
            # bits share chunk values), the survivors a handful.
            close = np.bitwise_count(words[left] ^ words[right]).sum(1) <= max_distance
            found.append(np.stack([left[close], right[close]], axis=1))
    pairs = np.concatenate(found)
    codes = np.unique(
        np.minimum(pairs[:, 0], pairs[:, 1]) * n + np.maximum(pairs[:, 0], pairs[:, 1])
    )
    return np.stack([codes // n, codes % n], axis=1)


def _same_key_pairs(keys: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """All (i, j), i != j, with keys[i] == keys[j]; buckets of one size are expanded together."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    sizes = np.diff(np.r_[starts, len(keys)])
    out = []
    for size in np.unique(sizes[sizes > 1]):
        members = order[starts[sizes == size][:, None] + np.arange(size)]  # (buckets, size)
        a, b = np.triu_indices(int(size), 1)
        out.append((members[:, a].ravel(), members[:, b].ravel()))
    return out


def groups_from_pairs(n: int, pairs: np.ndarray) -> list[list[int]]:
    """Connected components of size >= 2, each sorted, ordered by their first member."""
    if len(pairs) == 0:
        return []
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    members: dict[int, list[int]] = {}
    for index, label in enumerate(labels.tolist()):
        members.setdefault(label, []).append(index)
    return sorted((m for m in members.values() if len(m) > 1), key=lambda m: m[0])


def exact_groups(digests: Sequence[str]) -> list[list[int]]:
    by_digest: dict[str, list[int]] = {}
    for index, digest in enumerate(digests):
        by_digest.setdefault(digest, []).append(index)
    return sorted((m for m in by_digest.values() if len(m) > 1), key=lambda m: m[0])


def near_groups(prints: Sequence[Fingerprint], max_distance: int = MAX_DISTANCE) -> list[list[int]]:
    """Groups of images linked by either hash within ``max_distance`` (exact copies included)."""
    n = len(prints)
    found = [near_pairs(_stack([p.phash for p in prints]), max_distance)]
    with_content = [i for i, p in enumerate(prints) if p.content_phash is not None]
    if len(with_content) > 1:
        index = np.array(with_content)
        local = near_pairs(_stack([prints[i].content_phash for i in with_content]), max_distance)  # type: ignore[misc]
        found.append(index[local])
    return groups_from_pairs(n, np.concatenate(found))


def _stack(hashes: Sequence[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(hashes), np.uint8).reshape(len(hashes), HASH_BYTES)
