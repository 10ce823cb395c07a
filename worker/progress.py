"""An engine callback that writes progress and metrics to the job row and polls for cancel."""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import asdict

from app.db.models import JobMetric
from app.db.repositories import jobs as repo
from app.db.session import Database
from app.engine import Callback, EpochMetrics
from worker import metrics as worker_metrics

# How often a running job beats its heartbeat and learns whether it was cancelled (one UPDATE ...
# RETURNING by primary key). A cancel takes effect within about this long; one statement a
# second is noise next to training.
CANCEL_POLL_S = 1.0


class DatabaseProgress(Callback):
    def __init__(
        self, db: Database, job_id: uuid.UUID, *, interval_s: float, attempt: int | None = None
    ) -> None:
        self.db, self.job_id, self.interval_s, self.attempt = db, job_id, interval_s, attempt
        self._last_write = 0.0
        self._last_poll = 0.0
        self._cancelled = False

    def on_train_start(self, total_epochs: int, steps_per_epoch: int) -> None:
        with self.db.session_scope() as session:
            repo.set_progress(
                session,
                self.job_id,
                total_epochs=total_epochs,
                total_steps=steps_per_epoch,
                epoch=1,
                step=0,
            )
        self._last_write = time.monotonic()

    def on_step(self, epoch: int, step: int, steps_per_epoch: int) -> None:
        # Writes are throttled in time, not in steps: a long epoch still shows movement every
        # few seconds, and a fast one is not slowed by a write per step.
        now = time.monotonic()
        if now - self._last_write >= self.interval_s:
            with self.db.session_scope() as session:
                repo.set_progress(
                    session, self.job_id, epoch=epoch, step=step, total_steps=steps_per_epoch
                )
            self._last_write = now

    def on_epoch_end(self, metrics: EpochMetrics) -> None:
        values = asdict(metrics)
        # Plain floats for the JSON column (a strategy may hand over numpy or torch scalars);
        # a non-finite one is left out, as JSON (and Postgres's json type) has no NaN.
        extra = {str(k): float(v) for k, v in metrics.extra.items()}
        values["extra"] = {k: v for k, v in extra.items() if math.isfinite(v)}
        for name in ("eval_loss", "eval_accuracy"):  # nullable columns: None, not NaN
            if values[name] is not None and not math.isfinite(values[name]):
                values[name] = None
        if metrics.images_per_second:
            worker_metrics.IMAGES_PER_SECOND.set(metrics.images_per_second)
        with self.db.session_scope() as session:
            repo.add_metric(session, JobMetric(job_id=self.job_id, **values))
            repo.set_progress(session, self.job_id, epoch=metrics.epoch, latest_metrics=values)
        self._last_write = time.monotonic()

    def should_stop(self) -> bool:
        now = time.monotonic()
        if not self._cancelled and now - self._last_poll >= CANCEL_POLL_S:
            with self.db.session_scope() as session:
                # Also True when the job is no longer this attempt's: it was taken for dead and
                # restarted elsewhere, so this run stops rather than race the new one.
                self._cancelled = repo.heartbeat(session, self.job_id, self.attempt)
            self._last_poll = now
        return self._cancelled
