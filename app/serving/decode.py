"""Uploaded bytes -> model-sized pixels, with bounded memory.

An image is decoded only as large as its model needs: a JPEG straight to a reduced size
(``Image.draft``: libjpeg scales by 1/2, 1/4 or 1/8 while it decodes), any image then
box-resized to twice the model's resize target on its shorter side, and the model's own resize
and crop finish the job. A request decodes its images one after another and keeps only the
model-sized pixels of each (3 x H x W bytes: 37 KiB at 112 px).

What a decode holds at full size is bounded for the whole process by ``PixelBudget``: formats
that cannot decode to a smaller size (PNG, WEBP, ...) must reserve their pixels first, so a flood
of 9,400 x 9,400 PNGs decodes one at a time instead of all at once. Peak memory of decoding is
therefore about ``max(budget, largest image) x 4 bytes`` (Pillow holds RGB and RGBA at 4 bytes
a pixel, L at 1), plus the raw uploads (each request at most TRANSFERLAB_MAX_PREDICT_BYTES),
whatever the number of concurrent requests. bench/serve.py measures a flood.

NOTE shrinking before the model's resize changes the model's input slightly against timm's
transform on the full image (libjpeg's scaling or a box filter, then the antialiased resize,
instead of the resize alone: 0.001-0.007 on average in normalised units, measured in
tests/serving/test_decode.py); images smaller than twice the resize target on a side, like
most thumbnails and every image of bench/serve.py, go through exactly timm's eval transform.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image

from app.engine.inference import Preprocessor
from app.storage.images import load_checked, open_unloaded

# Modes a box resize handles; others ("P", "1", "I;16") are converted first, as ToRGB would.
_REDUCIBLE = frozenset({"L", "LA", "RGB", "RGBA", "CMYK", "I", "F"})


class PixelBudget:
    """How many pixels may be decoded at full size at once, across all requests of a process.

    A decode waits until its pixels fit; one larger than the whole budget waits until it is
    alone. Small images (a 224 x 224 photo is 0.05 M pixels of the default 16.8 M) never wait,
    and neither do JPEGs, which reserve only their reduced size.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._used = 0
        self._cond = threading.Condition()
        self.peak = 0  # the most pixels ever reserved at once (for tests and the README)

    @contextmanager
    def reserve(self, pixels: int) -> Iterator[None]:
        pixels = min(max(0, pixels), self.capacity)
        with self._cond:
            self._cond.wait_for(lambda: self._used + pixels <= self.capacity)
            self._used += pixels
            self.peak = max(self.peak, self._used)
        try:
            yield
        finally:
            with self._cond:
                self._used -= pixels
                self._cond.notify_all()


def decode_upload(
    data: bytes, pre: Preprocessor, max_pixels: int, budget: PixelBudget | None = None
) -> np.ndarray:
    """(H, W, 3) uint8 at the model's input size; ``ImageRejected`` says why not."""
    img, _ = open_upload(data, pre, max_pixels)
    return decode_opened(img, pre, max_pixels, budget)


def open_upload(data: bytes, pre: Preprocessor, max_pixels: int) -> tuple[Image.Image, int]:
    """The image with its header checked and nothing decoded yet, and the pixels its header
    declares. A JPEG is set to decode at a reduced size, which its ``size`` then gives.
    ``ImageRejected`` says why not."""
    img = open_unloaded(data, max_pixels)
    declared = img.width * img.height
    if img.format in ("JPEG", "MPO"):
        # The decoder picks the largest 1/2^k scale that keeps both sides >= decode_side.
        img.draft(None, (pre.decode_side, pre.decode_side))
    return img, declared


def decode_opened(
    img: Image.Image, pre: Preprocessor, max_pixels: int, budget: PixelBudget | None = None
) -> np.ndarray:
    """``decode_upload`` after ``open_upload``; closes ``img``."""
    try:
        width, height = img.size
        if budget is None:
            return _to_pixels(img, pre, max_pixels)
        with budget.reserve(width * height):
            return _to_pixels(img, pre, max_pixels)
    finally:
        img.close()


def _to_pixels(img: Image.Image, pre: Preprocessor, max_pixels: int) -> np.ndarray:
    load_checked(img, max_pixels)
    factor = min(img.size) / pre.decode_side
    if factor >= 2:
        if img.mode not in _REDUCIBLE:
            img = img.convert("RGB")
        # NOTE a box resize to the exact fractional scale, not Image.reduce(): reduce() rounds
        # the size up with a partial last box, which shifts the picture; on a smooth 6,000 x
        # 4,000 test image the model's input then differed from the full decode's by 0.087 on
        # average (normalised units), against 0.003 with this resize and 0.001 with draft alone.
        size = (max(1, round(img.width / factor)), max(1, round(img.height / factor)))
        img = img.resize(size, Image.Resampling.BOX)
    return pre.pixels(img)
