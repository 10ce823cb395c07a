"""A model trained on a dataset whose validation set leaks into train says so in its metrics."""

from __future__ import annotations

import uuid

from tests.api.test_dataset_quality import leaky_zip, post
from worker.runner import execute_job


def test_model_metrics_carry_the_leak_fraction(client, settings, db, tmp_path, digits_zip):
    spec = {
        "strategy": "finetune",
        "base_model": "timm:test_resnet",
        "pretrained": False,
        "hyperparameters": {"epochs": 1, "image_size": 32, "batch_size": 4},
    }
    fractions = {}
    for name, archive in (("leaky", leaky_zip(tmp_path)), ("clean", digits_zip(per_class=4))):
        dataset_id = post(client, archive).json()["id"]
        job_id = client.post("/v1/jobs", json={**spec, "dataset_id": dataset_id}).json()["id"]
        assert execute_job(uuid.UUID(job_id), settings, db) == "succeeded"
        job = client.get(f"/v1/jobs/{job_id}").json()
        model = client.get(f"/v1/models/{job['model_id']}").json()
        fractions[name] = (model["metrics"]["val_leak_fraction"], job["latest_metrics"])
    assert fractions["leaky"][0] == 0.5 and fractions["leaky"][1]["val_leak_fraction"] == 0.5
    assert fractions["clean"][0] == 0.0
