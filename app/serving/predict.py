"""Prediction and embeddings on uploaded images, with exactly the evaluation preprocessing of
the model, through the model's batcher.

Runs on the event loop and never blocks it for long: the forward pass runs on the model's
inference thread (the request awaits its future), loading a model runs on a worker thread, and
so does decoding, except for requests whose images are small enough to decode on the loop in
about a millisecond (``INLINE_DECODE_PIXELS``): for those a trip to a worker thread and back
would cost more than the decoding.

NOTE bench/serve.py measured why (resnet10t at 64 px, onnx, 32 clients of one 28 x 28 PNG each):
with the route a plain ``def``, a prediction went through FastAPI's threadpool four times (the
session's enter and exit, the model lookup, the route) and then to the inference thread, and
py-spy (``--gil``) put the event loop at three quarters of the samples that held the GIL,
dependency solving and threadpool dispatch included. See README, Measured, Serving.
"""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import numpy as np
from PIL import Image
from starlette.concurrency import run_in_threadpool

from app.engine.inference import Preprocessor
from app.errors import InvalidInput, PayloadTooLarge, ServiceError
from app.observability.metrics import PREDICTION_IMAGES, PREDICTION_LATENCY
from app.serving.batcher import Batcher, BatcherClosed, Kind
from app.serving.cache import ModelCache
from app.serving.decode import PixelBudget, decode_upload

__all__ = ["decode_upload", "embed_uploads", "predict_uploads"]

# A request whose images hold at most this many pixels in all is decoded on the event loop:
# 128 x 128 decodes and preprocesses in 0.3-1.0 ms here (PNG or JPEG, to 64 or 112 px).
INLINE_DECODE_PIXELS = 128 * 128


def _total_pixels(files: list[tuple[str, bytes]]) -> int:
    """The pixels of a request's images in all, from their headers (no decoding); an unreadable
    header counts 0, and decoding then names the file and the reason."""
    total = 0
    for _, data in files:
        try:
            with Image.open(io.BytesIO(data)) as img:
                total += img.width * img.height
        except Exception:
            continue
    return total


def _check_files(files: list[tuple[str, bytes]], max_files: int, max_pixels: int) -> int:
    """The request's pixels in all. All images of one request together may hold at most
    ``max_pixels`` (the one-image limit, against which a lone image is checked when it is
    opened). Decoding is memory-bounded (app.serving.decode), so this bounds the CPU time one
    request can ask for."""
    if not files:
        raise InvalidInput("send at least one image in the 'files' field", code="no_files")
    if len(files) > max_files:
        raise PayloadTooLarge(
            f"{len(files)} images in one request; the limit is {max_files}",
            code="too_many_files",
            details={"limit": max_files},
        )
    total = _total_pixels(files)
    if len(files) > 1 and total > max_pixels:
        raise PayloadTooLarge(
            f"the images of one request hold {total} pixels in all; the limit is {max_pixels} "
            "(TRANSFERLAB_MAX_IMAGE_PIXELS): send fewer or smaller images per request",
            code="predict_too_large",
            details={"limit_pixels": max_pixels, "pixels": total},
        )
    return total


def _decode_all(
    files: list[tuple[str, bytes]], pre: Preprocessor, max_pixels: int, budget: PixelBudget
) -> list[np.ndarray]:
    # Every image is decoded before the request queues: one bad file fails the request before
    # any compute is spent, and the error names the file.
    pixels: list[np.ndarray] = []
    for filename, data in files:
        try:
            pixels.append(decode_upload(data, pre, max_pixels, budget))
        except ServiceError as exc:
            exc.details = {**exc.details, "filename": filename}
            exc.message = f"{filename}: {exc.message}"
            raise
    return pixels


async def _run(
    cache: ModelCache,
    model_id: str,
    artifact_dir: Path,
    files: list[tuple[str, bytes]],
    kind: Kind,
    max_files: int,
    max_pixels: int,
) -> tuple[Batcher, np.ndarray]:
    pixel_count = _check_files(files, max_files, max_pixels)
    batcher = cache.loaded(model_id)
    if batcher is None:
        batcher = await run_in_threadpool(cache.batcher, model_id, artifact_dir)
    pre = batcher.predictor.preprocessor
    if pixel_count <= INLINE_DECODE_PIXELS:
        pixels = _decode_all(files, pre, max_pixels, cache.decode_budget)
    else:
        pixels = await run_in_threadpool(_decode_all, files, pre, max_pixels, cache.decode_budget)
    for _ in range(3):
        try:
            return batcher, await asyncio.wrap_future(batcher.submit(kind, pixels))
        except BatcherClosed:  # evicted since the lookup: load it again
            batcher = await run_in_threadpool(cache.batcher, model_id, artifact_dir)
    raise RuntimeError(f"model {model_id} was evicted three times while a request waited")


def top_k_rows(
    probabilities: np.ndarray, class_names: tuple[str, ...] | list[str], k: int
) -> list[list[tuple[str, float]]]:
    """Top-k (class name, probability) per row, most likely first (numpy: no torch on the
    event loop)."""
    k = max(1, min(int(k), len(class_names)))
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    rows = np.take_along_axis(probabilities, order, axis=1)
    return [
        [(class_names[i], p) for p, i in zip(row_p, row_i, strict=True)]
        for row_p, row_i in zip(rows.tolist(), order.tolist(), strict=True)
    ]


async def predict_uploads(
    cache: ModelCache,
    model_id: str,
    artifact_dir: Path,
    files: list[tuple[str, bytes]],
    *,
    top_k: int,
    max_files: int,
    max_pixels: int,
) -> list[tuple[str, list[tuple[str, float]]]]:
    start = time.perf_counter()
    batcher, probabilities = await _run(
        cache, model_id, artifact_dir, files, "probabilities", max_files, max_pixels
    )
    results = top_k_rows(probabilities, batcher.predictor.card.class_names, top_k)
    # Successful requests only: a rejected one says nothing about serving speed.
    PREDICTION_LATENCY.observe(time.perf_counter() - start)
    PREDICTION_IMAGES.observe(len(files))
    return [(name, scores) for (name, _), scores in zip(files, results, strict=True)]


async def embed_uploads(
    cache: ModelCache,
    model_id: str,
    artifact_dir: Path,
    files: list[tuple[str, bytes]],
    *,
    max_files: int,
    max_pixels: int,
) -> list[tuple[str, list[float]]]:
    """The pre-logits vector of each image (what the classifier reads), float32."""
    _, vectors = await _run(
        cache, model_id, artifact_dir, files, "embeddings", max_files, max_pixels
    )
    rows = vectors.tolist()
    return [(name, row) for (name, _), row in zip(files, rows, strict=True)]
