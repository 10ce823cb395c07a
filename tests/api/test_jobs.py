from __future__ import annotations

import uuid

import pytest

from app import engine
from app.api.schemas.jobs import JobCreate
from tests.api.conftest import error_code, queued_messages, upload


@pytest.fixture
def dataset_id(client, digits_zip) -> str:
    return upload(client, digits_zip(per_class=4, name="jobs.zip")).json()["id"]


def spec(dataset_id: str, **overrides) -> dict:
    base = {
        "strategy": "finetune",
        "base_model": "timm:test_resnet",
        "pretrained": False,
        "dataset_id": dataset_id,
        "hyperparameters": {"epochs": 2, "image_size": 32},
    }
    base.update(overrides)
    return base


def test_create_job_is_queued_and_enqueued(client, settings, dataset_id):
    r = client.post("/v1/jobs", json=spec(dataset_id))
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued"
    assert job["progress"] == {
        "epoch": 0, "total_epochs": 2, "step": 0, "total_steps": 0, "fraction": 0.0
    }  # fmt: skip
    assert job["spec"]["hyperparameters"]["batch_size"] == 32  # defaults are filled in and kept
    messages = queued_messages(settings)
    assert len(messages) == 1
    assert job["id"] in messages[0].read_text()
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"


def test_unknown_strategy_lists_the_choices(client, settings, dataset_id):
    r = client.post("/v1/jobs", json=spec(dataset_id, strategy="magic"))
    assert r.status_code == 422
    assert error_code(r) == "unknown_strategy"
    assert r.json()["error"]["details"]["choices"] == [
        *engine.list_strategies(),
        "extract_features",
    ]
    assert "finetune" in r.json()["error"]["message"]
    assert queued_messages(settings) == []
    assert client.get("/v1/jobs").json()["total"] == 0


def test_unknown_backbone_suggests_close_names(client, dataset_id):
    r = client.post("/v1/jobs", json=spec(dataset_id, base_model="timm:resnet1800"))
    assert r.status_code == 422
    assert error_code(r) == "unknown_backbone"
    details = r.json()["error"]["details"]
    assert "resnet18" in details["choices"]
    assert details["close_matches"]
    assert client.get("/v1/jobs").json()["total"] == 0


@pytest.mark.parametrize("base_model", ["resnet18", "hub:resnet18", "model:not-a-uuid"])
def test_malformed_base_model(client, dataset_id, base_model):
    r = client.post("/v1/jobs", json=spec(dataset_id, base_model=base_model))
    assert r.status_code == 422
    assert error_code(r) in {"invalid_base_model", "base_model_not_found"}


def test_unknown_model_as_base_model(client, dataset_id):
    r = client.post("/v1/jobs", json=spec(dataset_id, base_model=f"model:{uuid.uuid4()}"))
    assert r.status_code == 422 and error_code(r) == "base_model_not_found"


def test_unknown_strategy_option(client, dataset_id):
    r = client.post("/v1/jobs", json=spec(dataset_id, options={"freeze_everything": True}))
    assert r.status_code == 422 and error_code(r) == "unknown_option"


def test_missing_dataset_is_404(client, settings):
    r = client.post("/v1/jobs", json=spec(str(uuid.uuid4())))
    assert r.status_code == 404
    assert error_code(r) == "dataset_not_found"
    assert queued_messages(settings) == []


@pytest.mark.parametrize(
    ("field", "value"), [("epochs", 0), ("learning_rate", -0.1), ("batch_size", 0)]
)
def test_bad_hyperparameters_are_422(client, settings, dataset_id, field, value):
    r = client.post("/v1/jobs", json=spec(dataset_id, hyperparameters={field: value}))
    assert r.status_code == 422
    assert error_code(r) == "validation_error"
    assert r.json()["error"]["details"]["errors"][0]["field"] == f"hyperparameters.{field}"
    assert queued_messages(settings) == []
    assert client.get("/v1/jobs").json()["total"] == 0


def test_cancel_queued_job_is_immediate(client, dataset_id):
    job = client.post("/v1/jobs", json=spec(dataset_id)).json()
    r = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "cancelled"
    again = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 409 and error_code(again) == "job_finished"


def test_list_jobs_filters_by_status(client, dataset_id):
    a = client.post("/v1/jobs", json=spec(dataset_id)).json()
    client.post("/v1/jobs", json=spec(dataset_id))
    client.post(f"/v1/jobs/{a['id']}/cancel")
    cancelled = client.get("/v1/jobs", params={"status": "cancelled"}).json()
    assert [j["id"] for j in cancelled["items"]] == [a["id"]]
    assert client.get("/v1/jobs", params={"status": "queued"}).json()["total"] == 1
    assert client.get("/v1/jobs", params={"status": "bogus"}).status_code == 422


def test_unknown_job_is_404(client):
    for path in ("", "/metrics"):
        r = client.get(f"/v1/jobs/{uuid.uuid4()}{path}")
        assert r.status_code == 404 and error_code(r) == "job_not_found"
    r = client.post(f"/v1/jobs/{uuid.uuid4()}/cancel")
    assert r.status_code == 404


def test_api_strategies_agree_with_the_engine_registry(client):
    names = [s["name"] for s in client.get("/v1/strategies").json()]
    assert names == [*engine.list_strategies(), "extract_features"]
    assert {"finetune", "linear_probe"} <= set(names)


def test_backbones_endpoint_filters(client):
    names = client.get("/v1/backbones", params={"pattern": "test_*"}).json()["names"]
    assert "test_resnet" in names and all(n.startswith("test_") for n in names)


def _has_example(schema: dict, components: dict, depth: int = 0) -> bool:
    """An example on the schema itself, or on what it refers to or lists (Page[...] items)."""
    if depth > 4:
        return False
    if "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[1]]
    if "example" in schema or "examples" in schema:
        return True
    children = [schema.get("items", {}), *schema.get("properties", {}).values()]
    return any(_has_example(c, components, depth + 1) for c in children if c)


def test_openapi_documents_every_endpoint_with_a_summary_and_examples(tmp_path):
    from app.main import create_app
    from app.settings import Settings

    schema = create_app(Settings(data_dir=tmp_path)).openapi()
    components = schema["components"]["schemas"]
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            where = f"{method.upper()} {path}"
            assert op.get("summary"), f"{where} has no summary"
            success = next(v for k, v in op["responses"].items() if k.startswith("2"))
            content = success.get("content", {}).get("application/json")
            if content is not None:
                assert "example" in content or _has_example(content["schema"], components), (
                    f"{where}: its response has no example"
                )
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if body is not None:
                assert _has_example(body["schema"], components), f"{where}: body has no example"
    assert JobCreate.model_json_schema()["examples"]


@pytest.mark.parametrize(
    ("strategy", "options", "hyperparameters", "needle"),
    [
        ("l2sp", {}, {"weight_decay": 0.01}, "weight_decay"),
        ("lp_ft", {"probe_epochs": 5}, {"epochs": 5}, "probe_epochs"),
        ("finetune", {"backbone_lr_mult": 3.0}, {}, "backbone_lr_mult"),
    ],
)
def test_option_values_that_cannot_work_are_422(
    client, settings, dataset_id, strategy, options, hyperparameters, needle
):
    body = spec(dataset_id, strategy=strategy, options=options, hyperparameters=hyperparameters)
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 422, r.text
    assert error_code(r) == "invalid_option"
    assert needle in r.json()["error"]["message"]
    assert queued_messages(settings) == []
    assert client.get("/v1/jobs").json()["total"] == 0


def test_every_strategy_says_what_it_does_and_its_defaults(client):
    listed = {s["name"]: s for s in client.get("/v1/strategies").json()}
    for name, entry in listed.items():
        assert len(entry["summary"]) > 20, name
        assert list(entry["defaults"]) == entry["options"], name
    dann = listed["dann"]
    assert "gradient reversal" in dann["summary"] and dann["needs_target"]
    assert dann["defaults"]["trade_off"] == 1.0
    assert dann["defaults"]["lambda_schedule"] == "ganin"
    # None where the job decides; tuples travel as lists.
    assert listed["lp_ft"]["defaults"]["probe_epochs"] is None
    assert listed["finetune"]["defaults"]["freeze_patterns"] == []
    assert listed["l2sp"]["defaults"]["orthogonal"] == 0.0
