"""Failed jobs get a stable error_code, logged at ERROR; the worker's metrics, liveness beat and
healthcheck. In-process on real SQLite and torch, as tests/worker/test_runner.py."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import torch
from prometheus_client import REGISTRY

from app.db.models import Job
from app.db.repositories import jobs as jobs_repo
from app.engine import EngineError
from app.observability.logs import ContextFilter
from app.queue import create_celery
from tests.api.conftest import upload
from tests.worker.test_recovery import running_job
from tests.worker.test_runner import submit
from worker import metrics
from worker.healthcheck import check
from worker.liveness import LivenessBeat
from worker.recovery import recover_stale_jobs
from worker.runner import JobInputError, error_code, execute_job

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def dataset_id(client, digits_zip) -> str:
    return upload(client, digits_zip(per_class=10, name="obs.zip")).json()["id"]


@pytest.fixture
def restore_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def stored(db, job_id: str) -> Job:
    with db.session_scope() as s:
        job = jobs_repo.get(s, uuid.UUID(job_id))
        assert job is not None
        return job


@pytest.fixture
def failures(caplog):
    """The ERROR records of failed jobs, with the job id the log context adds."""
    caplog.handler.addFilter(ContextFilter())
    caplog.set_level(logging.INFO, logger="worker")
    loggers = ("worker.runner", "worker.recovery")

    def records() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.levelno == logging.ERROR and r.name in loggers]

    return records


def test_engine_error_is_invalid_spec(client, settings, db, dataset_id, failures):
    job_id = submit(client, dataset_id)
    before = {
        "failed": sample(
            "transferlab_worker_jobs_finished_total", status="failed", strategy="finetune"
        ),
        "code": sample("transferlab_worker_job_failures_total", error_code="invalid_spec"),
        "timed": sample(
            "transferlab_worker_job_duration_seconds_count", status="failed", strategy="finetune"
        ),
    }
    bad_device = settings.model_copy(update={"device": "abacus"})  # EngineError: unknown device
    assert execute_job(uuid.UUID(job_id), bad_device, db) == "failed"

    job = stored(db, job_id)
    assert (job.status, job.error_code) == ("failed", "invalid_spec")
    assert "abacus" in (job.error or "")
    (record,) = failures()
    assert record.error_code == "invalid_spec" and record.job_id == job_id
    assert not record.exc_info  # the user's mistake: a message, no traceback
    after = {
        "failed": sample(
            "transferlab_worker_jobs_finished_total", status="failed", strategy="finetune"
        ),
        "code": sample("transferlab_worker_job_failures_total", error_code="invalid_spec"),
        "timed": sample(
            "transferlab_worker_job_duration_seconds_count", status="failed", strategy="finetune"
        ),
    }
    assert {k: after[k] - before[k] for k in before} == {"failed": 1, "code": 1, "timed": 1}
    assert sample("transferlab_worker_job_running") == 0


def test_a_stored_spec_that_no_longer_validates_is_invalid_spec(
    client, settings, db, dataset_id, failures
):
    job_id = submit(client, dataset_id)
    with db.session_scope() as s:  # as if stored before a rule changed
        job = jobs_repo.get(s, uuid.UUID(job_id))
        job.spec = {**job.spec, "hyperparameters": {"no_such_field": 1}}
    assert execute_job(uuid.UUID(job_id), settings, db) == "failed"
    job = stored(db, job_id)
    assert job.error_code == "invalid_spec"
    assert "no longer valid" in (job.error or "") and "submit it again" in (job.error or "")


def test_unexpected_exception_is_internal_error(
    client, settings, db, dataset_id, failures, monkeypatch
):
    import worker.runner

    job_id = submit(client, dataset_id)

    def broken(*_args, **_kwargs):  # a bug in our own code, not a dependency standing in
        raise TypeError("a bug")

    monkeypatch.setattr(worker.runner, "_dataset_splits", broken)
    assert execute_job(uuid.UUID(job_id), settings, db) == "failed"

    job = stored(db, job_id)
    assert job.error_code == "internal_error"
    assert (job.error or "").startswith("internal error (TypeError")
    (record,) = failures()
    assert record.error_code == "internal_error" and record.job_id == job_id
    assert record.exc_info is not None  # a bug: the traceback goes to the log


def test_deleted_dataset_files_are_dataset_missing(client, settings, db, dataset_id, failures):
    job_id = submit(client, dataset_id)
    shutil.rmtree(settings.layout.dataset_dir(dataset_id))
    assert execute_job(uuid.UUID(job_id), settings, db) == "failed"
    assert stored(db, job_id).error_code == "dataset_missing"
    assert failures()[0].error_code == "dataset_missing"


def test_an_engine_error_may_name_its_own_code():
    # For app.engine's weights-download failure (pretrained_weights_unavailable); the end-to-end
    # case is tests/worker/test_runner.py's unavailable-weights test (offline: ~45 s here).
    class WeightsUnavailable(EngineError):
        code = "pretrained_weights_unavailable"

    assert error_code(WeightsUnavailable("no internet")) == "pretrained_weights_unavailable"
    assert error_code(EngineError("bad")) == "invalid_spec"
    assert error_code(JobInputError("gone", code="dataset_missing")) == "dataset_missing"
    assert error_code(KeyError("x")) == "internal_error"


def test_a_job_out_of_attempts_is_worker_lost(client, settings, db, digits_zip, failures):
    once = settings.model_copy(update={"max_job_attempts": 1})
    dead = running_job(client, db, digits_zip, heartbeat_age_s=settings.stale_job_after_s + 5)
    lost = sample("transferlab_worker_job_failures_total", error_code="worker_lost")
    assert recover_stale_jobs(once, db, enqueue=lambda _: None) == []
    assert stored(db, str(dead)).error_code == "worker_lost"
    (record,) = failures()
    assert record.error_code == "worker_lost" and record.job_id == str(dead)
    assert sample("transferlab_worker_job_failures_total", error_code="worker_lost") == lost + 1


def test_succeeded_job_has_no_code_and_sets_throughput(
    client, settings, db, dataset_id, restore_torch_threads
):
    job_id = submit(client, dataset_id, hyperparameters={"epochs": 1, "image_size": 32})
    done = sample("transferlab_worker_jobs_finished_total", status="succeeded", strategy="finetune")
    metrics.IMAGES_PER_SECOND.set(0)
    one_thread = settings.model_copy(update={"torch_threads": 1})
    assert execute_job(uuid.UUID(job_id), one_thread, db) == "succeeded"
    job = stored(db, job_id)
    assert (job.error, job.error_code) == (None, None)
    after = sample(
        "transferlab_worker_jobs_finished_total", status="succeeded", strategy="finetune"
    )
    assert after == done + 1
    assert sample("transferlab_worker_images_per_second") > 0


def test_worker_metrics_endpoint():
    server = metrics.serve_metrics(0, addr="127.0.0.1")  # port 0: any free one
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    for name in (
        "transferlab_worker_job_running",
        "transferlab_worker_images_per_second",
        "transferlab_worker_job_duration_seconds",
    ):
        assert f"# TYPE {name} " in text


def healthcheck(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "worker.healthcheck", "--file", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_healthcheck_passes_on_a_fresh_beat_and_fails_on_a_stale_or_missing_one(tmp_path):
    alive = tmp_path / "worker.alive"
    missing = healthcheck(alive)
    assert missing.returncode == 1 and "does not exist" in missing.stderr

    alive.write_text("1\n")
    fresh = healthcheck(alive)
    assert fresh.returncode == 0, fresh.stderr

    old = time.time() - 61
    os.utime(alive, (old, old))
    stale = healthcheck(alive)
    assert stale.returncode == 1 and "61 s old" in stale.stderr


def test_liveness_beat_touches_the_file_while_the_broker_answers(settings, tmp_path):
    alive = tmp_path / "worker.alive"
    beat = LivenessBeat(create_celery(settings), path=alive, interval_s=0.05).start()
    try:
        deadline = time.monotonic() + 10
        while not alive.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert check(alive, max_age_s=60)[0]
    finally:
        beat.stop(timeout=5)


def test_liveness_beat_stops_when_the_broker_is_unreachable(settings, tmp_path):
    alive = tmp_path / "worker.alive"
    unreachable = settings.model_copy(update={"broker_url": "redis://127.0.0.1:9/0"})
    beat = LivenessBeat(create_celery(unreachable), path=alive, interval_s=60)
    assert beat.beat() is False and not alive.exists()
