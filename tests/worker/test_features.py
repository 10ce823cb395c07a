"""extract_features jobs: embeddings of every image, stored and downloadable."""

from __future__ import annotations

import csv
import io
import json
import uuid
import zipfile

import numpy as np
import pytest

from tests.api.conftest import error_code, upload
from worker.runner import execute_job


@pytest.fixture
def dataset(client, digits_zip) -> dict:
    return upload(client, digits_zip(per_class=6, name="feat.zip")).json()


def submit(client, dataset_id: str, **options) -> str:
    body = {
        "strategy": "extract_features",
        "base_model": "timm:test_resnet",
        "pretrained": False,
        "dataset_id": dataset_id,
        "options": options,
        "hyperparameters": {"image_size": 32, "batch_size": 8},
    }
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def download(client, job_id: str) -> dict:
    r = client.get(f"/v1/jobs/{job_id}/features")
    assert r.status_code == 200, r.text
    zf = zipfile.ZipFile(io.BytesIO(r.content))
    return {
        "features": np.load(io.BytesIO(zf.read("features.npy"))),
        "index": list(csv.DictReader(io.StringIO(zf.read("index.csv").decode()))),
        "meta": json.loads(zf.read("meta.json")),
    }


def test_pre_logit_features_of_every_image(client, settings, db, dataset):
    job_id = submit(client, dataset["id"])
    assert execute_job(uuid.UUID(job_id), settings, db) == "succeeded"
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["model_id"] is None  # no model version: the artifact is the embeddings
    assert job["progress"]["fraction"] == 1.0
    out = download(client, job_id)
    feats, index, meta = out["features"], out["index"], out["meta"]
    assert feats.dtype == np.float32 and feats.shape[0] == dataset["num_images"] == 18
    assert np.isfinite(feats).all() and feats.std(axis=0).max() > 0  # not a constant
    assert job["latest_metrics"] == {"num_images": 18, "dim": feats.shape[1]}
    assert [int(r["row"]) for r in index] == list(range(18))
    assert {r["class"] for r in index} == {"digit_0", "digit_1", "digit_2"}
    assert all((settings.layout.dataset_dir(dataset["id"]) / r["path"]).exists() for r in index)
    assert meta["feature_layer"] == "pre_logits" and meta["shape"] == list(feats.shape)
    assert meta["dataset_sha256"] == dataset["sha256"]
    # Same image, same features: the eval transform has no randomness.
    again = submit(client, dataset["id"])
    execute_job(uuid.UUID(again), settings, db)
    np.testing.assert_array_equal(download(client, again)["features"], feats)


def test_intermediate_stage_features_have_that_stage_width(client, settings, db, dataset):
    import timm

    job_id = submit(client, dataset["id"], features="stage:1")
    assert execute_job(uuid.UUID(job_id), settings, db) == "succeeded"
    feats = download(client, job_id)["features"]
    channels = timm.create_model("test_resnet").feature_info[1]["num_chs"]
    assert feats.shape == (18, channels)


def test_feature_job_errors(client, settings, db, dataset):
    r = client.post(
        "/v1/jobs",
        json={"strategy": "extract_features", "base_model": "timm:test_resnet",
              "dataset_id": dataset["id"], "options": {"features": "layer4"}},
    )  # fmt: skip
    assert r.status_code == 422 and error_code(r) == "invalid_option"
    # A stage the backbone does not have fails the job with a message naming the choice.
    job_id = submit(client, dataset["id"], features="stage:42")
    assert execute_job(uuid.UUID(job_id), settings, db) == "failed"
    assert "stage" in client.get(f"/v1/jobs/{job_id}").json()["error"]
    r = client.get(f"/v1/jobs/{job_id}/features")
    assert r.status_code == 409 and error_code(r) == "no_features"
    # A training job has no features to download.
    train = client.post(
        "/v1/jobs",
        json={
            "strategy": "finetune",
            "base_model": "timm:test_resnet",
            "dataset_id": dataset["id"],
        },
    ).json()
    r = client.get(f"/v1/jobs/{train['id']}/features")
    assert r.status_code == 409 and error_code(r) == "no_features"
