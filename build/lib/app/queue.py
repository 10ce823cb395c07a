"""The Celery app as both sides see it: the API sends tasks by name, the worker consumes them.

One configuration for both, so the API can enqueue without importing ``worker`` (which would pull
the training stack into the API process). Task state lives in the database, so there is no result
backend.
"""

from __future__ import annotations

import uuid
from typing import Any

from celery import Celery

from app import broker_fs
from app.settings import Settings

TASK_RUN_JOB = "jobs.run"
QUEUE_TRAINING = "training"


def celery_config(settings: Settings) -> dict[str, Any]:
    config: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "result_backend": None,
        "task_ignore_result": True,
        # A job is acknowledged only when it finished, so a worker that dies mid-job hands it
        # back to the broker; the guarded queued->running claim makes the redelivery harmless.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # One GPU job at a time per worker process: never reserve a second one behind it.
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": 1,
        "task_default_queue": QUEUE_TRAINING,
        "task_routes": {TASK_RUN_JOB: {"queue": QUEUE_TRAINING}},
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
    }
    if settings.embedded_broker:
        folder = settings.layout.broker
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        config["broker_url"] = f"{broker_fs.ALIAS}://"
        config["broker_transport_options"] = {
            # Producer and consumer share one folder: a message file is written by the API and
            # picked up (renamed away, so exactly one consumer gets it) by the worker.
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
            # The worker lists the folder this often; 0.1 s keeps submit-to-running snappy at a
            # negligible cost (one listdir).
            "polling_interval": 0.1,
        }
    else:
        # Redis: the visibility timeout must outlast the longest job, or Redis redelivers a job
        # that is still running (the claim guard would drop the duplicate, but it is noise).
        config["broker_transport_options"] = {"visibility_timeout": 7 * 24 * 3600}
    return config


def create_celery(settings: Settings, *, include: list[str] | None = None) -> Celery:
    celery = Celery("transferlab", include=include or [])
    celery.conf.update(celery_config(settings))
    return celery


class JobQueue:
    """What the API needs of the broker: put a job id on the queue, and check it is reachable."""

    def __init__(self, settings: Settings) -> None:
        self.celery = create_celery(settings)

    def enqueue_job(self, job_id: uuid.UUID) -> None:
        self.celery.send_task(TASK_RUN_JOB, args=[str(job_id)])

    def ping(self, timeout: float = 2.0) -> None:
        with self.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
