"""The worker's Prometheus metrics, served on ``settings.worker_metrics_port`` when it is set.

The worker runs Celery's solo pool, one process, so the default registry is the whole truth.
"""

from __future__ import annotations

import logging
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

JOBS_FINISHED = Counter(
    "transferlab_worker_jobs_finished_total",
    "jobs this worker ran to a final status, by status and strategy",
    ["status", "strategy"],
)
JOB_FAILURES = Counter(
    "transferlab_worker_job_failures_total",
    "failed jobs by error_code (worker_lost: failed by this worker's stale-job check)",
    ["error_code"],
)
JOB_DURATION = Histogram(
    "transferlab_worker_job_duration_seconds",
    "wall time of a job on this worker, from claim to final status",
    ["status", "strategy"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400),
)
JOB_RUNNING = Gauge("transferlab_worker_job_running", "1 while this worker runs a job")
IMAGES_PER_SECOND = Gauge(
    "transferlab_worker_images_per_second",
    "training throughput of the last finished epoch on this worker",
)


def serve_metrics(port: int, addr: str = "0.0.0.0") -> WSGIServer:
    """Serve ``/metrics`` on ``port`` from a daemon thread (the training thread never blocks it)."""
    server, _ = start_http_server(port, addr=addr, registry=REGISTRY)
    log.info("worker metrics on http://%s:%d/metrics", addr, server.server_port)
    return server
