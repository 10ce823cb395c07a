"""Adaptive batching across requests: one inference thread per loaded model.

Request threads decode and preprocess their own images (in parallel: Pillow releases the GIL
while it decodes and resizes), then queue model-sized pixels here and wait. The model's
inference thread takes everything that is waiting, up to ``max_batch`` images, runs one forward
pass, and hands each request its rows. It never waits for a batch to fill: a lone request runs
at once, and batches grow by themselves while a forward pass is running and requests pile up.
Under overload the queue does not grow past ``max_queued`` images: a request that would pass it
gets 503 ``overloaded`` with a ``Retry-After`` instead.

Torch never runs on the event loop. A lone request on an idle model runs its forward pass on
its own worker thread instead (``run``), so it pays no hand-off; either way one model runs one
forward pass at a time, so its passes never compete with each other for the cores.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from app.engine.inference import Predictor
from app.errors import ServiceError
from app.observability.metrics import INFERENCE_BATCH_IMAGES, INFERENCE_QUEUE_REFUSED

log = logging.getLogger(__name__)

Kind = Literal["probabilities", "embeddings"]


class Overloaded(ServiceError):
    status_code = 503
    code = "overloaded"


class BatcherClosed(RuntimeError):
    """The batcher was closed (its model left the cache); ask the cache for the current one."""


@dataclass
class _Request:
    kind: Kind
    pixels: Sequence[np.ndarray]
    future: Future[torch.Tensor] = field(default_factory=Future)


@dataclass
class BatchStats:
    """Counts since start, for tests and the README (Prometheus has the histogram)."""

    batches: int = 0
    images: int = 0
    largest: int = 0
    sizes: deque[int] = field(default_factory=lambda: deque(maxlen=1000))  # the latest


class Batcher:
    def __init__(
        self, predictor: Predictor, *, name: str, max_batch: int = 64, max_queued: int = 256
    ) -> None:
        self.predictor = predictor
        self.name = name
        self.max_batch = max(1, max_batch)
        self.max_queued = max(1, max_queued)
        self.stats = BatchStats()
        self._queue: deque[_Request] = deque()
        self._queued_images = 0
        self._cond = threading.Condition()
        self._closed = False
        self._busy = False  # a forward pass is running (on the inference thread or inline)
        self._rate = 0.0  # images/s of recent forward passes (an EMA), for Retry-After
        self._thread = threading.Thread(target=self._run, name=f"inference-{name}", daemon=True)
        self._thread.start()

    def submit(self, kind: Kind, pixels: Sequence[np.ndarray]) -> Future[torch.Tensor]:
        """Queue one request's images; the future gives their rows, in order."""
        request = _Request(kind, pixels)
        with self._cond:
            if self._closed:
                raise BatcherClosed(self.name)
            # A request larger than the whole queue is let in when the queue is empty.
            if self._queued_images and self._queued_images + len(pixels) > self.max_queued:
                INFERENCE_QUEUE_REFUSED.inc()
                wait = self._queued_images / self._rate if self._rate else 1.0
                retry_after = max(1, math.ceil(wait))
                raise Overloaded(
                    f"the model has {self._queued_images} images waiting, the most it queues "
                    f"is {self.max_queued} (TRANSFERLAB_PREDICT_MAX_QUEUED); retry in "
                    f"{retry_after} s",
                    details={"queued_images": self._queued_images, "retry_after_s": retry_after},
                    headers={"Retry-After": str(retry_after)},
                )
            self._queue.append(request)
            self._queued_images += len(pixels)
            self._cond.notify()
        return request.future

    def run(self, kind: Kind, pixels: Sequence[np.ndarray]) -> torch.Tensor:
        """The rows of ``pixels``; blocks, so call it from a worker thread, never the event loop.

        When the model is idle and nothing waits, the calling thread runs the forward pass
        itself, with the model claimed as the inference thread would claim it: a lone request
        then costs no hand-off to the inference thread and back. Requests that arrive meanwhile
        queue, and the inference thread batches them as soon as this pass ends.
        """
        with self._cond:
            inline = not self._busy and not self._queue and not self._closed
            self._busy = self._busy or inline
        if not inline:
            return self.submit(kind, pixels).result()
        request = _Request(kind, pixels)
        try:
            self._forward(kind, [request])
        finally:
            self._release()
        return request.future.result()

    def _release(self) -> None:
        with self._cond:
            self._busy = False
            self._cond.notify()

    def close(self, timeout: float = 30.0) -> None:
        """Answer what is queued, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def queued_images(self) -> int:
        return self._queued_images

    def _take(self) -> list[_Request] | None:
        with self._cond:
            self._cond.wait_for(
                lambda: (self._queue and not self._busy) or (self._closed and not self._queue)
            )
            if not self._queue:
                return None  # closed and drained
            self._busy = True
            taken = [self._queue.popleft()]
            size = len(taken[0].pixels)
            while self._queue and size + len(self._queue[0].pixels) <= self.max_batch:
                request = self._queue.popleft()
                taken.append(request)
                size += len(request.pixels)
            self._queued_images -= size
            return taken

    def _run(self) -> None:
        while (taken := self._take()) is not None:
            try:
                for kind in ("probabilities", "embeddings"):
                    group = [r for r in taken if r.kind == kind]
                    if group:
                        self._forward(kind, group)
            finally:
                self._release()

    def _forward(self, kind: Kind, group: list[_Request]) -> None:
        start = time.perf_counter()
        try:
            pre = self.predictor.preprocessor
            x = pre.batch([p for r in group for p in r.pixels])
            out = (
                self.predictor.probabilities(x)
                if kind == "probabilities"
                else self.predictor.embeddings(x)
            )
        except Exception as exc:  # the requests get the error; the thread lives on
            log.exception("inference failed for model %s", self.name)
            for r in group:
                r.future.set_exception(exc)
            return
        n = len(out)
        rate = n / max(time.perf_counter() - start, 1e-6)
        self._rate = rate if not self._rate else 0.8 * self._rate + 0.2 * rate
        stats = self.stats
        stats.batches += 1
        stats.images += n
        stats.largest = max(stats.largest, n)
        stats.sizes.append(n)
        INFERENCE_BATCH_IMAGES.observe(n)
        first = 0
        for r in group:
            r.future.set_result(out[first : first + len(r.pixels)])
            first += len(r.pixels)
