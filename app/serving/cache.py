"""Loaded models, kept in the API process so a prediction does not reload weights each time.

Each loaded model has its batcher (its inference threads, ``app.serving.batcher``); the cache
owns them, closes a model's batcher when the model is evicted, and all of them at shutdown
(the app's lifespan). The decode budget is process-wide, so it lives here too.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from app.cpu import usable_cpus
from app.engine import load_artifact
from app.engine.inference import Predictor
from app.errors import NotFound, ServiceError
from app.observability.metrics import MODEL_CACHE_HITS, MODEL_CACHE_MISSES
from app.pixels import ResizeCrop
from app.serving.backends import Backend, OnnxBackend, create_backend
from app.serving.batcher import Batcher
from app.serving.decode import PixelBudget
from app.serving.lanes import LaneProcesses


class ModelDeleted(NotFound):
    code = "model_not_found"


class ShuttingDown(ServiceError):
    status_code = 503
    code = "shutting_down"


class ModelCache:
    """A small LRU of batchers by model version id. Versions are immutable, so no staleness."""

    def __init__(
        self,
        capacity: int,
        *,
        backend: str = "torch",
        max_batch: int = 64,
        max_queued: int = 256,
        decode_budget_pixels: int = 2**24,
        channels_last: bool = True,
        lanes: int = 1,
        lane_processes: bool = True,
        max_image_pixels: int = 89_478_485,
    ) -> None:
        self.capacity = max(1, capacity)
        self.backend_kind = backend
        self.max_batch = max_batch
        self.max_queued = max_queued
        self.channels_last = channels_last
        self.lanes = lanes
        self.lane_processes = lane_processes
        self.max_image_pixels = max_image_pixels
        self.decode_budget = PixelBudget(decode_budget_pixels)
        self._items: OrderedDict[str, Batcher] = OrderedDict()
        self._lock = threading.Lock()  # the items; held only for dictionary operations
        self._load_lock = threading.Lock()
        self._deleted: set[str] = set()  # version ids are never reused
        self._closed = False
        self.loads = 0  # how many times weights were read from disk (for tests and metrics)

    def loaded(self, key: str) -> Batcher | None:
        """The model's batcher if it is loaded (a hit), else None; never blocks on a load, so
        the event loop may call it."""
        with self._lock:
            return self._hit(key)

    def batcher(self, key: str, artifact_dir: Path) -> Batcher:
        """The model's batcher, loading the model on first use (counted as a hit or a miss).
        Loading reads weights from disk: call it from a worker thread, not the event loop."""
        with self._lock:
            if (hit := self._hit(key)) is not None:
                return hit
        # One load at a time, outside the lookup lock (so ``loaded`` never waits for a load):
        # two requests for a cold model load it once, and a laptop never holds more than
        # `capacity` models plus the one being loaded.
        with self._load_lock:
            with self._lock:
                if (hit := self._hit(key)) is not None:
                    return hit  # loaded while this request waited for the load lock
            MODEL_CACHE_MISSES.inc()
            model, card = load_artifact(artifact_dir)
            self.loads += 1
            batcher = Batcher(
                Predictor(
                    model,
                    card,
                    channels_last=self.channels_last,
                    logits=_onnx_or_none(
                        create_backend(self.backend_kind, model, artifact_dir, self.lanes)
                    ),
                ),
                name=key,
                max_batch=self.max_batch,
                max_queued=self.max_queued,
            )
            try:
                if self.lane_processes:
                    batcher.processes = self._lane_processes(key, batcher.predictor)
                logits = batcher.predictor.logits
                if batcher.processes is None and isinstance(logits, OnnxBackend):
                    logits.load()
            except Exception:
                batcher.close(timeout=0)
                raise
            with self._lock:
                if key in self._deleted or self._closed:  # deleted or shut down while it loaded
                    batcher.close(timeout=0)
                    if self._closed:
                        raise ShuttingDown("the API is shutting down; retry on another instance")
                    raise ModelDeleted(f"model version {key} was deleted", details={"id": key})
                self._items[key] = batcher
                while len(self._items) > self.capacity:
                    # Requests already queued on it are answered before its thread stops.
                    self._items.popitem(last=False)[1].close(timeout=0)
            return batcher

    def _lane_processes(self, key: str, predictor: Predictor) -> LaneProcesses | None:
        """Lane processes for an onnx model whose preprocessing they can run without torch
        (timm's eval transform: ``ResizeCrop``); None for any other."""
        backend, pre = predictor.logits, predictor.preprocessor
        if not isinstance(backend, OnnxBackend) or not isinstance(pre.pil_steps, ResizeCrop):
            return None
        config = {
            "path": str(backend.path),
            "threads": backend.lane_threads,
            "wide_threads": usable_cpus(),
            "mean": pre.mean.flatten().tolist(),
            "std": pre.std.flatten().tolist(),
            "resize_crop": pre.pil_steps.spec(),
            "decode_side": pre.decode_side,
        }
        return LaneProcesses(
            config,
            name=key,
            lanes=backend.lanes,
            max_pixels=self.max_image_pixels,
            max_batch=self.max_batch,
            max_queued=self.max_queued,
        )

    def _hit(self, key: str) -> Batcher | None:
        if key in self._deleted:
            raise ModelDeleted(f"model version {key} was deleted", details={"id": key})
        batcher = self._items.get(key)
        if batcher is not None:
            self._items.move_to_end(key)
            MODEL_CACHE_HITS.inc()
        return batcher

    def forget(self, key: str) -> None:
        """Drop a version (deleted): its weights are gone from disk. Requests already queued on
        its batcher are answered before its thread stops; a request that resolved the version
        before the delete gets 404 rather than loading it back."""
        with self._lock:
            self._deleted.add(key)
            batcher = self._items.pop(key, None)
        if batcher is not None:
            batcher.close(timeout=0)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            batchers = list(self._items.values())
            self._items.clear()
        for batcher in batchers:
            batcher.close()

    def __len__(self) -> int:
        return len(self._items)


def _onnx_or_none(backend: Backend) -> Backend | None:
    # Eager torch runs through the predictor's own path (channels_last input, measured in
    # bench/serve.py); only another runtime replaces it.
    return None if backend.name == "torch" else backend
