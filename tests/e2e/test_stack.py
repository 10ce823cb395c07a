"""The production topology: API process + Celery worker process + Postgres + Redis."""

from __future__ import annotations

import time
import uuid
import zipfile

import pytest
from sqlalchemy import create_engine, text

from tests.e2e.conftest import upload_file, wait_for_job

pytestmark = pytest.mark.e2e

HP = {"epochs": 3, "image_size": 32, "batch_size": 8, "learning_rate": 0.01}


def predict_first_images(client, model_id: str, archive_path, n: int = 4) -> list[dict]:
    archive = zipfile.ZipFile(archive_path)
    names = [m for m in archive.namelist() if m.endswith(".png")][:n]
    files = [("files", (m, archive.read(m), "image/png")) for m in names]
    r = client.post(f"/v1/models/{model_id}/predict", files=files, params={"top_k": 3})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["filename"] for p in preds] == names
    return preds


@pytest.fixture(scope="module")
def finetuned(stack, digits_zip) -> dict:
    path = digits_zip(classes=(0, 1, 2), per_class=15, name="e2e.zip")
    with stack.client() as c:
        dataset = upload_file(c, path)
        r = c.post(
            "/v1/jobs",
            json={
                "strategy": "finetune",
                "base_model": "timm:test_resnet",
                "pretrained": False,
                "dataset_id": dataset["id"],
                "name": "e2e-digits",
                "hyperparameters": HP,
            },
        )
        assert r.status_code == 202, r.text
        job = wait_for_job(c, r.json()["id"])
    assert job["status"] == "succeeded", f"{job}\n{stack.log_text()}"
    return {"job": job, "dataset": dataset, "archive": path}


def test_readyz_sees_postgres_and_redis(stack):
    with stack.client() as c:
        body = c.get("/readyz").json()
    assert body == {"status": "ready", "checks": {"database": "ok", "broker": "ok"}}


def test_finetune_job_runs_on_the_celery_worker(stack, finetuned, postgres_url):
    job = finetuned["job"]
    with stack.client() as c:
        metrics = c.get(f"/v1/jobs/{job['id']}/metrics").json()["epochs"]
        assert [m["epoch"] for m in metrics] == [1, 2, 3]
        model = c.get(f"/v1/models/{job['model_id']}").json()
        preds = predict_first_images(c, model["id"], finetuned["archive"])
    assert model["lineage"]["dataset_sha256"] == finetuned["dataset"]["sha256"]
    assert all(p["top_k"][0]["label"] in model["class_names"] for p in preds)
    # The version, its lineage and the per-epoch metrics really are in Postgres.
    engine = create_engine(postgres_url)
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT name, version, lineage FROM model_versions WHERE id = :id"),
            {"id": uuid.UUID(model["id"])},
        ).one()
        n_metrics = conn.execute(
            text("SELECT count(*) FROM job_metrics WHERE job_id = :id"),
            {"id": uuid.UUID(job["id"])},
        ).scalar()
    engine.dispose()
    assert (row.name, row.version) == ("e2e-digits", 1)
    assert row.lineage["job_spec"]["strategy"] == "finetune"
    assert row.lineage["torch_threads"] == 1  # TRANSFERLAB_TORCH_THREADS reached the worker
    assert n_metrics == 3


def test_linear_probe_from_the_registered_model(stack, finetuned, digits_zip):
    path = digits_zip(classes=(3, 4, 5), per_class=15, name="e2e-target.zip")
    with stack.client() as c:
        dataset = upload_file(c, path)
        r = c.post(
            "/v1/jobs",
            json={
                "strategy": "linear_probe",
                "base_model": f"model:{finetuned['job']['model_id']}",
                "dataset_id": dataset["id"],
                "hyperparameters": {**HP, "epochs": 10},
            },
        )
        assert r.status_code == 202, r.text
        job = wait_for_job(c, r.json()["id"])
        assert job["status"] == "succeeded", f"{job}\n{stack.log_text()}"
        model = c.get(f"/v1/models/{job['model_id']}").json()
        assert model["parent_id"] == finetuned["job"]["model_id"]
        assert model["class_names"] == ["digit_3", "digit_4", "digit_5"]
        predict_first_images(c, model["id"], path)


def test_cancel_a_running_job(stack, finetuned):
    with stack.client() as c:
        r = c.post(
            "/v1/jobs",
            json={
                "strategy": "finetune",
                "base_model": "timm:test_resnet",
                "pretrained": False,
                "dataset_id": finetuned["dataset"]["id"],
                "hyperparameters": {**HP, "epochs": 1000},
            },
        )
        job_id = r.json()["id"]
        deadline = time.monotonic() + 60
        while c.get(f"/v1/jobs/{job_id}").json()["status"] != "running":
            assert time.monotonic() < deadline, stack.log_text()
            time.sleep(0.1)
        assert c.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
        job = wait_for_job(c, job_id, timeout=60)
    assert job["status"] == "cancelled"
    assert job["model_id"] is None
