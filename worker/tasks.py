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
from worker.runner import execute_job, fail_stale_jobs


@lru_cache
def _database() -> Database:
    return Database(get_settings().resolved_database_url)


@celery_app.task(name=TASK_RUN_JOB)
def run_job(job_id: str) -> str:
    # Reap before each job too, not only at start-up: a dead worker's job is then failed as soon
    # as any live worker takes new work. One indexed query; nothing next to a training job.
    fail_stale_jobs(get_settings(), _database())
    return execute_job(uuid.UUID(job_id), get_settings(), _database())


@worker_ready.connect
def recover_stale_jobs(**_: Any) -> None:
    fail_stale_jobs(get_settings(), _database())
