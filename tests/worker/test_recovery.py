"""Jobs whose worker died go back to the queue and resume; after max_job_attempts they fail."""

from __future__ import annotations

import contextlib
import uuid
from datetime import timedelta

from app.db.base import utcnow
from app.db.models import JobMetric
from app.db.repositories import jobs as repo
from app.jobspec import JobCreate
from tests.api.conftest import upload
from worker.progress import DatabaseProgress
from worker.recovery import JobHeartbeat, recover_stale_jobs
from worker.runner import execute_job


def running_job(client, db, digits_zip, heartbeat_age_s: float, **hyperparameters) -> uuid.UUID:
    """A job a worker claimed, whose heartbeat is ``heartbeat_age_s`` old."""
    ds = upload(client, digits_zip(per_class=3, name="rec.zip")).json()
    body = {"strategy": "finetune", "base_model": "timm:test_resnet", "pretrained": False,
            "dataset_id": ds["id"], "hyperparameters": hyperparameters}  # fmt: skip
    job_id = uuid.UUID(client.post("/v1/jobs", json=body).json()["id"])
    with db.session_scope() as s:
        assert repo.claim(s, job_id) == 1
        repo.set_progress(s, job_id, heartbeat_at=utcnow() - timedelta(seconds=heartbeat_age_s))
    return job_id


def test_a_stale_job_is_requeued_and_a_fresh_one_is_not(client, settings, db, digits_zip):
    dead = running_job(client, db, digits_zip, heartbeat_age_s=settings.stale_job_after_s + 5)
    alive = running_job(client, db, digits_zip, heartbeat_age_s=1)
    sent: list[uuid.UUID] = []
    assert recover_stale_jobs(settings, db, sent.append) == [dead]
    assert sent == [dead]
    job = client.get(f"/v1/jobs/{dead}").json()
    assert job["status"] == "queued" and job["attempts"] == 1
    assert "attempt 1: its worker stopped (no heartbeat" in job["restart_reason"]
    assert client.get(f"/v1/jobs/{alive}").json()["status"] == "running"
    # A second reaper (another worker) finds nothing more to do.
    assert recover_stale_jobs(settings, db, sent.append) == [] and sent == [dead]


def test_the_third_death_fails_the_job_with_a_message(client, settings, db, digits_zip):
    job_id = running_job(client, db, digits_zip, heartbeat_age_s=settings.stale_job_after_s + 5)
    old = utcnow() - timedelta(seconds=settings.stale_job_after_s + 5)
    for attempt in (2, 3):  # its worker died each time; another took it up again
        assert recover_stale_jobs(settings, db, lambda _: None) == [job_id]
        with db.session_scope() as s:
            assert repo.claim(s, job_id) == attempt
            repo.set_progress(s, job_id, heartbeat_at=old)
    assert recover_stale_jobs(settings, db, lambda _: None) == []
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "failed" and job["error_code"] == "worker_lost"
    assert job["attempts"] == 3
    assert "started 3 times" in job["error"] and "submit it again" in job["error"]


def test_a_resumed_job_in_process_ends_like_an_uninterrupted_one(client, settings, db, digits_zip):
    hp = {"epochs": 4, "image_size": 32, "batch_size": 8, "learning_rate": 0.01}
    whole = running_job(client, db, digits_zip, heartbeat_age_s=0, **hp)
    with db.session_scope() as s:  # back to queued: execute_job claims it itself
        s.get_one(type(repo.get(s, whole)), whole).status = "queued"
    assert execute_job(whole, settings, db) == "succeeded"

    # The same spec, "killed" after epoch 3 (its checkpoint holds epoch 2): what a dead worker
    # leaves behind is its checkpoint folder, a running row with a stale heartbeat, metric rows.
    job_id = running_job(client, db, digits_zip, heartbeat_age_s=0, **hp)
    from app.engine import Hyperparameters, run_training
    from app.engine.errors import TrainingCancelled
    from worker.runner import _dataset_splits, _model_source  # the runner's own inputs

    class Die(DatabaseProgress):
        def on_epoch_end(self, metrics) -> None:  # type: ignore[no-untyped-def]
            super().on_epoch_end(metrics)
            if metrics.epoch == 3:
                raise TrainingCancelled

    with db.session_scope() as s:
        job = repo.get(s, job_id)
        source, _ = _model_source(s, settings, JobCreate.model_validate(job.spec))
        data, _ = _dataset_splits(s, settings, job)
    with contextlib.suppress(TrainingCancelled):
        run_training(source=source, strategy="finetune", data=data,
                     hparams=Hyperparameters(**job.spec["hyperparameters"]),
                     callbacks=[Die(db, job_id, interval_s=0)], device="cpu",
                     checkpoint_dir=settings.artifacts.path(f"checkpoints/{job_id}"))  # fmt: skip
    with db.session_scope() as s:
        repo.set_progress(s, job_id, heartbeat_at=utcnow() - timedelta(seconds=3600))
    assert recover_stale_jobs(settings, db, lambda _: None) == [job_id]
    assert execute_job(job_id, settings, db) == "succeeded"

    a, b = client.get(f"/v1/jobs/{whole}").json(), client.get(f"/v1/jobs/{job_id}").json()
    assert b["attempts"] == 2 and b["status"] == "succeeded"
    ma = client.get(f"/v1/jobs/{whole}/metrics").json()["epochs"]
    mb = client.get(f"/v1/jobs/{job_id}/metrics").json()["epochs"]
    keys = ("epoch", "train_loss", "val_loss", "val_accuracy", "learning_rate")
    assert [[m[k] for k in keys] for m in mb] == [[m[k] for k in keys] for m in ma]
    assert b["model_id"] and a["model_id"] != b["model_id"]
    checkpoints = settings.artifacts.path(settings.artifacts.checkpoint_key(job_id))
    assert not checkpoints.exists()  # cleared when the job ended
    with db.session_scope() as s:
        assert s.query(JobMetric).filter_by(job_id=job_id).count() == 4


def test_the_heartbeat_thread_beats_while_the_job_runs(client, settings, db, digits_zip):
    job_id = running_job(client, db, digits_zip, heartbeat_age_s=3600)
    import time

    with JobHeartbeat(db, job_id, attempt=1, every_s=0.05):
        time.sleep(0.3)
    assert recover_stale_jobs(settings, db, lambda _: None) == []  # fresh again


def test_progress_callback_stops_a_run_whose_job_moved_on(client, settings, db, digits_zip):
    job_id = running_job(client, db, digits_zip, heartbeat_age_s=0)
    progress = DatabaseProgress(db, job_id, interval_s=0, attempt=1)
    assert progress.should_stop() is False
    with db.session_scope() as s:  # taken for dead, requeued and claimed by another worker
        repo.set_progress(s, job_id, status="queued")
        assert repo.claim(s, job_id) == 2
    progress._last_poll = 0.0
    assert progress.should_stop() is True


def test_progress_callback_sees_cancel(client, settings, db, digits_zip):
    job_id = running_job(client, db, digits_zip, heartbeat_age_s=3600)
    progress = DatabaseProgress(db, job_id, interval_s=0)
    assert progress.should_stop() is False
    client.post(f"/v1/jobs/{job_id}/cancel")
    progress._last_poll = 0.0  # the next poll is due
    assert progress.should_stop() is True
