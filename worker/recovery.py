"""Jobs whose worker died: noticed by their stale heartbeat, put back on the queue to resume from
their last checkpoint, or failed once they have used up their attempts.

A running job's heartbeat is written every ``job_heartbeat_s`` by a thread of its worker
(``JobHeartbeat``), whatever the training loop is doing: a long validation pass or a weights
download does not look like death. A heartbeat older than ``stale_job_after_s`` means the worker
is gone (SIGKILL, out of memory, power loss). Every worker looks for such jobs when it starts,
before each job and every few seconds from a thread (``Reaper``), so a job is back in the queue
within about ``stale_job_after_s`` + 10 s of its worker's death, and any idle worker takes it.
Redis' own redelivery (acks_late) is left at its long visibility timeout: the reaper is the one
path, and the guarded transitions make a late redelivery do nothing.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from types import TracebackType

from app.db.repositories import jobs as jobs_repo
from app.db.session import Database
from app.settings import Settings
from worker import metrics

log = logging.getLogger(__name__)

WORKER_LOST = "worker_lost"


class JobHeartbeat:
    """While the block runs, write the job's heartbeat every ``every_s`` (guarded by attempt)."""

    def __init__(self, db: Database, job_id: uuid.UUID, attempt: int, *, every_s: float) -> None:
        self.db, self.job_id, self.attempt, self.every_s = db, job_id, attempt, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="job-heartbeat", daemon=True)

    def __enter__(self) -> JobHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                with self.db.session_scope() as session:
                    jobs_repo.heartbeat(session, self.job_id, self.attempt)
            except Exception:  # a missed beat is survivable; a dead thread would fail the job
                log.warning("job %s: heartbeat not written", self.job_id, exc_info=True)


def recover_stale_jobs(
    settings: Settings, db: Database, enqueue: Callable[[uuid.UUID], None]
) -> list[uuid.UUID]:
    """Requeue (or, after ``max_job_attempts``, fail) running jobs whose worker is gone.

    Returns the requeued ids. Each transition is guarded by status, attempt and staleness, so
    several workers reaping at once act on a job once.
    """
    limit = settings.stale_job_after_s
    cutoff = datetime.now(timezone.utc) - timedelta(seconds=limit)
    why = f"its worker stopped (no heartbeat for over {limit:.0f} s: killed, out of memory, or "
    why += "its machine went away)"
    requeued: list[uuid.UUID] = []
    with db.session_scope() as session:
        stale = jobs_repo.stale(session, cutoff)
        for job in stale:
            if job.attempts >= settings.max_job_attempts:
                message = (
                    f"the job was started {job.attempts} times and {why} each time; it may be "
                    "what kills its worker (memory: try a smaller batch_size or image_size); "
                    "fix that and submit it again"
                )
                if jobs_repo.fail_stale(session, job, cutoff, message, error_code=WORKER_LOST):
                    metrics.JOB_FAILURES.labels(error_code=WORKER_LOST).inc()
                    log.error(
                        "job %s failed (%s): %s", job.id, WORKER_LOST, message,
                        extra={"job_id": str(job.id), "error_code": WORKER_LOST},
                    )  # fmt: skip
            elif jobs_repo.requeue(session, job, cutoff, f"attempt {job.attempts}: {why}"):
                requeued.append(job.id)
    # Enqueued after the commit: a worker that takes the id at once must find the job queued.
    for job_id in requeued:
        log.warning("job %s: %s; back in the queue to resume", job_id, why)
        enqueue(job_id)
    return requeued


class Reaper:
    """A daemon thread that runs ``recover_stale_jobs`` every ``every_s`` seconds."""

    def __init__(self, run: Callable[[], object], every_s: float) -> None:
        self.run, self.every_s = run, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="reaper", daemon=True)

    def start(self) -> Reaper:
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.run()
            except Exception:
                log.warning("reaping stale jobs failed", exc_info=True)
