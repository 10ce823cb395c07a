"""Prediction on uploaded images with exactly the evaluation preprocessing of the model."""

from __future__ import annotations

import io
import time
from pathlib import Path

from PIL import Image

from app.engine import predict_with
from app.errors import InvalidInput, PayloadTooLarge, ServiceError
from app.observability.metrics import PREDICTION_IMAGES, PREDICTION_LATENCY
from app.serving.cache import ModelCache
from app.storage.images import open_image


def _check_total_pixels(files: list[tuple[str, bytes]], budget: int) -> None:
    """All images of one request together may hold at most ``budget`` pixels (the one-image
    limit): every image is decoded before inference, so this bounds a request's memory. A 78 KB
    PNG can hold 81 M pixels; eight of them raised the API's memory by 1 GB before this check.
    Reading the headers costs no decoding."""
    total = 0
    for _, data in files:
        try:
            with Image.open(io.BytesIO(data)) as img:
                total += img.width * img.height
        except Exception:  # not an image: open_image() below names the file and the reason
            continue
    if total > budget:
        raise PayloadTooLarge(
            f"the images of one request hold {total} pixels in all; the limit is {budget} "
            "(TRANSFERLAB_MAX_IMAGE_PIXELS): send fewer or smaller images per request",
            code="predict_too_large",
            details={"limit_pixels": budget, "pixels": total},
        )


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
    if not files:
        raise InvalidInput("send at least one image in the 'files' field", code="no_files")
    if len(files) > max_files:
        raise PayloadTooLarge(
            f"{len(files)} images in one request; the limit is {max_files}",
            code="too_many_files",
            details={"limit": max_files},
        )
    _check_total_pixels(files, max_pixels)
    start = time.perf_counter()
    # Decode every image first: one bad file fails the request before any compute is spent,
    # and the error names the file.
    images = []
    for filename, data in files:
        try:
            images.append(open_image(data, max_pixels))
        except ServiceError as exc:
            exc.details = {**exc.details, "filename": filename}
            exc.message = f"{filename}: {exc.message}"
            raise
    backend, card = cache.backend(model_id, artifact_dir)
    results = predict_with(backend.forward, card, images, top_k=top_k)
    # Successful requests only: a rejected one says nothing about serving speed.
    PREDICTION_LATENCY.observe(time.perf_counter() - start)
    PREDICTION_IMAGES.observe(len(images))
    return [(name, scores) for (name, _), scores in zip(files, results, strict=True)]
