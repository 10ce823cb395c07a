"""Domain adaptation through the API: unlabeled datasets, jobs with a target and an eval set,
and datasets a queued job uses in any role (issue 10)."""

from __future__ import annotations

import uuid
import zipfile
from pathlib import Path

import pytest

from app import engine
from tests.api.conftest import error_code, queued_messages, upload


def upload_unlabeled(client, path: Path, **data: str):
    with path.open("rb") as fh:
        return client.post(
            "/v1/datasets", files={"file": (path.name, fh)}, data={"kind": "unlabeled", **data}
        )


def job(source: str, **overrides) -> dict:
    return {
        "strategy": "dann", "base_model": "timm:test_resnet", "pretrained": False,
        "dataset_id": source, "hyperparameters": {"epochs": 1, "image_size": 32}, **overrides,
    }  # fmt: skip


@pytest.fixture
def datasets(client, digits_zip, unlabeled_zip) -> dict[str, str]:
    """source (digits 0-2), target (unlabeled), a labelled subset (0, 2) and an extra-class set."""
    out = {
        "source": upload(client, digits_zip(per_class=4, name="source.zip")).json()["id"],
        "target": upload_unlabeled(client, unlabeled_zip()).json()["id"],
        "subset": upload(client, digits_zip((0, 2), per_class=3, name="sub.zip")).json()["id"],
        "extra": upload(client, digits_zip((0, 1, 7), per_class=3, name="ex.zip")).json()["id"],
    }
    assert all(out.values())
    return out


def test_an_unlabeled_upload_ignores_folder_names(client, settings, unlabeled_zip):
    r = upload_unlabeled(client, unlabeled_zip(count=12), name="target")
    assert r.status_code == 201, r.text
    ds = r.json()
    assert (ds["kind"], ds["num_images"], ds["num_classes"]) == ("unlabeled", 12, 0)
    report = ds["report"]
    assert "classes" not in report and "splits" not in report and "leakage" not in report
    assert report["num_images"] == 12
    assert report["rejected"] == [{"path": "cam1/readme.txt", "reason": report["rejected"][0]
                                   ["reason"]}]  # fmt: skip
    assert report["statistics"]["modes"] == {"L": 12}
    assert "exact" in report["duplicates"]
    folder = settings.layout.dataset_dir(ds["id"])
    assert (folder / "images/deep/a/b/c/003.png").is_file()
    assert client.get(f"/v1/datasets/{ds['id']}").json()["kind"] == "unlabeled"
    listed = {d["id"]: d["kind"] for d in client.get("/v1/datasets").json()["items"]}
    assert listed == {ds["id"]: "unlabeled"}


def test_a_labelled_upload_says_so(client, digits_zip):
    ds = upload(client, digits_zip(per_class=2, name="l.zip")).json()
    assert ds["kind"] == "labelled" and ds["report"]["classes"] == ["digit_0", "digit_1",
                                                                    "digit_2"]  # fmt: skip
    # The job fields spell it "labeled": that spelling is taken for the kind too.
    path = digits_zip(per_class=2, name="l2.zip")
    with path.open("rb") as fh:
        r = client.post("/v1/datasets", files={"file": (path.name, fh)}, data={"kind": "labeled"})
    assert r.status_code == 201 and r.json()["kind"] == "labelled", r.text
    # ...and it is one request with the default spelling under one Idempotency-Key.
    headers = {"Idempotency-Key": "same-upload"}
    with path.open("rb") as fh:
        first = client.post("/v1/datasets", files={"file": (path.name, fh)}, headers=headers)
    with path.open("rb") as fh:
        again = client.post("/v1/datasets", files={"file": (path.name, fh)},
                            data={"kind": "labeled"}, headers=headers)  # fmt: skip
    assert first.status_code == 201, first.text
    assert again.headers.get("Idempotent-Replayed") == "true", again.text
    assert again.json()["id"] == first.json()["id"]


def test_unknown_kind_and_bad_archives_are_refused(client, settings, tmp_path):
    path = tmp_path / "x.zip"
    path.write_bytes(b"this is not an archive at all" * 10)
    with path.open("rb") as fh:
        r = client.post("/v1/datasets", files={"file": ("x.zip", fh)}, data={"kind": "images"})
    assert r.status_code == 422 and error_code(r) == "invalid_dataset_kind"
    assert r.json()["error"]["details"]["choices"] == ["labelled", "unlabeled"]
    r = upload_unlabeled(client, path)
    assert r.status_code == 415 and error_code(r) == "archive_unsupported"
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("a/notes.txt", b"no images here")
    r = upload_unlabeled(client, empty)
    assert r.status_code == 422 and error_code(r) == "dataset_no_images"
    # A flat archive sent as labelled: the message points at kind=unlabeled.
    with empty.open("rb") as fh:
        r = client.post("/v1/datasets", files={"file": ("empty.zip", fh)})
    assert error_code(r) == "dataset_no_images" and "kind=unlabeled" in r.json()["error"]["message"]
    assert client.get("/v1/datasets").json()["total"] == 0
    assert list(settings.layout.datasets.iterdir()) == []


def test_a_resumable_upload_completes_into_an_unlabeled_dataset(client, unlabeled_zip):
    import hashlib

    data = unlabeled_zip(count=4, name="parts.zip").read_bytes()
    r = client.post("/v1/uploads", json={"size": len(data), "kind": "unlabeled"})
    assert r.status_code == 201 and r.json()["kind"] == "unlabeled", r.text
    uid = r.json()["id"]
    headers = {"Content-SHA256": hashlib.sha256(data).hexdigest()}
    assert client.put(f"/v1/uploads/{uid}/parts/1", content=data, headers=headers).is_success
    r = client.post(f"/v1/uploads/{uid}/complete")
    assert r.status_code in (200, 201), r.text
    assert (r.json()["kind"], r.json()["num_images"]) == ("unlabeled", 4)
    r = client.post("/v1/uploads", json={"size": 10, "kind": "nope"})
    assert r.status_code == 422 and error_code(r) == "invalid_dataset_kind"


def test_a_dann_job_records_its_datasets(client, settings, datasets):
    subset = datasets["subset"]
    body = job(datasets["source"], target_dataset_id=datasets["target"],
               labeled_target_dataset_id=subset, eval_dataset_id=subset)  # fmt: skip
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    out = r.json()
    assert out["target_dataset_id"] == datasets["target"]
    assert out["labeled_target_dataset_id"] == out["eval_dataset_id"] == datasets["subset"]
    assert out["spec"]["target_dataset_id"] == datasets["target"]
    assert client.get(f"/v1/jobs/{out['id']}").json()["eval_dataset_id"] == datasets["subset"]
    # A labelled dataset may be a target too (its labels unused); any strategy may have an eval.
    r = client.post("/v1/jobs", json=job(datasets["source"], strategy="instance_weighting",
                                         target_dataset_id=datasets["extra"]))  # fmt: skip
    assert r.status_code == 202, r.text
    r = client.post("/v1/jobs", json=job(datasets["source"], strategy="finetune",
                                         eval_dataset_id=datasets["subset"]))  # fmt: skip
    assert r.status_code == 202 and r.json()["target_dataset_id"] is None, r.text
    assert len(queued_messages(settings)) == 3


@pytest.mark.parametrize(
    ("overrides", "status", "code", "field"),
    [
        ({"dataset_id": "target"}, 422, "dataset_unlabeled", "dataset_id"),
        ({}, 422, "target_dataset_required", "target_dataset_id"),
        ({"strategy": "instance_weighting"}, 422, "target_dataset_required", "target_dataset_id"),
        ({"strategy": "finetune", "target_dataset_id": "target"}, 422, "target_dataset_not_used",
         "target_dataset_id"),
        ({"strategy": "extract_features", "target_dataset_id": "target"}, 422,
         "target_dataset_not_used", "target_dataset_id"),
        ({"strategy": "instance_weighting", "target_dataset_id": "target",
          "labeled_target_dataset_id": "subset"}, 422, "labeled_target_not_supported",
         "labeled_target_dataset_id"),
        ({"target_dataset_id": "target", "labeled_target_dataset_id": "target"}, 422,
         "dataset_unlabeled", "labeled_target_dataset_id"),
        ({"target_dataset_id": "target", "eval_dataset_id": "target"}, 422,
         "dataset_unlabeled", "eval_dataset_id"),
        ({"strategy": "extract_features", "eval_dataset_id": "subset"}, 422,
         "eval_dataset_not_used", "eval_dataset_id"),
        ({"target_dataset_id": "missing"}, 404, "dataset_not_found", "target_dataset_id"),
        ({"target_dataset_id": "target", "labeled_target_dataset_id": "missing"}, 404,
         "dataset_not_found", "labeled_target_dataset_id"),
        ({"target_dataset_id": "target", "eval_dataset_id": "missing"}, 404,
         "dataset_not_found", "eval_dataset_id"),
    ],
)  # fmt: skip
def test_job_dataset_rules(client, settings, datasets, overrides, status, code, field):
    ids = {**datasets, "missing": str(uuid.uuid4())}
    body = job(datasets["source"], **{k: ids.get(v, v) for k, v in overrides.items()})
    if body["strategy"] == "extract_features":
        body["hyperparameters"] = {"image_size": 32}
    r = client.post("/v1/jobs", json=body)
    assert (r.status_code, error_code(r)) == (status, code), r.text
    error = r.json()["error"]
    assert error["details"]["field"] == field
    assert field in error["message"] or code.startswith("target_dataset")
    assert queued_messages(settings) == []
    assert client.get("/v1/jobs").json()["total"] == 0


def test_classes_outside_the_source_are_named(client, datasets):
    for field in ("eval_dataset_id", "labeled_target_dataset_id"):
        body = job(datasets["source"], target_dataset_id=datasets["target"],
                   **{field: datasets["extra"]})  # fmt: skip
        r = client.post("/v1/jobs", json=body)
        assert r.status_code == 422 and error_code(r) == "class_mismatch", r.text
        assert r.json()["error"]["details"]["extra_classes"] == ["digit_7"]
        assert "'digit_7'" in r.json()["error"]["message"] and field in r.json()["error"]["message"]


@pytest.mark.parametrize("role", ["dataset_id", "target_dataset_id", "labeled_target_dataset_id",
                                  "eval_dataset_id"])  # fmt: skip
def test_a_dataset_a_queued_job_uses_in_any_role_cannot_be_deleted(client, settings, datasets,
                                                                   role):  # fmt: skip
    ids = {"dataset_id": datasets["source"], "target_dataset_id": datasets["target"],
           "labeled_target_dataset_id": datasets["subset"]}  # fmt: skip
    if role == "eval_dataset_id":
        ids["labeled_target_dataset_id"] = datasets["source"]
        ids["eval_dataset_id"] = datasets["subset"]
    r = client.post("/v1/jobs", json=job(**{"source": ids.pop("dataset_id")}, **ids))
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    used = (datasets["source"] if role == "dataset_id" else
            datasets["target"] if role == "target_dataset_id" else datasets["subset"])  # fmt: skip
    r = client.delete(f"/v1/datasets/{used}")
    assert r.status_code == 409 and error_code(r) == "dataset_in_use", r.text
    details = r.json()["error"]["details"]
    assert details["job_ids"] == [job_id] and role in details["roles"][job_id]
    assert role in r.json()["error"]["message"]
    assert settings.layout.dataset_dir(used).exists()
    # Once the job has ended (here: cancelled while queued) the dataset can go.
    assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    assert client.delete(f"/v1/datasets/{used}").status_code == 204
    assert not settings.layout.dataset_dir(used).exists()
    column = client.get(f"/v1/jobs/{job_id}").json()[role]
    assert column is None  # SET NULL, as for dataset_id


def test_strategies_list_the_adapting_ones_with_their_options(client):
    strategies = {s["name"]: s for s in client.get("/v1/strategies").json()}
    assert set(engine.list_strategies(needs_target=True)) == {"dann", "instance_weighting"}
    dann, weighting = strategies["dann"], strategies["instance_weighting"]
    assert dann["needs_target"] and dann["takes_labeled_target"] and dann["kind"] == "train"
    assert {"trade_off", "discriminator_hidden", "lambda_schedule"} <= set(dann["options"])
    assert weighting["needs_target"] and not weighting["takes_labeled_target"]
    assert "weight_clip" in weighting["options"]
    assert not strategies["finetune"]["needs_target"]
    assert not strategies["extract_features"]["needs_target"]


def test_openapi_documents_the_new_fields(client):
    schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    create = components["JobCreate"]
    for field in ("target_dataset_id", "labeled_target_dataset_id", "eval_dataset_id"):
        assert create["properties"][field]["examples"], field
        assert create["properties"][field]["description"]
        assert field in components["JobOut"]["properties"]
    assert any(e.get("strategy") == "dann" for e in create["examples"])
    epoch = components["EpochMetricsOut"]["properties"]
    assert {"eval_loss", "eval_accuracy", "extra"} <= set(epoch)
    assert "kind" in components["DatasetOut"]["properties"]
    form = schema["paths"]["/v1/datasets"]["post"]["requestBody"]["content"]
    body = components[form["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[1]]
    assert "kind" in body["properties"]
    assert "unlabeled" in body["properties"]["kind"]["description"]


def test_an_eval_set_the_job_trains_on_is_a_warning(client, datasets):
    # Found by the attack: eval_accuracy on images the model learned, with no word said.
    r = client.post("/v1/jobs", json=job(datasets["source"], target_dataset_id=datasets["target"],
                                         labeled_target_dataset_id=datasets["subset"],
                                         eval_dataset_id=datasets["subset"]))  # fmt: skip
    assert r.status_code == 202, r.text
    (warning,) = r.json()["warnings"]
    assert warning["code"] == "eval_in_training"
    assert warning["roles"] == ["labeled_target_dataset_id"]
    # Unlabeled use of the eval images (the target) is the usual transductive setting: no warning.
    r = client.post("/v1/jobs", json=job(datasets["source"], target_dataset_id=datasets["subset"],
                                         eval_dataset_id=datasets["subset"]))  # fmt: skip
    assert r.status_code == 202, r.text
    assert r.json()["warnings"] == []
