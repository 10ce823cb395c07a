"""The job runner, in-process, on real SQLite and real torch (no Celery: see tests/e2e for that)."""

from __future__ import annotations

import io
import threading
import time
import uuid
import zipfile
from datetime import datetime, timedelta

import pytest
import torch

from app.db.models import JobMetric, ModelVersion
from tests.api.conftest import error_code, upload
from worker.runner import execute_job


def submit(client, dataset_id: str, **overrides) -> str:
    body = {
        "strategy": "finetune",
        "base_model": "timm:test_resnet",
        "pretrained": False,
        "dataset_id": dataset_id,
        "name": "digits",
        "hyperparameters": {"epochs": 2, "image_size": 32, "batch_size": 8, "learning_rate": 0.01},
    }
    body.update(overrides)
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    return r.json()["id"]


@pytest.fixture
def dataset_id(client, digits_zip) -> str:
    return upload(client, digits_zip(per_class=10, name="runner.zip")).json()["id"]


@pytest.fixture
def restore_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_finetune_job_end_to_end_in_process(
    client, settings, db, dataset_id, digits_zip, restore_torch_threads
):
    job_id = submit(client, dataset_id)
    one_thread = settings.model_copy(update={"torch_threads": 1})
    assert execute_job(uuid.UUID(job_id), one_thread, db) == "succeeded"

    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["error"] is None
    assert job["progress"]["epoch"] == 2 and job["progress"]["fraction"] == 1.0
    assert job["duration_seconds"] > 0
    for key in ("created_at", "started_at", "finished_at"):  # UTC offsets, even on SQLite
        assert datetime.fromisoformat(job[key]).utcoffset() == timedelta(0)
    metrics = client.get(f"/v1/jobs/{job_id}/metrics").json()["epochs"]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert all(m["images_per_second"] > 0 and m["train_loss"] > 0 for m in metrics)

    model = client.get(f"/v1/models/{job['model_id']}").json()
    assert (model["name"], model["version"]) == ("digits", 1)
    assert model["class_names"] == ["digit_0", "digit_1", "digit_2"]
    lineage = model["lineage"]
    dataset = client.get(f"/v1/datasets/{dataset_id}").json()
    assert lineage["dataset_sha256"] == dataset["sha256"]
    assert lineage["base_model"] == "timm:test_resnet"
    assert lineage["job_spec"]["hyperparameters"]["epochs"] == 2
    assert set(lineage["libraries"]) >= {"torch", "timm", "torchvision", "transferlab"}
    assert lineage["torch_threads"] == 1 == torch.get_num_threads()
    assert len(model["metrics"]["confusion_matrix"]) == 3

    # Prediction uses the stored model with its evaluation preprocessing.
    archive = zipfile.ZipFile(digits_zip(per_class=10, name="runner.zip"))
    files = [("files", (n, archive.read(n), "image/png")) for n in archive.namelist()[:3]]
    r = client.post(f"/v1/models/{model['id']}/predict", files=files, params={"top_k": 2})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["filename"] for p in preds] == archive.namelist()[:3]
    for p in preds:
        assert len(p["top_k"]) == 2
        assert p["top_k"][0]["probability"] >= p["top_k"][1]["probability"]
        assert p["top_k"][0]["label"] in model["class_names"]
    # The loaded model is cached in the API process: a second request reads no weights.
    again = client.post(f"/v1/models/{model['id']}/predict", files=files, params={"top_k": 2})
    assert again.json() == r.json()
    assert client.app.state.model_cache.loads == 1

    # Download: a zip holding the weights and the card.
    d = client.get(f"/v1/models/{model['id']}/download")
    assert d.status_code == 200
    assert set(zipfile.ZipFile(io.BytesIO(d.content)).namelist()) == {
        "model.safetensors", "model.json"
    }  # fmt: skip

    # A second version under the same name, started from the first: lineage points back.
    child = submit(client, dataset_id, base_model=f"model:{model['id']}", strategy="linear_probe")
    assert execute_job(uuid.UUID(child), settings, db) == "succeeded"
    child_model = client.get(f"/v1/models/{client.get(f'/v1/jobs/{child}').json()['model_id']}")
    assert child_model.json()["version"] == 2
    assert child_model.json()["parent_id"] == model["id"]


def test_second_delivery_does_nothing(client, settings, db, dataset_id):
    job_id = uuid.UUID(submit(client, dataset_id, hyperparameters={"epochs": 1, "image_size": 32}))
    assert execute_job(job_id, settings, db) == "succeeded"
    assert execute_job(job_id, settings, db) == "skipped"
    with db.session_scope() as s:
        assert s.query(ModelVersion).filter_by(job_id=job_id).count() == 1
        assert s.query(JobMetric).filter_by(job_id=job_id).count() == 1


def test_cancelled_while_queued_is_never_run(client, settings, db, dataset_id):
    job_id = submit(client, dataset_id)
    client.post(f"/v1/jobs/{job_id}/cancel")
    assert execute_job(uuid.UUID(job_id), settings, db) == "skipped"
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"


def test_cancel_running_job_stops_at_a_step_boundary(client, settings, db, dataset_id):
    job_id = submit(client, dataset_id, hyperparameters={"epochs": 500, "image_size": 32})
    outcome: list[str] = []
    runner = threading.Thread(
        target=lambda: outcome.append(execute_job(uuid.UUID(job_id), settings, db))
    )
    runner.start()
    deadline = time.monotonic() + 60
    while client.get(f"/v1/jobs/{job_id}").json()["progress"]["epoch"] < 2:
        assert time.monotonic() < deadline, "job never got going"
        time.sleep(0.05)
    r = client.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 202 and r.json()["cancel_requested"] is True
    runner.join(timeout=60)
    assert outcome == ["cancelled"]
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "cancelled" and job["model_id"] is None
    assert job["progress"]["epoch"] < 500
    with db.session_scope() as s:
        assert s.query(ModelVersion).count() == 0


def test_unavailable_pretrained_weights_fail_with_an_actionable_message(
    client, settings, db, dataset_id, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # this machine has no internet; fail fast
    job_id = submit(client, dataset_id, base_model="timm:resnet18", pretrained=True)
    assert execute_job(uuid.UUID(job_id), settings, db) == "failed"
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "failed"
    assert "pretrained" in job["error"] and "pretrained=false" in job["error"]
    assert job["error_code"] == "pretrained_weights_unavailable"
    assert client.get("/v1/models").json()["total"] == 0


def test_predict_errors(client, settings, db, dataset_id):
    job_id = submit(client, dataset_id, hyperparameters={"epochs": 1, "image_size": 32})
    execute_job(uuid.UUID(job_id), settings, db)
    model_id = client.get(f"/v1/jobs/{job_id}").json()["model_id"]

    r = client.post(f"/v1/models/{model_id}/predict", files=[("files", ("a.png", b"nope"))])
    assert r.status_code == 422 and error_code(r) == "image_invalid"
    assert "a.png" in r.json()["error"]["message"]

    missing = f"/v1/models/{uuid.uuid4()}/predict"
    r = client.post(missing, files=[("files", ("a.png", b"nope"))])
    assert r.status_code == 404 and error_code(r) == "model_not_found"

    r = client.post(f"/v1/models/{model_id}/predict")
    assert r.status_code == 422 and error_code(r) == "validation_error"


def test_every_job_kind_has_a_runner_and_every_runner_a_kind():
    from app.services.job_kinds import list_job_kinds
    from worker.runner import RUNNERS

    assert set(RUNNERS) == {kind.name for kind in list_job_kinds()} == {"train", "extract_features"}


def test_loader_workers_default_by_device(settings):
    from worker.runner import loader_workers

    assert loader_workers(settings.model_copy(update={"loader_workers": None})) == 2  # CPU here
    assert loader_workers(settings.model_copy(update={"loader_workers": 0})) == 0
    assert loader_workers(settings.model_copy(update={"loader_workers": 7})) == 7
