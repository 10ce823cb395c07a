"""Loaded models, kept in the API process so a prediction does not reload weights each time."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from app.engine import ModelCard, load_artifact
from app.observability.metrics import MODEL_CACHE_HITS, MODEL_CACHE_MISSES
from app.serving.backends import Backend, create_backend


@dataclass(frozen=True)
class LoadedModel:
    model: nn.Module  # eager, always (embeddings, and versions without an ONNX export)
    card: ModelCard
    backend: Backend  # what runs predictions (TRANSFERLAB_SERVING_BACKEND)


class ModelCache:
    """A small LRU of loaded models by model version id. Versions are immutable, so no staleness."""

    def __init__(self, capacity: int, backend: str = "torch") -> None:
        self.capacity = max(1, capacity)
        self.backend_kind = backend
        self._items: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # how many times weights were read from disk (for tests and metrics)

    def load(self, key: str, artifact_dir: Path) -> LoadedModel:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                MODEL_CACHE_HITS.inc()
                return self._items[key]
            MODEL_CACHE_MISSES.inc()
            # Loading under the lock: two requests for a cold model load it once, and a laptop
            # never holds more than `capacity` models plus the one being loaded.
            model, card = load_artifact(artifact_dir)
            item = LoadedModel(model, card, create_backend(self.backend_kind, model, artifact_dir))
            self.loads += 1
            self._items[key] = item
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
            return item

    def get(self, key: str, artifact_dir: Path) -> tuple[nn.Module, ModelCard]:
        item = self.load(key, artifact_dir)
        return item.model, item.card

    def backend(self, key: str, artifact_dir: Path) -> tuple[Backend, ModelCard]:
        item = self.load(key, artifact_dir)
        return item.backend, item.card

    def forget(self, key: str) -> None:
        """Drop a version (deleted): its weights are gone from disk."""
        with self._lock:
            self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)
