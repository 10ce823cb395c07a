"""The API process's Prometheus metrics, and the registry ``/metrics`` exposes.

Counters and histograms are module-level (prometheus-client's default registry). Several uvicorn
worker processes (``transferlab api --workers N``) each count their own requests; with
``PROMETHEUS_MULTIPROC_DIR`` set (before prometheus_client is imported) they write to files there
and ``/metrics`` adds them up, whichever process answers the scrape. The job and queue gauges are
read at scrape time from the database and the broker, so every process reports the same numbers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from app.db.models import Job, JobStatus
from app.queue import QUEUE_TRAINING

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

HTTP_REQUESTS = Counter(
    "transferlab_http_requests_total",
    "HTTP requests by route template, method and status code",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "transferlab_http_request_duration_seconds",
    "HTTP request latency, from the first byte in to the last byte out",
    ["method", "route"],
    # Uploads of large datasets take minutes; predictions tens of milliseconds.
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
PREDICTION_LATENCY = Histogram(
    "transferlab_prediction_seconds",
    "time to answer one prediction request: decoding, loading the model on a cache miss, forward",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PREDICTION_IMAGES = Histogram(
    "transferlab_prediction_images",
    "images per prediction request (the batch size)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
INFERENCE_BATCH_IMAGES = Histogram(
    "transferlab_inference_batch_images",
    "images per forward pass of a model's inference thread (requests merged into one batch)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
INFERENCE_QUEUE_REFUSED = Counter(
    "transferlab_inference_overloaded_total",
    "prediction and embedding requests refused with 503 overloaded (the model's queue was full)",
)
MODEL_CACHE_HITS = Counter(
    "transferlab_model_cache_hits_total", "predictions served by a model already in memory"
)
MODEL_CACHE_MISSES = Counter(
    "transferlab_model_cache_misses_total", "predictions that loaded a model's weights from disk"
)


class StateCollector(Collector):
    """Jobs by status and the training queue's depth, read when Prometheus scrapes.

    ``app_state`` is the FastAPI app's ``state``, with ``db``, ``queue`` and ``settings``.
    A source that cannot be read is reported as ``transferlab_metrics_source_up{source} 0``
    instead of failing the whole scrape.
    """

    def __init__(self, app_state: Any) -> None:
        self.state = app_state

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "transferlab_metrics_source_up",
            "1 if the source of the scrape-time metrics could be read",
            labels=["source"],
        )
        jobs = GaugeMetricFamily("transferlab_jobs", "jobs by status", labels=["status"])
        try:
            counts = self._job_counts()
        except Exception as exc:
            log.warning("metrics: cannot count jobs (%s: %s)", type(exc).__name__, exc)
            up.add_metric(["database"], 0)
        else:
            up.add_metric(["database"], 1)
            for status in JobStatus:
                jobs.add_metric([status.value], counts.get(status.value, 0))
            yield jobs
        depth = GaugeMetricFamily(
            "transferlab_queue_depth",
            "messages waiting in the broker queue (jobs sent and not yet taken by a worker)",
            labels=["queue"],
        )
        try:
            waiting = self._queue_depth()
        except Exception as exc:
            log.warning("metrics: cannot read the queue depth (%s: %s)", type(exc).__name__, exc)
            up.add_metric(["broker"], 0)
        else:
            up.add_metric(["broker"], 1)
            depth.add_metric([QUEUE_TRAINING], waiting)
            yield depth
        yield up

    def _job_counts(self) -> dict[str, int]:
        with self.state.db.session_scope() as session:
            rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
        return {str(status): int(count) for status, count in rows}

    def _queue_depth(self) -> int:
        settings = self.state.settings
        if settings.embedded_broker:
            # The folder broker keeps one file per message; the worker renames a file away when
            # it takes it (app.broker_fs), so what is left is waiting.
            return sum(1 for _ in (settings.layout.broker / "queue").glob("*.msg"))
        with self.state.queue.celery.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
            # A declare answers with the message count (on Redis, the length of the queue's
            # lists, all priority levels included); the queue exists anyway, the worker
            # declares it at start-up.
            ok = conn.default_channel.queue_declare(queue=QUEUE_TRAINING, passive=False)
            return int(ok.message_count)


class _Forward(Collector):
    """Everything in another registry (the process-wide default one)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        return self.registry.collect()


def multiprocess_dir() -> str | None:
    # Read where prometheus_client itself reads it; the CLI sets it before starting workers.
    return os.environ.get(MULTIPROC_ENV) or None


def create_registry(app_state: Any) -> CollectorRegistry:
    """The registry one app's ``/metrics`` serves: process metrics plus the scrape-time state."""
    registry = CollectorRegistry(auto_describe=False)
    folder = multiprocess_dir()
    if folder:
        MultiProcessCollector(registry, path=folder)
    else:
        registry.register(_Forward(REGISTRY))
    registry.register(StateCollector(app_state))
    return registry
