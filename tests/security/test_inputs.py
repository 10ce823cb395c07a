"""Bounded inputs: each finding of the attack on 1edb1da, refused with a documented code."""

from __future__ import annotations

import io
import json
import re
import uuid
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from app.db.models import ModelVersion
from app.main import create_app
from tests.api.conftest import bearer, error_code, queued_messages, upload
from worker.runner import execute_job

SPEC = {"strategy": "finetune", "base_model": "timm:test_resnet", "pretrained": False}


@pytest.fixture
def dataset_id(client, digits_zip) -> str:
    return upload(client, digits_zip(per_class=6, name="inputs.zip")).json()["id"]


def job(dataset_id: str, **extra) -> dict:
    return {**SPEC, "dataset_id": dataset_id, **extra}


@pytest.mark.parametrize(
    "name", ["/tmp/evil", "../x/bundle/y", "a/b", "a\\b", "name\n", ".hidden", "", "x" * 101]
)
def test_model_names_are_slugs(client, dataset_id, name):
    r = client.post("/v1/jobs", json=job(dataset_id, name=name))
    assert r.status_code == 422, r.text
    assert error_code(r) == "validation_error"
    assert r.json()["error"]["details"]["errors"][0]["field"] == "name"


def test_dataset_names_are_slugs_and_file_names_become_one(client, settings, digits_zip):
    r = upload(client, digits_zip(per_class=3, name="d.zip"), name="../../etc")
    assert r.status_code == 422 and error_code(r) == "validation_error"
    assert not any(settings.layout.datasets.iterdir())
    path = digits_zip(per_class=3, name="My Pets (v2).zip")
    assert upload(client, path).json()["name"] == "My-Pets-v2"


def train_one(client, settings, db, dataset_id: str, name: str) -> dict:
    r = client.post(
        "/v1/jobs",
        json=job(
            dataset_id,
            name=name,
            hyperparameters={"epochs": 1, "image_size": 32, "batch_size": 8},
        ),
    )
    job_id = r.json()["id"]
    assert execute_job(uuid.UUID(job_id), settings, db) == "succeeded"
    model_id = client.get(f"/v1/jobs/{job_id}").json()["model_id"]
    return client.get(f"/v1/models/{model_id}").json()


def test_a_model_name_never_becomes_a_path(client, settings, db, dataset_id, tmp_path):
    victim = train_one(client, settings, db, dataset_id, "victim")
    attacker = train_one(client, settings, db, dataset_id, "attacker")
    # Rows from before names were validated may hold anything: the download must still write
    # only inside the version's own folder and serve that version's weights.
    outside = tmp_path / "outside"
    hostile = {
        str(outside / "evil"): "absolute",
        f"../{victim['id']}/bundle/victim-v1": "into another version's bundle",
        'a"b/c': "quote and slash",
    }
    for name in hostile:
        with db.session_scope() as s:
            s.execute(
                update(ModelVersion)
                .where(ModelVersion.id == uuid.UUID(attacker["id"]))
                .values(name=name)
            )
        r = client.get(f"/v1/models/{attacker['id']}/download")
        assert r.status_code == 200, (name, r.text)
        disposition = r.headers["content-disposition"]
        assert re.fullmatch(r'attachment; filename="[A-Za-z0-9._-]+-v1\.zip"', disposition)
    assert not outside.exists()
    bundles = sorted(
        p.relative_to(settings.layout.root) for p in settings.layout.root.rglob("*.zip")
    )
    assert bundles == sorted(Path("models") / m["id"] / "bundle" / "model.zip" for m in (attacker,))
    victim_zip = zipfile.ZipFile(
        io.BytesIO(client.get(f"/v1/models/{victim['id']}/download").content)
    )
    with db.session_scope() as s:
        key = s.scalar(
            select(ModelVersion.artifact_key).where(ModelVersion.id == uuid.UUID(victim["id"]))
        )
    assert key == f"models/{victim['id']}"  # a key, not a path
    folder = settings.artifacts.path(key)
    assert victim_zip.read("model.safetensors") == (folder / "model.safetensors").read_bytes()


def test_json_bodies_are_capped(client, dataset_id, settings):
    huge = job(dataset_id, options={"freeze_patterns": ["x" * 100] * 3000})
    r = client.post("/v1/jobs", json=huge)
    assert r.status_code == 413 and error_code(r) == "body_too_large"
    assert client.get("/v1/jobs").json()["total"] == 0


@pytest.mark.parametrize(
    ("strategy", "options", "code"),
    [
        ("linear_probe", {"head": "mlp", "mlp_hidden": 1_000_000_000}, "invalid_option"),
        ("linear_probe", {"features": "stage:1\n"}, "validation_error"),  # not printable
        ("extract_features", {"features": "stage:1\n"}, "validation_error"),
        ("extract_features", {"features": "stage:1 "}, "invalid_option"),
        ("linear_probe", {"features": "stage:\u0661"}, "invalid_option"),
        ("l2sp", {"alpha": 1e10}, "validation_error"),
        ("l2sp", {"alpha": 1e8}, "invalid_option"),
        ("finetune", {"freeze_patterns": ["layer1.*"] * 65}, "validation_error"),
        ("finetune", {"freeze_patterns": ["x" * 201]}, "validation_error"),
        ("finetune", {"freeze_stages": {"nested": 1}}, "validation_error"),
        ("finetune", {"unfreeze_every": 10**6, "freeze_stages": 1}, "invalid_option"),
    ],
)
def test_options_are_bounded(client, dataset_id, strategy, options, code):
    r = client.post("/v1/jobs", json=job(dataset_id, strategy=strategy, options=options))
    assert r.status_code == 422, r.text
    assert error_code(r) == code


def test_a_wide_mlp_head_within_the_bound_is_accepted(client, dataset_id):
    options = {"head": "mlp", "mlp_hidden": 16_384}
    r = client.post("/v1/jobs", json=job(dataset_id, strategy="linear_probe", options=options))
    assert r.status_code == 202, r.text


@pytest.mark.parametrize(
    "raw",
    [
        '"options": {"layer_decay": NaN}',
        '"options": {"backbone_lr_mult": Infinity}',
        '"hyperparameters": {"learning_rate": NaN}',
        '"hyperparameters": {"weight_decay": -Infinity}',
    ],
)
def test_nan_and_infinities_are_refused(client, dataset_id, raw):
    body = json.dumps(job(dataset_id))[:-1] + ", " + raw + "}"
    r = client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert error_code(r) == "validation_error"
    assert client.get("/v1/jobs").json()["total"] == 0


def test_batches_too_large_for_any_worker_are_refused(client, dataset_id):
    hp = {"batch_size": 4096, "image_size": 1024}
    r = client.post("/v1/jobs", json=job(dataset_id, hyperparameters=hp))
    # Checked by the hyperparameters' own schema: a validation error naming the sizes.
    assert r.status_code == 422 and error_code(r) == "validation_error"
    assert "GiB" in r.text
    # No image_size: the backbone's own (resnet18: 224 px) is what the batch is checked against.
    r = client.post(
        "/v1/jobs",
        json=job(dataset_id, base_model="timm:resnet18", hyperparameters={"batch_size": 4096}),
    )
    assert r.status_code == 422 and error_code(r) == "invalid_option"


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/datasets", "/v1/models"])
def test_offsets_are_bounded(client, path):
    r = client.get(path, params={"offset": 2**63})
    assert r.status_code == 422 and error_code(r) == "validation_error"
    r = client.get(path, params={"offset": 1_000_000})
    assert r.status_code == 200 and r.json()["items"] == []


def test_parse_errors_use_the_envelope(client):
    r = client.post(
        "/v1/datasets",
        content=b"--b\r\nnot a part header at all",
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert r.status_code in (400, 422), r.text
    assert error_code(r) in ("malformed_body", "validation_error")
    r = client.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and error_code(r) == "validation_error"


def test_too_many_prediction_files_use_the_envelope(client):
    files = [("files", (f"{i}.png", b"x", "image/png")) for i in range(1001)]
    r = client.post(f"/v1/models/{uuid.uuid4()}/predict", files=files)
    assert r.status_code == 413, r.text
    assert error_code(r) == "too_many_files"


def test_a_failed_enqueue_records_when_and_why(settings, admin_key, digits_zip):
    broken = settings.model_copy(update={"broker_url": "redis://127.0.0.1:9/0"})
    with TestClient(create_app(broken), headers=bearer(admin_key)) as c:
        ds = upload(c, digits_zip(per_class=3, name="e.zip")).json()
        r = c.post("/v1/jobs", json=job(ds["id"]))
        assert r.status_code == 503
        failed = c.get(f"/v1/jobs/{r.json()['error']['details']['job_id']}").json()
    assert failed["status"] == "failed"
    assert failed["error_code"] == "broker_unavailable"
    assert failed["finished_at"] is not None
    assert "127.0.0.1" not in failed["error"]
    assert queued_messages(settings) == []
