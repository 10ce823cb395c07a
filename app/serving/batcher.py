"""Adaptive batching across requests: inference threads (lanes) per loaded model.

An onnx model's predictions do not come here: they run in lane processes
(``app.serving.lanes``), batched the same way by the event loop. This batcher serves the torch
backend, embeddings (from the eager model), preprocessing other than timm's resize and centre
crop, and everything when ``TRANSFERLAB_PREDICT_LANE_PROCESSES`` is false.

Requests queue their images here and get a future. The model's inference thread takes
everything that is waiting, up to ``max_batch`` images, runs one forward pass, and hands each
request its rows. It never waits for a batch to fill: a lone request runs at once, and batches
grow by themselves while a forward pass is running and requests pile up. Under overload the
queue does not grow past ``max_queued`` images: a request that would pass it gets 503
``overloaded`` with a ``Retry-After`` instead.

A request queues either model-sized pixels (decoded on a worker thread) or its images still
encoded (``Encoded``): the lane that takes it opens and decodes them just before the pass,
which saves the request a round trip through a worker thread (app.serving.predict says which
requests do that, and what it measured).

A model has as many inference threads as its backend has lanes (``app.serving.backends``): with
one lane it runs one forward pass at a time, on every core; with several, an idle lane takes its
share of what waits (the queue divided among the idle lanes), so passes run side by side, one
core each. A pass that runs alone, a lone request on an idle model, is ``wide``: it may use
every core, so a single request is as fast as the model can be.

Torch never runs on the event loop: the API awaits the future (``asyncio.wrap_future``). A
request whose client went away is cancelled; a pass skips it if it has not started yet.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, TypeVar

import numpy as np

from app.engine.inference import Predictor
from app.errors import ServiceError
from app.observability.metrics import INFERENCE_BATCH_IMAGES, INFERENCE_QUEUE_REFUSED

if TYPE_CHECKING:
    from app.serving.lanes import LaneProcesses

log = logging.getLogger(__name__)

Kind = Literal["probabilities", "embeddings"]


class Overloaded(ServiceError):
    status_code = 503
    code = "overloaded"


class BatcherClosed(RuntimeError):
    """The batcher was closed (its model left the cache); ask the cache for the current one."""


@dataclass(frozen=True)
class Encoded:
    """A request's images, not decoded yet: ``decode()`` gives their model-sized pixels or
    raises (a ``ServiceError`` for a bad image), on the lane that takes the request."""

    count: int
    decode: Callable[[], Sequence[np.ndarray]]


@dataclass
class _Request:
    kind: Kind
    count: int  # images
    images: Sequence[np.ndarray] | Encoded
    future: Future[np.ndarray] = field(default_factory=Future)
    pixels: Sequence[np.ndarray] = ()  # decoded, on the lane


@dataclass
class BatchStats:
    """Counts since start, for tests and the README (Prometheus has the histogram)."""

    batches: int = 0
    wide: int = 0  # passes that ran alone, on every core
    images: int = 0
    largest: int = 0
    sizes: deque[int] = field(default_factory=lambda: deque(maxlen=1000))  # the latest

    def record(self, images: int, wide: bool) -> None:
        self.batches += 1
        self.wide += wide
        self.images += images
        self.largest = max(self.largest, images)
        self.sizes.append(images)


class _Counted(Protocol):
    count: int  # images


R = TypeVar("R", bound=_Counted)


def take_share(
    queue: deque[R], queued: int, idle_lanes: int, max_batch: int
) -> tuple[list[R], int]:
    """An idle lane's share of what waits, and its images: whole requests in order, up to the
    queued images divided among the idle lanes (at least one request), at most ``max_batch``
    images unless the first request alone has more. The rest is left to the other lanes."""
    limit = min(max_batch, max(1, math.ceil(queued / idle_lanes)))
    taken = [queue.popleft()]
    size = taken[0].count
    while queue and size + queue[0].count <= limit:
        request = queue.popleft()
        taken.append(request)
        size += request.count
    return taken, size


def overloaded(queued: int, max_queued: int, rate: float) -> Overloaded:
    """The 503 for a request that would queue past ``max_queued`` images; ``rate``: the
    model's recent images/s, for Retry-After."""
    INFERENCE_QUEUE_REFUSED.inc()
    wait = queued / rate if rate else 1.0
    retry_after = max(1, math.ceil(wait))
    return Overloaded(
        f"the model has {queued} images waiting, the most it queues is {max_queued} "
        f"(TRANSFERLAB_PREDICT_MAX_QUEUED); retry in {retry_after} s",
        details={"queued_images": queued, "retry_after_s": retry_after},
        headers={"Retry-After": str(retry_after)},
    )


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
        # Predictions in lane processes instead (app.serving.lanes), set by the cache for onnx.
        self.processes: LaneProcesses | None = None
        self._threads = [
            threading.Thread(target=self._run, name=f"inference-{name}#{lane}", daemon=True)
            for lane in range(self.lanes)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, kind: Kind, images: Sequence[np.ndarray] | Encoded) -> Future[np.ndarray]:
        """Queue one request's images (pixels, or ``Encoded``); the future gives their rows
        (float32), in order, or the error of decoding them.

        Never blocks: ``Overloaded`` or ``BatcherClosed`` at once, or a future. Cancel the
        future to withdraw the request.
        """
        count = images.count if isinstance(images, Encoded) else len(images)
        request = _Request(kind, count, images)
        with self._cond:
            if self._closed:
                raise BatcherClosed(self.name)
            # A request larger than the whole queue is let in when the queue is empty.
            if self._queued_images and self._queued_images + count > self.max_queued:
                raise overloaded(self._queued_images, self.max_queued, self._rate * self.lanes)
            self._queue.append(request)
            self._queued_images += count
            self._cond.notify()
        return request.future

    def close(self, timeout: float = 30.0) -> None:
        """Answer what is queued, then stop the threads (and the lane processes)."""
        if self.processes is not None:
            self.processes.close()
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
            taken, size = take_share(
                self._queue, self._queued_images, self.lanes - self._running, self.max_batch
            )
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
        group = [r for r in group if _decoded(r)]
        if not group:
            return
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
            self.stats.record(n, wide)
        INFERENCE_BATCH_IMAGES.observe(n)
        first = 0
        for r in group:
            r.future.set_result(out[first : first + len(r.pixels)])
            first += len(r.pixels)


def _decoded(request: _Request) -> bool:
    """Decode the request's images if they came encoded; False (the request has its error) if
    one of them cannot be."""
    images = request.images
    if not isinstance(images, Encoded):
        request.pixels = images
        return True
    try:
        request.pixels = images.decode()
    except Exception as exc:  # a bad image fails its own request, not the batch
        request.future.set_exception(exc)
        return False
    return True
