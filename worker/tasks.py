"""Celery tasks. Thin: the job id in, everything else from the database."""

from __future__ import annotations

import uuid
from functools import lru_cache
from typing import Any

from celery.signals import worker_ready

from app.db.session import Database
from app.queue import TASK_RUN_JOB
from app.settings import get_settings
from worker.celery_app import celery_app
from worker.recovery import Reaper, recover_stale_jobs
from worker.runner import execute_job


@lru_cache
def _database() -> Database:
    return Database(get_settings().resolved_database_url)


def _enqueue(job_id: uuid.UUID) -> None:
    celery_app.send_task(TASK_RUN_JOB, args=[str(job_id)])


def reap() -> list[uuid.UUID]:
    """Requeue the jobs of dead workers (see worker.recovery)."""
    return recover_stale_jobs(get_settings(), _database(), _enqueue)


@celery_app.task(name=TASK_RUN_JOB)
def run_job(job_id: str) -> str:
    # Reap before each job too: one indexed query, nothing next to a training job.
    reap()
    return execute_job(uuid.UUID(job_id), get_settings(), _database())


@worker_ready.connect
def reap_at_start(**_: Any) -> None:
    reap()
    # And every few seconds from a thread: the solo pool is busy while it trains, and a dead
    # worker's job should not wait for this one's to end.
    Reaper(reap, every_s=min(10.0, get_settings().stale_job_after_s / 3)).start()
