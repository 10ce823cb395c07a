"""A worker killed mid-job (SIGKILL: no warm shutdown) loses nothing: the job goes back to the
queue and resumes from its last checkpoint, ending with the metrics of an uninterrupted run."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from tests.e2e.conftest import BIN, Service, start, start_stack, stop, upload_file, wait_for_job

pytestmark = pytest.mark.e2e

FAST_RECOVERY = {"TRANSFERLAB_STALE_JOB_AFTER_S": "3", "TRANSFERLAB_JOB_HEARTBEAT_S": "0.5"}
KEYS = ("epoch", "phase", "train_loss", "val_loss", "val_accuracy", "learning_rate")


def spec(dataset_id: str) -> dict:
    return {
        "strategy": "finetune", "base_model": "timm:test_resnet", "pretrained": False,
        "dataset_id": dataset_id, "name": "crash",
        "hyperparameters": {"epochs": 8, "image_size": 32, "batch_size": 8,
                            "augmentation": "light"},
    }  # fmt: skip


def metrics(c, job_id: str) -> list[list]:
    return [[m[k] for k in KEYS] for m in c.get(f"/v1/jobs/{job_id}/metrics").json()["epochs"]]


def wait_for_epoch(c, job_id: str, epoch: int, service: Service, step: int = 0) -> None:
    """Until the job's progress reaches ``step`` of ``epoch``."""
    deadline = time.monotonic() + 120
    while True:
        progress = c.get(f"/v1/jobs/{job_id}").json()["progress"]
        if (progress["epoch"], progress["step"]) >= (epoch, step):
            return
        assert time.monotonic() < deadline, service.log_text()
        time.sleep(0.05)


def wait_for_attempt(c, job_id: str, attempt: int, service: Service) -> float:
    """Seconds until the job runs its ``attempt``-th time."""
    start = time.monotonic()
    while True:
        job = c.get(f"/v1/jobs/{job_id}").json()
        if job["attempts"] >= attempt and job["status"] == "running":
            return time.monotonic() - start
        assert job["status"] in ("running", "queued"), job
        assert time.monotonic() - start < 90, service.log_text()
        time.sleep(0.1)


def test_a_killed_workers_job_resumes_on_postgres_redis_celery(
    postgres_url, redis_url, tmp_path, digits_zip
):
    service = start_stack(postgres_url, redis_url, tmp_path, **FAST_RECOVERY)
    try:
        with service.client() as c:
            dataset = upload_file(c, digits_zip(classes=(0, 1, 2), per_class=40, name="crash.zip"))
            whole = wait_for_job(c, c.post("/v1/jobs", json=spec(dataset["id"])).json()["id"])
            assert whole["status"] == "succeeded", service.log_text()

            job_id = c.post("/v1/jobs", json=spec(dataset["id"])).json()["id"]
            wait_for_epoch(c, job_id, 4, service)  # epochs 1-3 done, the checkpoint holds 3
            worker = service.processes[1]
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
            killed = time.monotonic()
            service.processes[1] = start(
                [str(BIN / "transferlab"), "worker"], service.env, service.logs / "worker2.log"
            )
            wait_for_attempt(c, job_id, 2, service)
            print(f"kill -> resumed: {time.monotonic() - killed:.1f} s")
            job = wait_for_job(c, job_id, timeout=120)
            assert job["status"] == "succeeded", service.log_text()
            assert job["attempts"] == 2 and "no heartbeat" in job["restart_reason"]
            assert metrics(c, job_id) == metrics(c, whole["id"])
            versions = c.get("/v1/models", params={"name": "crash"}).json()["items"]
            assert [v["job_id"] for v in versions].count(job_id) == 1
            assert job["model_id"] in {v["id"] for v in versions}
    finally:
        service.stop()


def test_a_killed_serve_resumes_its_job_when_started_again(tmp_path, digits_zip):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRANSFERLAB_")}
    # A state after every step (interval 0) and fine-grained progress: the kill lands inside
    # epoch 4, and the job resumes from the middle of it.
    env |= {"TRANSFERLAB_DATA_DIR": str(tmp_path / "data"), "TRANSFERLAB_LOADER_WORKERS": "0",
            "TRANSFERLAB_TORCH_THREADS": "1", "TRANSFERLAB_CHECKPOINT_INTERVAL_S": "0",
            "TRANSFERLAB_PROGRESS_INTERVAL_S": "0", **FAST_RECOVERY}  # fmt: skip
    logs = tmp_path / "logs"
    logs.mkdir()

    def serve(name: str) -> Service:
        from tests.e2e.conftest import free_port, wait_ready

        port = free_port()
        p = start([str(BIN / "transferlab"), "serve", "--port", str(port)], env, logs / name)
        s = Service(url=f"http://127.0.0.1:{port}", env=env, logs=logs, processes=[p])
        try:
            wait_ready(s.url, [p], s.log_text)
        except BaseException:
            stop(p)
            raise
        return s

    first = serve("serve1.log")
    try:
        first.api_key = re.search(
            r"^  (tl_\S+)$", (logs / "serve1.log").read_text(), re.MULTILINE
        ).group(1)
        with first.client() as c:
            dataset = upload_file(c, digits_zip(classes=(0, 1, 2), per_class=40, name="s.zip"))
            whole = wait_for_job(c, c.post("/v1/jobs", json=spec(dataset["id"])).json()["id"])
            assert whole["status"] == "succeeded", first.log_text()
            job_id = c.post("/v1/jobs", json=spec(dataset["id"])).json()["id"]
            wait_for_epoch(c, job_id, 4, first, step=3)
        os.kill(first.processes[0].pid, signal.SIGKILL)  # its worker dies with it
        first.processes[0].wait()
    finally:
        first.stop()

    second = serve("serve2.log")
    second.api_key = first.api_key
    try:
        with second.client() as c:
            job = wait_for_job(c, job_id, timeout=180)
            assert job["status"] == "succeeded", second.log_text()
            assert job["attempts"] == 2
            assert metrics(c, job_id) == metrics(c, whole["id"])
        log = (logs / "serve2.log").read_text()
        resumed = re.search(r"resumes after epoch (\d+) and (\d+) steps", log)
        assert resumed is not None, second.log_text()
        assert int(resumed.group(1)) >= 3 and int(resumed.group(2)) >= 1  # inside an epoch
    finally:
        second.stop()
