"""Predictions of an onnx model in lane processes, batched on the event loop.

The thread lanes of ``app.serving.batcher`` share the API process's GIL with the event loop:
every hand-off between them, and every torch or onnxruntime call that releases and retakes the
GIL, makes the loop and the lanes wait for each other. Here the lanes are processes
(``app.serving.lane``: numpy, Pillow and onnxruntime, no torch) and the batching is done by the
event loop itself, so the API process runs no Python thread per prediction at all: a request
queues on the loop, an idle lane's task takes its share of what waits (up to ``max_batch``
images), writes it to its process through a pipe and awaits the answer. A small request goes
still encoded and the lane process opens and decodes it; any other was decoded on a worker
thread (app.serving.predict). Batching works as in the thread batcher: no lane waits for a batch
to fill, a lone request on an idle model runs ``wide`` (on lane 0, whose process has a session
on every core), a full queue answers 503 ``overloaded`` with ``Retry-After``, and a request whose
client went away before its pass is skipped.

A lane process that dies fails the requests of its pass with 503 ``inference_failed`` and is
started again. ``close()`` (from any thread) answers what is queued, then ends the processes.

NOTE bench/serve.py measured lane processes against thread lanes (resnet10t at 64 px, 32 clients
of one 28 x 28 PNG each, 5 alternating rounds of a prototype): 402 against 346 images/s. See
README, Measured, Serving.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import logging
import os
import pickle
import select
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.errors import ServiceError
from app.observability.metrics import INFERENCE_BATCH_IMAGES
from app.serving.batcher import BatcherClosed, BatchStats, overloaded, take_share
from app.serving.decode import TooLargeForLane
from app.serving.lane import LENGTH, frame, read_frame

log = logging.getLogger(__name__)

Files = list[tuple[str, bytes]]

START_TIMEOUT_S = 60.0  # a lane process loads its model within this, or it failed
PASS_TIMEOUT_S = 300.0  # a pass (64 images on one core) answers within this, or its lane hangs
DRAIN_TIMEOUT_S = 30.0  # a closed model's lanes answer what is queued within this


class InferenceFailed(ServiceError):
    status_code = 503
    code = "inference_failed"


@dataclass
class _Request:
    count: int
    item: tuple[str, Any]  # ("files", Files) or ("pixels", N x H x W x 3 uint8)
    future: asyncio.Future[tuple[str, Any]]  # the lane process's result (app.serving.lane)


class _Process:
    """One lane process and its pipes (the loop's streams once attached)."""

    def __init__(self, config: dict[str, Any]) -> None:
        # A session of its own: a Ctrl+C or a signal to the API's process group does not end it
        # while the API drains (the API ends it then). Without the API's settings (the database
        # URL), and -P: nothing from the working directory on its import path.
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRANSFERLAB_")}
        self.popen = subprocess.Popen(
            [sys.executable, "-P", "-m", "app.serving.lane", json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    def wait_ready(self, timeout: float) -> None:
        """Block until the process has loaded the model (a worker thread's job)."""
        assert self.popen.stdout is not None
        ready, _, _ = select.select([self.popen.stdout], [], [], timeout)
        if not ready:
            self._check_ready(("failed", f"it did not answer within {timeout:.0f} s"))
        self._check_ready(read_frame(self.popen.stdout, _loads))

    async def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self.popen.stdin is not None and self.popen.stdout is not None
        reader = self.reader = asyncio.StreamReader(limit=2**26, loop=loop)
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader, loop=loop), self.popen.stdout
        )
        transport, protocol = await loop.connect_write_pipe(
            lambda: asyncio.streams.FlowControlMixin(loop=loop), self.popen.stdin
        )
        self.writer = asyncio.StreamWriter(transport, protocol, None, loop)

    async def exchange(self, message: Any) -> Any:
        assert self.writer is not None
        self.writer.write(frame(message))
        await self.writer.drain()
        return await self._read()

    async def ready(self) -> None:
        self._check_ready(await asyncio.wait_for(self._read(), START_TIMEOUT_S))

    async def _read(self) -> Any:
        assert self.reader is not None
        (size,) = LENGTH.unpack(await self.reader.readexactly(LENGTH.size))
        return _loads(await self.reader.readexactly(size))

    def _check_ready(self, answer: Any) -> None:
        """``answer``: the process's first frame; None if it exited before writing one."""
        status, message = answer if answer is not None else ("failed", "it exited while starting")
        if status != "ready":
            self.kill()
            raise RuntimeError(f"a lane process could not start: {message}")

    def kill(self) -> None:
        self.popen.kill()
        self.popen.wait()

    def stop(self, timeout: float) -> None:
        """End the process (it holds no state: its queue was answered before)."""
        self.popen.terminate()
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()


@functools.cache
def _error_classes() -> frozenset[tuple[str, str]]:
    """(module, name) of ServiceError and its subclasses, taken once, when the first error is
    answered (every error a lane's decoding raises is imported with app.serving.decode)."""
    found: list[type] = [ServiceError]
    for cls in found:
        found.extend(cls.__subclasses__())
    return frozenset((cls.__module__, cls.__name__) for cls in found)


class _Unpickler(pickle.Unpickler):
    """Only what a lane process answers: tuples, strings, numbers, numpy arrays and the service's
    errors. The lane parses untrusted images with native decoders; should one of them be
    exploited, a pickle naming any other callable is refused instead of run in the API."""

    def find_class(self, module: str, name: str) -> Any:
        if (module.split(".")[0], name) in _NUMPY or (module, name) in _error_classes():
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"a lane process answered {module}.{name}")


_NUMPY = {("numpy", name) for name in ("_reconstruct", "ndarray", "dtype", "_frombuffer", "scalar")}


def _loads(body: bytes) -> Any:
    return _Unpickler(io.BytesIO(body)).load()


class LaneProcesses:
    def __init__(
        self,
        config: dict[str, Any],
        *,
        name: str,
        lanes: int,
        max_pixels: int,
        max_batch: int = 64,
        max_queued: int = 256,
    ) -> None:
        """Start the processes and wait until each has loaded the model (call it from a worker
        thread: it takes a fraction of a second). ``config`` is the lane's (app.serving.lane)
        without ``wide``; ``max_pixels`` the one-image limit (TRANSFERLAB_MAX_IMAGE_PIXELS)."""
        self.name = name
        self.max_pixels = max_pixels
        self.lanes = max(1, lanes)
        self.max_batch = max(1, max_batch)
        self.max_queued = max(1, max_queued)
        self.stats = BatchStats()
        self._configs = [config | {"wide": lane == 0} for lane in range(self.lanes)]
        self._processes: list[_Process] = []
        try:
            for lane_config in self._configs:
                self._processes.append(_Process(lane_config))
            for process in self._processes:
                process.wait_ready(START_TIMEOUT_S)
        except BaseException:
            for process in self._processes:
                process.kill()
            raise
        self._queue: deque[_Request] = deque()
        self._queued_images = 0
        self._running = 0
        self._rate = 0.0  # images/s of one lane's recent passes (an EMA), for Retry-After
        self._idle: dict[int, asyncio.Future[None]] = {}  # lane -> what wakes it
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._paused = False
        self._drained = threading.Event()
        self._ready = [True] * self.lanes  # False while a lane's process starts again

    @property
    def queued_images(self) -> int:
        return self._queued_images

    @property
    def pids(self) -> list[int]:
        return [p.popen.pid for p in self._processes]

    @property
    def lanes_ready(self) -> int:
        """Lanes whose process is running (not starting again after a crash)."""
        return sum(self._ready)

    async def predict_files(self, files: Files) -> np.ndarray:
        """The probabilities of one request's images, opened and decoded in a lane process:
        ``TooLargeForLane`` if one of them needs more pixels than a lane decodes, the
        ``ServiceError`` of a bad image, or ``Overloaded`` or ``BatcherClosed`` at once when the
        request cannot queue."""
        return await self._predict(len(files), ("files", files))

    async def predict_pixels(self, pixels: Sequence[np.ndarray]) -> np.ndarray:
        """``predict_files`` for images decoded already (model-sized)."""
        return await self._predict(len(pixels), ("pixels", np.stack(list(pixels))))

    async def _predict(self, count: int, item: tuple[str, Any]) -> np.ndarray:
        if self._closed:
            raise BatcherClosed(self.name)
        if self._started is None:
            self._started = asyncio.ensure_future(self._start())
        started = self._started
        try:
            await asyncio.shield(started)
        except Exception:
            if self._started is started:  # the next request tries again
                self._started = None
            raise
        if self._closed:  # closed while the lanes started: nothing will take the request
            raise BatcherClosed(self.name)
        if self._queued_images and self._queued_images + count > self.max_queued:
            raise overloaded(self._queued_images, self.max_queued, self._rate * self.lanes)
        request = _Request(count, item, asyncio.get_running_loop().create_future())
        self._queue.append(request)
        self._queued_images += count
        self._wake()
        status, value = await request.future
        if status == "rows":
            return value  # type: ignore[no-any-return]
        if status == "too_large":
            raise TooLargeForLane
        if status == "error":
            raise value
        raise InferenceFailed(f"the model's lane process failed: {value}; retry")

    def pause(self) -> None:
        """Lanes take nothing until ``resume()`` (tests queue requests with it)."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake_all)

    def close(self) -> None:
        """Answer what is queued, then end the processes; never blocks (from any thread: an
        evicting worker thread or the event loop at shutdown). The lanes get
        ``DRAIN_TIMEOUT_S`` to answer what is queued."""
        self._closed = True
        self._paused = False
        if self._loop is not None:  # started, or starting: its lane tasks drain the queue
            try:
                self._loop.call_soon_threadsafe(self._wake_all)
            except RuntimeError:  # the loop is closed: its tasks will never run again
                self._drained.set()
        else:
            self._drained.set()
        threading.Thread(target=self._stop, name=f"lanes-stop-{self.name}", daemon=True).start()

    def _stop(self) -> None:
        self._drained.wait(DRAIN_TIMEOUT_S)
        for process in self._processes:
            process.stop(5.0)

    async def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for process in self._processes:
            await process.attach(self._loop)
        self._tasks = [
            asyncio.create_task(self._lane(lane), name=f"lane-{self.name}#{lane}")
            for lane in range(self.lanes)
        ]

    def _wake(self) -> None:
        """Wake an idle lane, lane 0 first (its process can run a pass wide)."""
        if self._idle and not self._paused:
            lane = 0 if 0 in self._idle else next(iter(self._idle))
            waiter = self._idle.pop(lane)
            if not waiter.done():
                waiter.set_result(None)

    def _wake_all(self) -> None:
        for lane in sorted(self._idle):  # lane 0 first: it takes what waits first
            waiter = self._idle[lane]
            if not waiter.done():
                waiter.set_result(None)
        self._idle.clear()

    def _take(self, lane: int) -> tuple[list[_Request], bool]:
        taken, size = take_share(
            self._queue, self._queued_images, self.lanes - self._running, self.max_batch
        )
        self._queued_images -= size
        wide = lane == 0 and self._running == 0 and not self._queue
        if self._queue:
            self._wake()  # another lane, for the rest
        return [r for r in taken if not r.future.cancelled()], wide

    async def _lane(self, lane: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self._queue or self._paused:
                    if self._closed and not self._queue:
                        return
                    waiter = loop.create_future()
                    self._idle[lane] = waiter
                    await waiter
                    continue
                taken, wide = self._take(lane)
                if taken:
                    self._running += 1
                    try:
                        await self._pass(lane, taken, wide)
                    finally:
                        self._running -= 1
        finally:
            if all(t.done() or t is asyncio.current_task() for t in self._tasks):
                self._drained.set()

    async def _pass(self, lane: int, taken: list[_Request], wide: bool) -> None:
        start = time.perf_counter()
        message = (wide, self.max_pixels, [r.item for r in taken])
        try:
            exchange = self._processes[lane].exchange(message)
            results = await asyncio.wait_for(exchange, PASS_TIMEOUT_S)
            if not (
                isinstance(results, list)
                and len(results) == len(taken)
                and all(isinstance(r, tuple) and len(r) == 2 for r in results)
            ):
                raise ValueError(f"{len(taken)} requests, an answer of another shape")
        except Exception as exc:  # it died, hung, or answered garbage: a new process
            log.error("lane process %d of model %s failed (%s: %s); starting it again",
                      lane, self.name, type(exc).__name__, exc)  # fmt: skip
            for r in taken:
                if not r.future.done():
                    r.future.set_result(("failed", "it ended during the pass"))
            await self._restart(lane)
            return
        images = sum(r.count for r, (status, _) in zip(taken, results, strict=True)
                     if status == "rows")  # fmt: skip
        if images:
            rate = images / max(time.perf_counter() - start, 1e-6)
            self._rate = rate if not self._rate else 0.8 * self._rate + 0.2 * rate
            self.stats.record(images, wide)
            INFERENCE_BATCH_IMAGES.observe(images)
        for r, result in zip(taken, results, strict=True):
            if not r.future.done():
                r.future.set_result(result)

    async def _restart(self, lane: int) -> None:
        """A new process for the lane; tried again every second until it starts (or closed)."""
        self._ready[lane] = False
        while not self._closed:
            await asyncio.to_thread(self._processes[lane].kill)
            try:
                process = _Process(self._configs[lane])
                self._processes[lane] = process
                await process.attach(asyncio.get_running_loop())
                await process.ready()
            except Exception:
                log.exception("lane process %d of model %s did not start", lane, self.name)
                await asyncio.sleep(1.0)
                continue
            self._ready[lane] = True
            return
