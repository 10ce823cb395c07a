"""Prediction and embeddings on uploaded images, with exactly the evaluation preprocessing of
the model, through the model's batcher.

Runs on the event loop and never blocks it: loading a model, and opening and decoding a
request's images (one trip to a worker thread for both), run on worker threads; the forward pass
runs on one of the model's inference threads, and the request awaits its future.

NOTE opening and decoding stay off the loop even for tiny images: reading a PNG's header
unpacks its text chunks (up to 64 MB per image: a 66 KB PNG of 63 zTXt chunks took 0.23 s), and
a decode may wait for the process-wide pixel budget or for the lock a GIF decode holds. A version
that decoded requests of at most 128 x 128 pixels on the loop saved that trip (bench/serve.py);
an attack on it stalled every request of the process.

NOTE bench/serve.py measured why the routes are async (resnet10t at 64 px, onnx, 32 clients of
one 28 x 28 PNG each): with the route a plain ``def``, a prediction went through FastAPI's
threadpool four times (the session's enter and exit, the model lookup, the route) and then to
the inference thread, and py-spy (``--gil``) put the event loop at three quarters of the samples
that held the GIL, dependency solving and threadpool dispatch included. See README, Measured,
Serving.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
from PIL import Image
from starlette.concurrency import run_in_threadpool

from app.engine.inference import Preprocessor
from app.engine.inference import top_k as top_k_rows
from app.errors import InvalidInput, PayloadTooLarge, ServiceError
from app.observability.metrics import PREDICTION_IMAGES, PREDICTION_LATENCY
from app.serving.batcher import Batcher, BatcherClosed, Kind
from app.serving.cache import ModelCache
from app.serving.decode import PixelBudget, decode_opened, decode_upload, open_upload

__all__ = ["decode_upload", "embed_uploads", "predict_uploads"]


def _check_count(files: list[tuple[str, bytes]], max_files: int) -> None:
    if not files:
        raise InvalidInput("send at least one image in the 'files' field", code="no_files")
    if len(files) > max_files:
        raise PayloadTooLarge(
            f"{len(files)} images in one request; the limit is {max_files}",
            code="too_many_files",
            details={"limit": max_files},
        )


def _named(filename: str, exc: ServiceError) -> ServiceError:
    exc.details = {**exc.details, "filename": filename}
    exc.message = f"{filename}: {exc.message}"
    return exc


def _open_all(
    files: list[tuple[str, bytes]], pre: Preprocessor, max_pixels: int
) -> list[Image.Image]:
    """Every image opened (headers read and checked, nothing decoded), before the request
    spends any compute: one bad file fails the request, and the error names the file. All the
    images of one request together may hold at most ``max_pixels`` (the one-image limit):
    decoding is memory-bounded (app.serving.decode), so this bounds the CPU time one request
    can ask for."""
    images: list[Image.Image] = []
    total = 0
    try:
        for filename, data in files:
            try:
                img, declared = open_upload(data, pre, max_pixels)
            except ServiceError as exc:
                raise _named(filename, exc) from None
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


def _decode_all(
    files: list[tuple[str, bytes]],
    images: list[Image.Image],
    pre: Preprocessor,
    max_pixels: int,
    budget: PixelBudget,
) -> list[np.ndarray]:
    pixels: list[np.ndarray] = []
    try:
        for (filename, _), img in zip(files, images, strict=True):
            try:
                pixels.append(decode_opened(img, pre, max_pixels, budget))
            except ServiceError as exc:
                raise _named(filename, exc) from None
    finally:
        for img in images[len(pixels) :]:
            img.close()
    return pixels


def _open_and_decode(
    files: list[tuple[str, bytes]], pre: Preprocessor, max_pixels: int, budget: PixelBudget
) -> list[np.ndarray]:
    return _decode_all(files, _open_all(files, pre, max_pixels), pre, max_pixels, budget)


async def _run(
    cache: ModelCache,
    model_id: str,
    artifact_dir: Path,
    files: list[tuple[str, bytes]],
    kind: Kind,
    max_files: int,
    max_pixels: int,
) -> tuple[Batcher, np.ndarray]:
    _check_count(files, max_files)
    batcher = cache.loaded(model_id)
    if batcher is None:
        batcher = await run_in_threadpool(cache.batcher, model_id, artifact_dir)
    pixels = await run_in_threadpool(
        _open_and_decode, files, batcher.predictor.preprocessor, max_pixels, cache.decode_budget
    )
    for _ in range(3):
        try:
            return batcher, await asyncio.wrap_future(batcher.submit(kind, pixels))
        except BatcherClosed:  # evicted since the lookup: load it again
            batcher = await run_in_threadpool(cache.batcher, model_id, artifact_dir)
    raise RuntimeError(f"model {model_id} was evicted three times while a request waited")


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
