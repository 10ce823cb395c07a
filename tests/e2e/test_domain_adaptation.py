"""Domain adaptation end to end (issue 10): a dann job with an unlabeled target on the embedded
default, and one whose Celery worker is SIGKILLed mid-job on Postgres + Redis, which resumes with
the per-epoch metrics (dann's domain figures included) of an uninterrupted run."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from tests.e2e.conftest import BIN, start, start_serve, start_stack, upload_file, wait_for_job
from tests.e2e.test_worker_crash import FAST_RECOVERY, KEYS, wait_for_attempt, wait_for_epoch

pytestmark = pytest.mark.e2e


def upload_unlabeled(c, path) -> dict:
    with path.open("rb") as fh:
        r = c.post("/v1/datasets", files={"file": (path.name, fh)}, data={"kind": "unlabeled"})
    assert r.status_code == 201, r.text
    return r.json()


def dann(source: str, target: str, epochs: int, **extra) -> dict:
    return {
        "strategy": "dann", "base_model": "timm:test_resnet", "pretrained": False,
        "dataset_id": source, "target_dataset_id": target, "name": "dann",
        "hyperparameters": {"epochs": epochs, "image_size": 32, "batch_size": 8,
                            "augmentation": "light"},
        **extra,
    }  # fmt: skip


def epoch_metrics(c, job_id: str) -> list[list]:
    return [
        [*(m[k] for k in KEYS), m["extra"], m["eval_loss"], m["eval_accuracy"]]
        for m in c.get(f"/v1/jobs/{job_id}/metrics").json()["epochs"]
    ]


def test_a_dann_job_on_serve_reports_its_domain_accuracy(tmp_path, digits_zip, unlabeled_zip):
    service, banner, _ = start_serve(tmp_path, TRANSFERLAB_TORCH_THREADS="1")
    service.api_key = re.search(r"^  (tl_\S+)$", banner, re.MULTILINE).group(1)
    try:
        with service.client() as c:
            source = upload_file(c, digits_zip((0, 1, 2), per_class=10, name="da-src.zip"))
            target = upload_unlabeled(c, unlabeled_zip(count=16, name="da-tgt.zip"))
            assert target["kind"] == "unlabeled" and target["num_images"] == 16
            evaluation = upload_file(c, digits_zip((0, 2), per_class=4, name="da-eval.zip"))
            r = c.post("/v1/jobs", json=dann(source["id"], target["id"], 2,
                                             eval_dataset_id=evaluation["id"]))  # fmt: skip
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]
            # Queued or running: the target is in use.
            r = c.delete(f"/v1/datasets/{target['id']}")
            assert r.status_code == 409 and r.json()["error"]["code"] == "dataset_in_use"
            job = wait_for_job(c, job_id, timeout=180)
            assert job["status"] == "succeeded", f"{job}\n{service.log_text()}"
            assert (job["target_dataset_id"], job["eval_dataset_id"]) == (
                target["id"], evaluation["id"]
            )  # fmt: skip
            epochs = c.get(f"/v1/jobs/{job_id}/metrics").json()["epochs"]
            assert [e["epoch"] for e in epochs] == [1, 2]
            for e in epochs:
                assert 0.0 <= e["extra"]["domain_accuracy"] <= 1.0
                assert e["extra"]["domain_loss"] > 0 and e["extra"]["classification_loss"] > 0
            model = c.get(f"/v1/models/{job['model_id']}").json()
            assert model["lineage"]["target_dataset_id"] == target["id"]
            # The job has ended: now the target can go.
            assert c.delete(f"/v1/datasets/{target['id']}").status_code == 204
    finally:
        service.stop()


def test_a_killed_workers_dann_job_resumes_with_the_same_metrics(
    postgres_url, redis_url, tmp_path, digits_zip, unlabeled_zip
):
    service = start_stack(postgres_url, redis_url, tmp_path, **FAST_RECOVERY)
    try:
        with service.client() as c:
            source = upload_file(c, digits_zip((0, 1, 2), per_class=16, name="dcrash.zip"))
            target = upload_unlabeled(c, unlabeled_zip(count=24, name="dcrash-t.zip"))
            body = dann(source["id"], target["id"], 6)
            whole = wait_for_job(c, c.post("/v1/jobs", json=body).json()["id"])
            assert whole["status"] == "succeeded", service.log_text()

            job_id = c.post("/v1/jobs", json=body).json()["id"]
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
            job = wait_for_job(c, job_id, timeout=180)
            assert job["status"] == "succeeded", service.log_text()
            assert job["attempts"] == 2 and "no heartbeat" in job["restart_reason"]
            resumed, uninterrupted = epoch_metrics(c, job_id), epoch_metrics(c, whole["id"])
            assert len(resumed) == 6 and all("domain_accuracy" in m[len(KEYS)] for m in resumed)
            assert resumed == uninterrupted
    finally:
        service.stop()
