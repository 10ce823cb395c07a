"""A job's live events as Server-Sent Events, read from the database.

Any API process can serve any job's stream: the worker writes the job row (status, step progress)
and one metrics row per epoch, and the stream polls those, in a thread (the database calls are
synchronous and must not block the event loop). Events:

- ``status``: the job view (``JobOut``) on connect and when the status changes, while the job
  is not finished;
- ``progress``: epoch, step and fraction done when they change while it runs;
- ``metrics``: one epoch's metrics (``EpochMetricsOut``), once per epoch, in order;
- ``end``: the final job view; the stream closes after it.

Every event's ``id`` is the last epoch whose metrics the stream has sent. A client that
reconnects with ``Last-Event-ID: <id>`` gets the current status and progress again and only the
metrics of later epochs. An idle stream sends a comment line as a heartbeat. A stream also closes
after ``max_s`` without an ``end`` event (a stopping API process waits for open responses), and
clients reconnect with ``Last-Event-ID``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio

from app.api.schemas.jobs import EpochMetricsOut, JobOut
from app.db.models import JobStatus
from app.db.repositories import jobs as repo
from app.db.repositories import models as models_repo
from app.db.session import Database

FINISHED = frozenset({JobStatus.succeeded.value, JobStatus.failed.value, JobStatus.cancelled.value})
# How long a client waits before it reconnects after the connection drops (SSE `retry:`).
RETRY_MS = 2000

EVENTS_EXAMPLE = """\
retry: 2000

id: 0
event: status
data: {"id": "5d0e6c1a-...", "status": "running", "progress": {...}, ...}

id: 0
event: progress
data: {"epoch": 1, "total_epochs": 5, "step": 40, "total_steps": 120, "fraction": 0.0667, ...}

id: 1
event: metrics
data: {"epoch": 1, "phase": "train", "train_loss": 0.41, "val_accuracy": 0.88, ...}

: keep-alive

id: 5
event: end
data: {"id": "5d0e6c1a-...", "status": "succeeded", "model_id": "0b6f2d7e-...", ...}
"""


@dataclass(frozen=True)
class Snapshot:
    job: JobOut
    metrics: list[EpochMetricsOut]


def read_snapshot(db: Database, job_id: uuid.UUID, after_epoch: int) -> Snapshot | None:
    """The job and its metrics after ``after_epoch``; None if the job is gone."""
    with db.session_scope() as session:
        job = repo.get(session, job_id)
        if job is None:
            return None
        model_id = None
        if job.status == JobStatus.succeeded.value:
            model_id = models_repo.ids_by_job(session, [job.id]).get(job.id)
        rows = repo.metrics(session, job_id, after_epoch=after_epoch)
        return Snapshot(
            JobOut.from_job(job, model_id), [EpochMetricsOut.model_validate(r) for r in rows]
        )


def frame(event: str, data: Any, event_id: int) -> str:
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def job_events(
    db: Database,
    job_id: uuid.UUID,
    *,
    last_epoch: int = 0,
    poll_s: float = 1.0,
    heartbeat_s: float = 15.0,
    max_s: float = 15.0,
) -> AsyncIterator[str]:
    """SSE frames for ``job_id`` until it finishes or ``max_s`` passed (see the docstring)."""
    yield f"retry: {RETRY_MS}\n\n"
    status: str | None = None
    progress: tuple[int, ...] | None = None
    last_write = time.monotonic()
    close_at = last_write + max_s
    while True:
        snapshot = await anyio.to_thread.run_sync(read_snapshot, db, job_id, last_epoch)
        if snapshot is None:  # deleted while watched (jobs are not deleted today)
            return
        job = snapshot.job
        frames = []
        if job.status != status and job.status not in FINISHED:
            status = job.status
            frames.append(frame("status", job.model_dump(mode="json"), last_epoch))
        for metrics in snapshot.metrics:
            last_epoch = metrics.epoch
            frames.append(frame("metrics", metrics.model_dump(mode="json"), last_epoch))
        p = job.progress
        current = (p.epoch, p.total_epochs, p.step, p.total_steps)
        if job.status == JobStatus.running.value and current != progress:
            progress = current
            data = {**p.model_dump(), "duration_seconds": job.duration_seconds}
            frames.append(frame("progress", data, last_epoch))
        if job.status in FINISHED:
            frames.append(frame("end", job.model_dump(mode="json"), last_epoch))
            yield "".join(frames)
            return
        now = time.monotonic()
        if frames:
            yield "".join(frames)
            last_write = now
        elif now - last_write >= heartbeat_s:
            yield ": keep-alive\n\n"
            last_write = now
        if now >= close_at:
            return  # without `end`: the client reconnects with Last-Event-ID
        await anyio.sleep(min(poll_s, max(close_at - now, 0)))
