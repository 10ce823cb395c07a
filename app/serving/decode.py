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
from typing import Protocol

import numpy as np
from PIL import Image

from app.errors import PayloadTooLarge, ServiceError
from app.storage.images import ImageRejected, load_checked, open_unloaded

# A request whose uploads hold at most this many bytes is opened and decoded by the inference
# lane that takes it, if each image decodes to at most this many pixels (then without the pixel
# budget); any other request on a worker thread (app.serving.predict).
LANE_DECODE_BYTES = 32 * 1024
LANE_DECODE_PIXELS = 1024 * 1024

_FULL_SIZE = "transferlab.full_size_pixels"  # set on each image by open_upload

# Modes a box resize handles; others ("P", "1", "I;16") are converted first, as ToRGB would.
_REDUCIBLE = frozenset({"L", "LA", "RGB", "RGBA", "CMYK", "I", "F"})


class Steps(Protocol):
    """What decoding needs of a model's preprocessing (``app.engine.inference.Preprocessor``,
    or ``LaneSteps`` where torch is not imported)."""

    @property
    def decode_side(self) -> int:
        """Decoders may shrink an image while both its sides stay >= this."""

    def pixels(self, img: Image.Image) -> np.ndarray: ...


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
    data: bytes, pre: Steps, max_pixels: int, budget: PixelBudget | None = None
) -> np.ndarray:
    """(H, W, 3) uint8 at the model's input size; ``ImageRejected`` says why not."""
    img, _ = open_upload(data, pre, max_pixels)
    return decode_opened(img, pre, max_pixels, budget)


def open_upload(data: bytes, pre: Steps, max_pixels: int) -> tuple[Image.Image, int]:
    """The image with its header checked and nothing decoded yet, and the pixels its header
    declares. A JPEG is set to decode at a reduced size, which its ``size`` then gives.
    ``ImageRejected`` says why not."""
    img = open_unloaded(data, max_pixels)
    declared = img.width * img.height
    if img.format in ("JPEG", "MPO"):
        # The decoder picks the largest 1/2^k scale that keeps both sides >= decode_side.
        img.draft(None, (pre.decode_side, pre.decode_side))
    cost = img.width * img.height
    if img.format in ("JPEG", "MPO") and img.info.get("progressive"):
        # libjpeg keeps the coefficients of every declared pixel of a progressive JPEG whatever
        # the scale (2 bytes x 3 channels: 417 bytes declaring 8,192 x 8,192 took 400 MB).
        cost = 2 * declared
    img.info[_FULL_SIZE] = cost
    return img, declared


def full_size_pixels(img: Image.Image) -> int:
    """What decoding ``img`` (from ``open_upload``) holds, in pixels of 4 bytes: its size as it
    decodes, or twice its declared size for a progressive JPEG."""
    return int(img.info.get(_FULL_SIZE, img.width * img.height))


def decode_opened(
    img: Image.Image, pre: Steps, max_pixels: int, budget: PixelBudget | None = None
) -> np.ndarray:
    """``decode_upload`` after ``open_upload``; closes ``img``."""
    try:
        if budget is None:
            return _to_pixels(img, pre, max_pixels)
        with budget.reserve(full_size_pixels(img)):
            return _to_pixels(img, pre, max_pixels)
    finally:
        img.close()


def _to_pixels(img: Image.Image, pre: Steps, max_pixels: int) -> np.ndarray:
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
    try:
        return pre.pixels(img)
    except Exception as exc:
        # Upright (EXIF), RGB and resize on untrusted metadata: a corrupt EXIF block raises
        # SyntaxError, struct.error or TypeError from Pillow. The image is bad, not the server.
        raise ImageRejected(f"the image cannot be converted ({type(exc).__name__}: {exc})") from exc


def named(filename: str, exc: ServiceError) -> ServiceError:
    exc.details = {**exc.details, "filename": filename}
    exc.message = f"{filename}: {exc.message}"
    return exc


def open_all(files: list[tuple[str, bytes]], pre: Steps, max_pixels: int) -> list[Image.Image]:
    """Every image opened (headers read and checked, nothing decoded), before the request
    spends any compute: one bad file fails the request, and the error names the file. All the
    images of one request together may hold at most ``max_pixels`` (the one-image limit):
    decoding is memory-bounded (above), so this bounds the CPU time one request
    can ask for."""
    images: list[Image.Image] = []
    total = 0
    try:
        for filename, data in files:
            try:
                img, declared = open_upload(data, pre, max_pixels)
            except ServiceError as exc:
                raise named(filename, exc) from None
            images.append(img)
            total += declared
        if len(files) > 1 and total > max_pixels:
            raise PayloadTooLarge(
                f"the images of one request hold {total} pixels in all; the limit is "
                f"{max_pixels} (TRANSFERLAB_MAX_IMAGE_PIXELS): send fewer or smaller images per "
                "request",
                code="predict_too_large",
                details={"limit_pixels": max_pixels, "pixels": total},
            )
    except ServiceError:
        for img in images:
            img.close()
        raise
    return images


def decode_all(
    files: list[tuple[str, bytes]],
    images: list[Image.Image],
    pre: Steps,
    max_pixels: int,
    budget: PixelBudget | None,
) -> list[np.ndarray]:
    pixels: list[np.ndarray] = []
    try:
        for (filename, _), img in zip(files, images, strict=True):
            try:
                pixels.append(decode_opened(img, pre, max_pixels, budget))
            except ServiceError as exc:
                raise named(filename, exc) from None
    finally:
        for img in images[len(pixels) :]:
            img.close()
    return pixels


def open_and_decode(
    files: list[tuple[str, bytes]], pre: Steps, max_pixels: int, budget: PixelBudget
) -> list[np.ndarray]:
    return decode_all(files, open_all(files, pre, max_pixels), pre, max_pixels, budget)


class TooLargeForLane(Exception):
    """An image of the request is too large to decode on an inference lane."""


def open_and_decode_small(
    files: list[tuple[str, bytes]], pre: Steps, max_pixels: int
) -> list[np.ndarray]:
    """``open_and_decode`` for an inference lane: every image at most ``LANE_DECODE_PIXELS``
    at the size it decodes to (``full_size_pixels``), which then needs no pixel budget: a lane
    never waits for other requests' decodes. ``TooLargeForLane`` otherwise."""
    images = open_all(files, pre, max_pixels)
    if any(full_size_pixels(img) > LANE_DECODE_PIXELS for img in images):
        for img in images:
            img.close()
        raise TooLargeForLane
    return decode_all(files, images, pre, max_pixels, None)
