"""Adaptive batching across requests: inference threads (lanes) per loaded model.

Requests decode and preprocess their own images, then queue model-sized pixels here and get a
future. The model's inference thread takes everything that is waiting, up to ``max_batch``
images, runs one forward pass, and hands each request its rows. It never waits for a batch to
fill: a lone request runs at once, and batches grow by themselves while a forward pass is
running and requests pile up. Under overload the queue does not grow past ``max_queued`` images:
a request that would pass it gets 503 ``overloaded`` with a ``Retry-After`` instead.

A model has as many inference threads as its backend has lanes (``app.serving.backends``): with
one lane it runs one forward pass at a time, on every core; with several, an idle lane takes its
share of what waits (the queue divided among the idle lanes), so passes run side by side, one
core each. A pass that runs alone, a lone request on an idle model, is ``wide``: it may use
every core, so a single request is as fast as the model can be.

Torch never runs on the event loop: the API awaits the future (``asyncio.wrap_future``), so a
prediction costs one hand-off to an inference thread and one back. A request whose client went
away is cancelled; a pass skips it if it has not started yet.
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
    future: Future[np.ndarray] = field(default_factory=Future)


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
        self._rate = 0.0  # images/s of one lane's recent passes (an EMA), for Retry-After
        # Passes that may run at once (the backend's lanes), and how many run now.
        self.lanes = predictor.lanes
        self._running = 0
        # Embeddings run on the eager model, whose threads are process-wide: one pass at a time
        # whatever the lanes.
        self._eager = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, name=f"inference-{name}#{lane}", daemon=True)
            for lane in range(self.lanes)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, kind: Kind, pixels: Sequence[np.ndarray]) -> Future[np.ndarray]:
        """Queue one request's images; the future gives their rows (float32), in order.

        Never blocks: ``Overloaded`` or ``BatcherClosed`` at once, or a future. Cancel the
        future to withdraw the request.
        """
        request = _Request(kind, pixels)
        with self._cond:
            if self._closed:
                raise BatcherClosed(self.name)
            # A request larger than the whole queue is let in when the queue is empty.
            if self._queued_images and self._queued_images + len(pixels) > self.max_queued:
                INFERENCE_QUEUE_REFUSED.inc()
                rate = self._rate * self.lanes
                wait = self._queued_images / rate if rate else 1.0
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

    def close(self, timeout: float = 30.0) -> None:
        """Answer what is queued, then stop the threads."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

    @property
    def threads(self) -> list[threading.Thread]:
        return list(self._threads)

    @property
    def queued_images(self) -> int:
        return self._queued_images

    def _take(self) -> tuple[list[_Request], bool] | None:
        """The next batch and whether it runs ``wide`` (alone: no other pass, nothing else
        waiting), or None once closed and drained."""
        with self._cond:
            self._cond.wait_for(lambda: self._queue or self._closed)
            if not self._queue:
                return None
            # An idle lane takes its share of what waits and leaves the rest to the others.
            share = math.ceil(self._queued_images / (self.lanes - self._running))
            limit = min(self.max_batch, max(1, share))
            taken = [self._queue.popleft()]
            size = len(taken[0].pixels)
            while self._queue and size + len(self._queue[0].pixels) <= limit:
                request = self._queue.popleft()
                taken.append(request)
                size += len(request.pixels)
            self._queued_images -= size
            wide = self._running == 0 and not self._queue
            self._running += 1
            if self._queue:
                self._cond.notify()  # another lane, for the rest
        # From here on a request can no longer be cancelled; one cancelled before is skipped.
        return [r for r in taken if r.future.set_running_or_notify_cancel()], wide

    def _run(self) -> None:
        while (next_batch := self._take()) is not None:
            taken, wide = next_batch
            try:
                for kind in ("probabilities", "embeddings"):
                    group = [r for r in taken if r.kind == kind]
                    if group:
                        self._forward(kind, group, wide)
            finally:
                with self._cond:
                    self._running -= 1

    def _forward(self, kind: Kind, group: list[_Request], wide: bool) -> None:
        start = time.perf_counter()
        try:
            pre = self.predictor.preprocessor
            x = pre.batch([p for r in group for p in r.pixels])
            if kind == "probabilities":
                out = self.predictor.probabilities(x, wide).numpy()
            else:
                with self._eager:
                    out = self.predictor.embeddings(x).numpy()
        except Exception as exc:  # the requests get the error; the thread lives on
            log.exception("inference failed for model %s", self.name)
            for r in group:
                r.future.set_exception(exc)
            return
        n = len(out)
        rate = n / max(time.perf_counter() - start, 1e-6)
        with self._cond:  # lanes finish side by side
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
