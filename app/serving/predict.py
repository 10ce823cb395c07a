"""Prediction and embeddings on uploaded images, with exactly the evaluation preprocessing of
the model, through the model's batcher.

Runs in the request's worker thread (the routes are plain ``def``): decoding and preprocessing
here, in parallel across requests; the forward pass on the model's inference thread, batched
with whatever other requests are waiting.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from app.engine.inference import top_k as top_k_rows
from app.errors import InvalidInput, PayloadTooLarge, ServiceError
from app.observability.metrics import PREDICTION_IMAGES, PREDICTION_LATENCY
from app.serving.batcher import Batcher, Kind
from app.serving.cache import ModelCache
from app.serving.decode import decode_upload

__all__ = ["decode_upload", "embed_uploads", "predict_uploads"]


def _check_total_pixels(files: list[tuple[str, bytes]], budget: int) -> None:
    """All images of one request together may hold at most ``budget`` pixels (the one-image
    limit). Decoding is memory-bounded now (app.serving.decode), so this bounds the CPU time one
    request can ask for. Reading the headers costs no decoding."""
    total = 0
    for _, data in files:
        try:
            with Image.open(io.BytesIO(data)) as img:
                total += img.width * img.height
        except Exception:  # not an image: decoding below names the file and the reason
            continue
    if total > budget:
        raise PayloadTooLarge(
            f"the images of one request hold {total} pixels in all; the limit is {budget} "
            "(TRANSFERLAB_MAX_IMAGE_PIXELS): send fewer or smaller images per request",
            code="predict_too_large",
            details={"limit_pixels": budget, "pixels": total},
        )


def _check_files(files: list[tuple[str, bytes]], max_files: int, max_pixels: int) -> None:
    if not files:
        raise InvalidInput("send at least one image in the 'files' field", code="no_files")
    if len(files) > max_files:
        raise PayloadTooLarge(
            f"{len(files)} images in one request; the limit is {max_files}",
            code="too_many_files",
            details={"limit": max_files},
        )
    if len(files) > 1:  # one image is checked against the same limit when it is opened
        _check_total_pixels(files, max_pixels)


def _run(
    cache: ModelCache,
    model_id: str,
    artifact_dir: Path,
    files: list[tuple[str, bytes]],
    kind: Kind,
    max_pixels: int,
) -> tuple[Batcher, torch.Tensor]:
    batcher = cache.batcher(model_id, artifact_dir)
    pre = batcher.predictor.preprocessor
    # Every image is decoded before the request queues: one bad file fails the request before
    # any compute is spent, and the error names the file.
    pixels: list[np.ndarray] = []
    for filename, data in files:
        try:
            pixels.append(decode_upload(data, pre, max_pixels, cache.decode_budget))
        except ServiceError as exc:
            exc.details = {**exc.details, "filename": filename}
            exc.message = f"{filename}: {exc.message}"
            raise
    return batcher, cache.run(model_id, artifact_dir, kind, pixels, batcher=batcher)


def predict_uploads(
    cache: ModelCache,
    model_id: str,
    artifact_dir: Path,
    files: list[tuple[str, bytes]],
    *,
    top_k: int,
    max_files: int,
    max_pixels: int,
) -> list[tuple[str, list[tuple[str, float]]]]:
    _check_files(files, max_files, max_pixels)
    start = time.perf_counter()
    batcher, probabilities = _run(cache, model_id, artifact_dir, files, "probabilities", max_pixels)
    results = top_k_rows(probabilities, batcher.predictor.card.class_names, top_k)
    # Successful requests only: a rejected one says nothing about serving speed.
    PREDICTION_LATENCY.observe(time.perf_counter() - start)
    PREDICTION_IMAGES.observe(len(files))
    return [(name, scores) for (name, _), scores in zip(files, results, strict=True)]


def embed_uploads(
    cache: ModelCache,
    model_id: str,
    artifact_dir: Path,
    files: list[tuple[str, bytes]],
    *,
    max_files: int,
    max_pixels: int,
) -> list[tuple[str, list[float]]]:
    """The pre-logits vector of each image (what the classifier reads), float32."""
    _check_files(files, max_files, max_pixels)
    _, vectors = _run(cache, model_id, artifact_dir, files, "embeddings", max_pixels)
    rows = vectors.tolist()
    return [(name, row) for (name, _), row in zip(files, rows, strict=True)]
