"""Loaded models, kept in the API process so a prediction does not reload weights each time."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from torch import nn

from app.engine import ModelCard, load_artifact
from app.observability.metrics import MODEL_CACHE_HITS, MODEL_CACHE_MISSES


class ModelCache:
    """A small LRU of (model, card) by model version id. Versions are immutable, so no staleness."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._items: OrderedDict[str, tuple[nn.Module, ModelCard]] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # how many times weights were read from disk (for tests and metrics)

    def get(self, key: str, artifact_dir: Path) -> tuple[nn.Module, ModelCard]:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                MODEL_CACHE_HITS.inc()
                return self._items[key]
            MODEL_CACHE_MISSES.inc()
            # Loading under the lock: two requests for a cold model load it once, and a laptop
            # never holds more than `capacity` models plus the one being loaded.
            item = load_artifact(artifact_dir)
            self.loads += 1
            self._items[key] = item
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
            return item

    def __len__(self) -> int:
        return len(self._items)
