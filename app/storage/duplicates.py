"""Exact and near-duplicate images: fingerprints from decoded pixels, groups from fingerprints.

Exact copies share their bytes' sha256 (already computed while extracting). Near copies are
found with ``imagehash``'s pHash at ``hash_size=16`` (256 bits: the signs of the 16x16 lowest
frequencies of a 64x64 DCT, against their median), computed here in batches (``Fingerprinter``;
a test compares it with ``imagehash.phash``).

Why these choices (measured on the 10,000 MNIST test digits, bench/datasets.py):
- The common 64-bit pHash cannot tell digits apart: 36% of MNIST digits have a *different*
  digit within 4 bits of them. At 256 bits, 2 in 1,500 have one within ``MAX_DISTANCE`` (20).
- pHash shrugs off resizing (0.5-2x: 96% within 20 bits) and JPEG (q50-95: 100%), but not
  crops: cutting 1-2 px off a 28 px digit moves the content under the DCT and costs ~44 bits.
  So every image gets a second pHash of its *content box*: the border that matches the corner
  colour is trimmed and the box squared around the content. Crops that take only border (the
  common "small crop" of a scanned or centred object) then hash the same (96% within 20 bits).
  Photos without a uniform border are not trimmed, and have only the first hash.
- Crops combined with resizing are mostly missed (the trimmed box moves by a pixel at the
  smaller scale); the report says "near" for what this finds, not for every edit.

Pairs within ``MAX_DISTANCE`` are found by multi-index hashing: split the 256 bits into
``MAX_DISTANCE + 1`` chunks; two hashes within that distance agree exactly on at least one chunk
(pigeonhole), so only images that share a chunk value are compared. NOTE for 10,000 MNIST
images this is ~0.6 s for both hash kinds on a loaded 2-core machine, where comparing all pairs
with numpy took 3.5 s per kind. Growth is quadratic in the size of the largest chunk buckets:
100,000 look-alike images would take minutes (not measured).
"""

from __future__ import annotations

import functools
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
HASH_NAME = "pHash 256 bit (imagehash.phash, hash_size=16), also of the border-trimmed content"
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

    The hash is imagehash's pHash (greyscale, LANCZOS to 64x64, 2-D DCT, the 16x16 lowest
    frequencies against their median), computed in batches as linear algebra: resampling and
    DCT are both linear, so for images of one shape h x w they fold into two small matrices and
    the 16x16 frequencies are ``A @ X @ B.T`` (A: 16 x h, B: 16 x w) for the whole batch at once.
    It differs from ``imagehash.phash`` only where Pillow rounds its resize to 8 bits: a test
    checks that the two agree within a few of the 256 bits.
    NOTE per 28x28 image (both hashes): imagehash.phash twice ~1 ms; Pillow's resize plus our
    batched DCT 0.6 ms; this ~0.1 ms. Images over ``_DIRECT_MAX`` px are shrunk to 64x64 by
    Pillow first, so a batch never holds large pixel arrays.
    """

    _BATCH = 1024
    _DIRECT_MAX = 256

    def __init__(self) -> None:
        # (kind, h, w) -> [(image index, pixels)]; kind 0: whole images, 1: content boxes
        self._pending: dict[tuple[int, int, int], list[tuple[int, np.ndarray]]] = {}
        self._hashes: dict[tuple[int, int], bytes] = {}
        self._count = 0

    def add(self, img: Image.Image) -> None:
        grey = img if img.mode == "L" else img.convert("L")
        index = self._count
        self._count += 1
        if max(grey.size) > self._DIRECT_MAX:
            # The whole-image hash from Pillow's own 64x64 thumbnail; the content box from a
            # smaller copy (its hash is of a crop, resampled anyway).
            thumb = grey.resize((HASH_SIZE * 4, HASH_SIZE * 4), Image.Resampling.LANCZOS)
            self._hashes[(index, 0)] = phash_bits(np.asarray(thumb)[None])[0].tobytes()
            small = grey.resize(_fit(grey.size, self._DIRECT_MAX), Image.Resampling.BILINEAR)
            self._queue(2, index, np.asarray(small))
        else:
            self._queue(0, index, np.asarray(grey))

    def finish(self) -> list[Fingerprint]:
        for kind in (0, 2, 1):  # 0 and 2 queue content boxes (1)
            for key in [k for k in self._pending if k[0] == kind]:
                self._flush(key)
        return [
            Fingerprint(self._hashes[(i, 0)], self._hashes.get((i, 1))) for i in range(self._count)
        ]

    def _queue(self, kind: int, index: int, pixels: np.ndarray) -> None:
        key = (kind, int(pixels.shape[0]), int(pixels.shape[1]))
        bucket = self._pending.setdefault(key, [])
        bucket.append((index, pixels))
        if len(bucket) >= self._BATCH:
            self._flush(key)

    def _flush(self, key: tuple[int, int, int]) -> None:
        bucket = self._pending.pop(key, [])
        if not bucket:
            return
        batch = np.stack([pixels for _, pixels in bucket])
        if key[0] in (0, 1):  # kind 2 is already hashed
            for (index, _), row in zip(bucket, phash_bits(batch), strict=True):
                self._hashes[(index, min(key[0], 1))] = row.tobytes()
        if key[0] in (0, 2):
            for (index, pixels), box in zip(bucket, _content_boxes(batch), strict=True):
                if box is not None:
                    self._queue(1, index, _crop(pixels, box))


def fingerprint(img: Image.Image) -> Fingerprint:
    """The near-duplicate fingerprint of one decoded image (first frame)."""
    fp = Fingerprinter()
    fp.add(img)
    return fp.finish()[0]


def _fit(size: tuple[int, int], longest: int) -> tuple[int, int]:
    scale = longest / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _dct_rows(n: int, keep: int) -> np.ndarray:
    """The first ``keep`` rows of the (unnormalised) DCT-II matrix of size n, as scipy's."""
    k = np.arange(keep)[:, None]
    x = np.arange(n)[None, :]
    return 2.0 * np.cos(np.pi * k * (2 * x + 1) / (2 * n))


def _lanczos(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 3.0, np.sinc(x) * np.sinc(x / 3.0), 0.0)


@functools.lru_cache(maxsize=256)
def _resample(n_in: int, n_out: int) -> np.ndarray:
    """Pillow's LANCZOS resampling from n_in to n_out samples as an (n_out, n_in) matrix
    (Pillow's ``precompute_coeffs``: the kernel widens by the scale when shrinking)."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 3.0 * filterscale
    matrix = np.zeros((n_out, n_in))
    for i in range(n_out):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        taps = np.arange(lo, hi)
        weights = _lanczos((taps - center + 0.5) / filterscale)
        total = weights.sum()
        matrix[i, lo:hi] = weights / total if total else weights
    return matrix


@functools.lru_cache(maxsize=256)
def _projection(n_in: int) -> np.ndarray:
    """Resample to 64 then keep the 16 lowest DCT frequencies: one (16, n_in) matrix."""
    size = HASH_SIZE * 4
    return (_dct_rows(size, HASH_SIZE) @ _resample(n_in, size)).astype(np.float32)


def phash_bits(pixels: np.ndarray) -> np.ndarray:
    """pHash of (n, h, w) greyscale images of one shape, packed: (n, HASH_BYTES) uint8."""
    rows, cols = _projection(pixels.shape[1]), _projection(pixels.shape[2])
    low = rows @ (pixels.astype(np.float32) @ cols.T)  # (16, h) @ (n, h, w) @ (w, 16)
    flat = low.reshape(len(pixels), -1)
    median = np.median(flat, axis=1, keepdims=True)
    return np.packbits(flat > median, axis=1)


def _crop(pixels: np.ndarray, box: tuple[int, int, int, int, int]) -> np.ndarray:
    """``pixels[top:bottom, left:right]``, the part outside the image filled with the border
    colour (the box is a square around the content and may reach past an edge)."""
    left, top, right, bottom, border = box
    h, w = pixels.shape
    out = np.full((bottom - top, right - left), border, dtype=pixels.dtype)
    src = pixels[max(top, 0) : min(bottom, h), max(left, 0) : min(right, w)]
    out[
        max(-top, 0) : max(-top, 0) + src.shape[0], max(-left, 0) : max(-left, 0) + src.shape[1]
    ] = src
    return out


def _content_boxes(batch: np.ndarray) -> list[tuple[int, int, int, int, int] | None]:
    """Per image of (n, h, w): a square (left, top, right, bottom, border colour) around what
    differs from the border colour, or None when that is ~all of the image.

    The box is placed relative to the content's own corner with integer arithmetic, so the same
    content cropped differently gets the same box (a rounded centre moved it by a pixel).
    """
    n, h, w = batch.shape
    corners = np.stack([batch[:, 0, 0], batch[:, 0, -1], batch[:, -1, 0], batch[:, -1, -1]], 1)
    border = np.sort(corners.astype(np.int16), axis=1)[:, 1]  # one odd corner does not count
    mask = np.abs(batch.astype(np.int16) - border[:, None, None]) > _TRIM_TOLERANCE
    rows, cols = mask.any(axis=2), mask.any(axis=1)
    y0, y1 = rows.argmax(axis=1), h - rows[:, ::-1].argmax(axis=1)
    x0, x1 = cols.argmax(axis=1), w - cols[:, ::-1].argmax(axis=1)
    boxes: list[tuple[int, int, int, int, int] | None] = []
    for i in range(n):
        bw, bh = int(x1[i] - x0[i]), int(y1[i] - y0[i])
        side = max(bw, bh)
        if not rows[i].any() or side < _TRIM_MIN_SIDE or bw * bh > _TRIM_MIN_GAIN * w * h:
            boxes.append(None)
            continue
        left, top = int(x0[i]) - (side - bw) // 2, int(y0[i]) - (side - bh) // 2
        boxes.append((left, top, left + side, top + side, int(border[i])))
    return boxes


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
