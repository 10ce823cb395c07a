"""Idempotency-Key on POST /v1/jobs and POST /v1/datasets."""

from __future__ import annotations

import threading

from fastapi.testclient import TestClient

from app.main import create_app
from tests.api.conftest import bearer, error_code, make_key, queued_messages, upload


def spec(dataset_id: str, epochs: int = 2) -> dict:
    return {
        "strategy": "finetune",
        "base_model": "timm:test_resnet",
        "dataset_id": dataset_id,
        "hyperparameters": {"epochs": epochs},
    }


def test_a_retried_job_submission_runs_once(client, settings, digits_zip):
    dataset_id = upload(client, digits_zip(per_class=3, name="i.zip")).json()["id"]
    key = {"Idempotency-Key": "submit-1"}
    first = client.post("/v1/jobs", json=spec(dataset_id), headers=key)
    again = client.post("/v1/jobs", json=spec(dataset_id), headers=key)
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert client.get("/v1/jobs").json()["total"] == 1
    assert len(queued_messages(settings)) == 1

    other = client.post("/v1/jobs", json=spec(dataset_id, epochs=3), headers=key)
    assert other.status_code == 409 and error_code(other) == "idempotency_key_reused"
    assert client.get("/v1/jobs").json()["total"] == 1

    # Keys are per API key: another client's "submit-1" is its own.
    mine = TestClient(client.app, headers=bearer(make_key(settings, ["train", "read"], "b")))
    assert (
        mine.post("/v1/jobs", json=spec(dataset_id), headers=key).json()["id"]
        != (first.json()["id"])
    )
    assert client.get("/v1/jobs").json()["total"] == 2


def test_concurrent_submissions_with_one_key_make_one_job(client, settings, digits_zip):
    dataset_id = upload(client, digits_zip(per_class=3, name="c.zip")).json()["id"]
    results: list = []

    def go() -> None:
        r = client.post("/v1/jobs", json=spec(dataset_id), headers={"Idempotency-Key": "race"})
        results.append(r)

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [202] * 4
    assert len({r.json()["id"] for r in results}) == 1
    assert client.get("/v1/jobs").json()["total"] == 1


def test_a_retried_upload_is_stored_once(client, settings, digits_zip):
    path = digits_zip(per_class=3, name="u.zip")
    key = {"Idempotency-Key": "upload-1"}
    with path.open("rb") as fh:
        first = client.post("/v1/datasets", files={"file": ("u.zip", fh)}, headers=key)
    with path.open("rb") as fh:
        again = client.post("/v1/datasets", files={"file": ("u.zip", fh)}, headers=key)
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    assert client.get("/v1/datasets").json()["total"] == 1
    assert [p.name for p in settings.layout.datasets.iterdir()] == [first.json()["id"]]
    other = digits_zip(per_class=4, name="u2.zip")
    with other.open("rb") as fh:
        r = client.post("/v1/datasets", files={"file": ("u.zip", fh)}, headers=key)
    assert r.status_code == 409 and error_code(r) == "idempotency_key_reused"
    assert client.get("/v1/datasets").json()["total"] == 1


def test_a_failed_enqueue_frees_the_key(settings, admin_key, digits_zip):
    broken = settings.model_copy(update={"broker_url": "redis://127.0.0.1:9/0"})
    with TestClient(create_app(broken), headers=bearer(admin_key)) as c:
        dataset_id = upload(c, digits_zip(per_class=3, name="f.zip")).json()["id"]
        r = c.post("/v1/jobs", json=spec(dataset_id), headers={"Idempotency-Key": "k"})
        assert r.status_code == 503
    with TestClient(create_app(settings), headers=bearer(admin_key)) as c:
        r = c.post("/v1/jobs", json=spec(dataset_id), headers={"Idempotency-Key": "k"})
        assert r.status_code == 202 and r.json()["status"] == "queued"


def test_bad_keys_are_refused(client, digits_zip):
    dataset_id = upload(client, digits_zip(per_class=3, name="b.zip")).json()["id"]
    for bad in ("", "has space", "x" * 256):
        r = client.post("/v1/jobs", json=spec(dataset_id), headers={"Idempotency-Key": bad})
        assert r.status_code == 422, bad
