"""Prediction and embeddings on uploaded images, with exactly the evaluation preprocessing of
the model, through the model's batcher.

Runs on the event loop and never blocks it: loading a model runs on a worker thread; a request's
images are opened and decoded off the loop, and the forward pass runs in one of the model's
lanes while the request awaits it: an onnx model's predictions in lane processes
(app.serving.lanes), anything else on the inference threads of its batcher
(app.serving.batcher).

Where the images are decoded. A small request (uploads of at most ``LANE_DECODE_BYTES``, each
image at most ``LANE_DECODE_PIXELS`` at the size it decodes to) is queued still encoded, and the
lane that takes it opens and decodes it just before the pass: the request makes one trip off the
loop instead of two. Any other request is decoded on a worker thread first, under the
process-wide pixel budget; a request that passes the byte test but opens to too many pixels (a
flat PNG compresses 1,000:1) goes back to a worker thread from the lane. So a lane never waits
for the budget, and the most one request can hold a lane's pass is what 32 KB of uploads takes
to open and decode at 1 M pixels an image. A bad image fails its own request, not the pass.

NOTE bench/serve.py measured the lane decode against decoding every request on a worker thread,
with thread lanes (resnet10t at 64 px, onnx, 32 clients of one 28 x 28 PNG each, 6 alternating
rounds): 381 against 344 images/s, the API's CPU per image 3.9 against 4.5 ms (medians; the
worker-thread trip cost the event loop about a tenth of its time: waking a worker thread, then
the result's way back); with torch 300 against 271. See README, Measured, Serving.

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
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
from starlette.concurrency import run_in_threadpool

from app.engine.inference import top_k as top_k_rows
from app.errors import InvalidInput, PayloadTooLarge
from app.observability.metrics import PREDICTION_IMAGES, PREDICTION_LATENCY
from app.serving.batcher import Batcher, BatcherClosed, Encoded, Kind
from app.serving.cache import ModelCache
from app.serving.decode import (
    LANE_DECODE_BYTES,
    PixelBudget,
    TooLargeForLane,
    decode_upload,
    open_and_decode,
    open_and_decode_small,
)

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
    # Pixels after a worker thread decoded them; None: still encoded, for a lane to decode.
    pixels: list[np.ndarray] | None = None
    if sum(len(data) for _, data in files) > LANE_DECODE_BYTES:
        pixels = await _decode_on_worker(batcher, files, max_pixels, cache.decode_budget)
    for _ in range(3):
        try:
            return batcher, await _forward(batcher, kind, files, pixels, max_pixels)
        except BatcherClosed:  # evicted since the lookup: load it again
            batcher = await run_in_threadpool(cache.batcher, model_id, artifact_dir)
        except TooLargeForLane:  # few bytes, many pixels: decode on a worker thread
            pixels = await _decode_on_worker(batcher, files, max_pixels, cache.decode_budget)
    raise RuntimeError(f"model {model_id}: a request gave up after three tries")


async def _decode_on_worker(
    batcher: Batcher, files: list[tuple[str, bytes]], max_pixels: int, budget: PixelBudget
) -> list[np.ndarray]:
    pre = batcher.predictor.preprocessor
    return await run_in_threadpool(open_and_decode, files, pre, max_pixels, budget)


async def _forward(
    batcher: Batcher,
    kind: Kind,
    files: list[tuple[str, bytes]],
    pixels: list[np.ndarray] | None,
    max_pixels: int,
) -> np.ndarray:
    """The rows of the request's images from the model's lane processes (onnx predictions) or
    its batcher's threads; a lane decodes them when ``pixels`` is None."""
    processes = batcher.processes
    if kind == "probabilities" and processes is not None:
        if pixels is None:
            return await processes.predict_files(files)
        return await processes.predict_pixels(pixels)
    images: Sequence[np.ndarray] | Encoded = (
        pixels
        if pixels is not None
        else Encoded(
            len(files),
            partial(open_and_decode_small, files, batcher.predictor.preprocessor, max_pixels),
        )
    )
    return await asyncio.wrap_future(batcher.submit(kind, images))


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
