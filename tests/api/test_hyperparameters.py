"""One definition of the hyperparameters: the API's request schema is the engine's model.

The worker parses the stored spec back into the same model and hands it to the engine as is, so a
value the API accepts cannot fail the job after it was queued for being invalid.
"""

from __future__ import annotations

import uuid

import pytest
from pydantic import ValidationError

from app import engine
from app.jobspec import JobCreate


def test_the_api_takes_the_engines_model():
    assert JobCreate.model_fields["hyperparameters"].annotation is engine.Hyperparameters


def test_bounds_and_descriptions_reach_the_openapi_schema(client):
    schema = client.get("/openapi.json").json()["components"]["schemas"]["Hyperparameters"]
    epochs = schema["properties"]["epochs"]
    assert (epochs["minimum"], epochs["maximum"], epochs["default"]) == (1, 1000, 10)
    assert "default: the backbone's own" in schema["properties"]["image_size"]["description"]
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize(
    ("field", "value"),
    [("epochs", True), ("epochs", 2.0), ("batch_size", "32"), ("amp", 1), ("keep_best", "yes")],
)
def test_no_lax_coercion_of_integers_and_flags(client, field, value):
    # "epochs": true was accepted as 1 epoch (an attacker's finding): strict fields refuse it.
    body = {"strategy": "finetune", "base_model": "timm:test_resnet", "pretrained": False,
            "dataset_id": str(uuid.uuid4()), "hyperparameters": {field: value}}  # fmt: skip
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "validation_error"
    assert field in response.text


@pytest.mark.parametrize(
    ("values", "named"),
    [({"epochs": 0}, "epochs"), ({"epochs": 3, "warmup_epochs": 3}, "warmup_epochs"),
     ({"learning_rate": float("nan")}, "learning_rate"),
     ({"batch_size": 4096, "image_size": 1024}, "batch_size 4096 at image_size 1024"),
     ({"optimizer": "lion"}, "optimizer"), ({"unknown": 1}, "unknown")],
)  # fmt: skip
def test_the_engine_refuses_bad_values_naming_the_field(values, named):
    with pytest.raises(ValidationError, match=named):
        engine.Hyperparameters(**values)


def test_a_stored_spec_reads_back_equal():
    spec = JobCreate.model_validate(
        {"strategy": "finetune", "base_model": "timm:resnet18",
         "dataset_id": "3f8e4a52-3c1f-4f7b-9a53-2f0e2b7c9d11",
         "hyperparameters": {"epochs": 4, "scheduler": "cosine", "grad_clip_norm": 1.0}}
    )  # fmt: skip
    stored = spec.model_dump(mode="json")
    assert JobCreate.model_validate(stored).hyperparameters == spec.hyperparameters
