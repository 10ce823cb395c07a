"""Domain-adaptation jobs in the runner, in-process on real SQLite and real torch: the engine's
DatasetSplits built from the job's datasets, and dann's per-epoch figures stored."""

from __future__ import annotations

import uuid

import pytest
import torch

from app.db.models import Job, JobMetric, ModelVersion
from app.jobspec import JobCreate
from tests.api.conftest import upload
from tests.api.test_domain_adaptation import upload_unlabeled
from worker.runner import _dataset_splits, execute_job


@pytest.fixture
def restore_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def ids(client, digits_zip, unlabeled_zip) -> dict[str, str]:
    return {
        "source": upload(client, digits_zip((0, 1, 2), per_class=6, name="s.zip")).json()["id"],
        "target": upload_unlabeled(client, unlabeled_zip(count=8, name="t.zip")).json()["id"],
        # Classes 2 and 0 only: their label indices must be the source's (2 and 0), not 1 and 0.
        "eval": upload(client, digits_zip((0, 2), per_class=3, name="e.zip")).json()["id"],
        "labelled_target": upload(client, digits_zip((1, 2), per_class=2, name="lt.zip")).json()[
            "id"
        ],
    }


def submit(client, ids: dict[str, str], **overrides) -> str:
    body = {
        "strategy": "dann", "base_model": "timm:test_resnet", "pretrained": False,
        "dataset_id": ids["source"], "target_dataset_id": ids["target"],
        "eval_dataset_id": ids["eval"], "labeled_target_dataset_id": ids["labelled_target"],
        "name": "adapted",
        "hyperparameters": {"epochs": 2, "image_size": 32, "batch_size": 8},
    } | overrides  # fmt: skip
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def test_dataset_splits_map_labels_by_class_name(client, settings, db, ids):
    job_id = uuid.UUID(submit(client, ids))
    with db.session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        data, source = _dataset_splits(session, settings, job, JobCreate.model_validate(job.spec))
    assert str(source.id) == ids["source"]
    assert data.class_names == ("digit_0", "digit_1", "digit_2")
    assert len(data.train) == 18
    root = settings.layout.dataset_dir
    # Every image of the unlabeled target, wherever it was in the archive (the engine adds the
    # labelled target's images to its pool itself).
    assert len(data.target) == 8
    assert all(p.startswith(f"{root(ids['target'])}/images/") for p in data.target)
    assert {(p.split("/")[-2], label) for p, label in data.evaluation} == {
        ("digit_0", 0),
        ("digit_2", 2),
    }
    assert len(data.evaluation) == 6
    assert {(p.split("/")[-2], label) for p, label in data.target_labeled} == {
        ("digit_1", 1),
        ("digit_2", 2),
    }


def test_a_dann_job_stores_its_epoch_figures(client, settings, db, ids, restore_torch_threads):
    job_id = submit(client, ids)
    one_thread = settings.model_copy(update={"torch_threads": 1})
    assert execute_job(uuid.UUID(job_id), one_thread, db) == "succeeded", client.get(
        f"/v1/jobs/{job_id}"
    ).json()
    epochs = client.get(f"/v1/jobs/{job_id}/metrics").json()["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    for e in epochs:
        assert set(e["extra"]) >= {"domain_accuracy", "domain_loss", "classification_loss"}
        assert 0.0 <= e["extra"]["domain_accuracy"] <= 1.0
        assert e["extra"]["domain_loss"] > 0
        assert "eval_loss" in e and "eval_accuracy" in e  # filled once the engine scores it
    with db.session_scope() as session:
        rows = session.query(JobMetric).filter_by(job_id=uuid.UUID(job_id)).all()
        assert all(isinstance(r.extra, dict) and "domain_accuracy" in r.extra for r in rows)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert (
        job["latest_metrics"]["extra"]["domain_accuracy"] == epochs[-1]["extra"]["domain_accuracy"]
    )
    model = client.get(f"/v1/models/{job['model_id']}").json()
    lineage = model["lineage"]
    assert lineage["target_dataset_id"] == ids["target"]
    assert lineage["eval_dataset_id"] == ids["eval"]
    assert lineage["labeled_target_dataset_id"] == ids["labelled_target"]
    if "eval" in model["metrics"]:  # the engine's side of issue 10 fills it
        assert model["metrics"]["eval"]["num_images"] == 6
        assert set(model["metrics"]["eval"]) == {
            "accuracy", "per_class_accuracy", "confusion_matrix", "num_images"
        }  # fmt: skip
    # Deleting the target is refused no longer: the job has ended.
    assert client.delete(f"/v1/datasets/{ids['target']}").status_code == 204
    with db.session_scope() as session:
        assert session.query(ModelVersion).count() == 1


def test_a_finetune_job_stores_no_extra(client, settings, db, ids, restore_torch_threads):
    job_id = submit(client, ids, strategy="finetune", target_dataset_id=None,
                    labeled_target_dataset_id=None,
                    hyperparameters={"epochs": 1, "image_size": 32, "batch_size": 8})  # fmt: skip
    one_thread = settings.model_copy(update={"torch_threads": 1})
    assert execute_job(uuid.UUID(job_id), one_thread, db) == "succeeded"
    (epoch,) = client.get(f"/v1/jobs/{job_id}/metrics").json()["epochs"]
    assert epoch["extra"] == {}


def test_a_non_finite_figure_is_left_out_of_the_stored_epoch(client, db, ids):
    # JSON has no NaN: stored, it made GET .../metrics a 500 (and Postgres's json type refuses
    # it on the write, failing the job).
    from app.engine import EpochMetrics
    from worker.progress import DatabaseProgress

    job_id = submit(client, ids)
    figures = {"domain_accuracy": 0.5, "domain_loss": float("nan"), "odd": float("inf")}
    DatabaseProgress(db, uuid.UUID(job_id), interval_s=0, attempt=1).on_epoch_end(
        EpochMetrics(
            epoch=1, phase="train", train_loss=1.0, val_loss=1.0, val_accuracy=0.5,
            learning_rate=0.01, images_per_second=10.0, seconds=1.0, extra=figures,
            eval_loss=float("inf"), eval_accuracy=0.25,
        )
    )  # fmt: skip
    r = client.get(f"/v1/jobs/{job_id}/metrics")
    assert r.status_code == 200, r.text
    (stored,) = r.json()["epochs"]
    assert stored["extra"] == {"domain_accuracy": 0.5}
    assert (stored["eval_loss"], stored["eval_accuracy"]) == (None, 0.25)
