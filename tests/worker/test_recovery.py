"""A job whose worker died is failed with a clear message when a worker starts."""

from __future__ import annotations

import uuid
from datetime import timedelta

from app.db.base import utcnow
from app.db.repositories import jobs as repo
from tests.api.conftest import upload
from worker.progress import DatabaseProgress
from worker.runner import fail_stale_jobs


def running_job(client, db, digits_zip, heartbeat_age_s: float) -> uuid.UUID:
    ds = upload(client, digits_zip(per_class=3, name="rec.zip")).json()
    body = {"strategy": "finetune", "base_model": "timm:test_resnet", "dataset_id": ds["id"]}
    job_id = uuid.UUID(client.post("/v1/jobs", json=body).json()["id"])
    with db.session_scope() as s:
        assert repo.claim(s, job_id)
        repo.set_progress(s, job_id, heartbeat_at=utcnow() - timedelta(seconds=heartbeat_age_s))
    return job_id


def test_stale_running_job_is_failed_and_fresh_one_is_not(client, settings, db, digits_zip):
    dead = running_job(client, db, digits_zip, heartbeat_age_s=settings.stale_job_after_s + 5)
    alive = running_job(client, db, digits_zip, heartbeat_age_s=1)
    assert fail_stale_jobs(settings, db) == [dead]
    dead_job = client.get(f"/v1/jobs/{dead}").json()
    assert dead_job["status"] == "failed"
    assert "no heartbeat" in dead_job["error"] and "submit the job again" in dead_job["error"]
    assert client.get(f"/v1/jobs/{alive}").json()["status"] == "running"


def test_progress_callback_beats_the_heartbeat_and_sees_cancel(client, settings, db, digits_zip):
    job_id = running_job(client, db, digits_zip, heartbeat_age_s=3600)
    progress = DatabaseProgress(db, job_id, interval_s=0)
    assert progress.should_stop() is False
    assert fail_stale_jobs(settings, db) == []  # the beat just now made it fresh again
    client.post(f"/v1/jobs/{job_id}/cancel")
    progress._last_poll = 0.0  # the next poll is due
    assert progress.should_stop() is True
