"""A worker killed mid-job (SIGKILL: no warm shutdown): the next worker fails the orphaned job."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.e2e.conftest import BIN, start, start_stack, upload_file, wait_for_job

pytestmark = pytest.mark.e2e


def test_job_of_a_killed_worker_is_failed_by_the_next_worker(
    postgres_url, redis_url, tmp_path, digits_zip
):
    service = start_stack(postgres_url, redis_url, tmp_path, TRANSFERLAB_STALE_JOB_AFTER_S="2")
    try:
        with service.client() as c:
            dataset = upload_file(c, digits_zip(classes=(0, 1), per_class=10, name="crash.zip"))
            job_id = c.post(
                "/v1/jobs",
                json={
                    "strategy": "finetune", "base_model": "timm:test_resnet",
                    "pretrained": False, "dataset_id": dataset["id"],
                    "hyperparameters": {"epochs": 1000, "image_size": 32, "batch_size": 8},
                },
            ).json()["id"]  # fmt: skip
            deadline = time.monotonic() + 60
            while c.get(f"/v1/jobs/{job_id}").json()["progress"]["epoch"] < 2:
                assert time.monotonic() < deadline, service.log_text()
                time.sleep(0.1)

            worker = service.processes[1]
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
            assert c.get(f"/v1/jobs/{job_id}").json()["status"] == "running"  # orphaned
            time.sleep(3)  # let the heartbeat go stale (limit 2 s)

            service.processes[1] = start(
                [str(BIN / "transferlab"), "worker"], service.env, service.logs / "worker2.log"
            )
            job = wait_for_job(c, job_id, timeout=60)
        assert job["status"] == "failed"
        assert "no heartbeat" in job["error"] and "submit the job again" in job["error"]
        assert job["model_id"] is None
    finally:
        service.stop()
