"""The OpenAPI document generates usable clients: readable operationIds, files typed as binary,
our error envelope for 422, downloads as bytes (issue 11)."""

from __future__ import annotations

import json

import pytest
from fastapi import APIRouter, FastAPI

from app.api.openapi import check_operation_ids, operation_id
from app.operations import OperationTable


@pytest.fixture
def schema(client) -> dict:
    return client.get("/openapi.json").json()


def operations(schema: dict):
    for template, ops in schema["paths"].items():
        for method, op in ops.items():
            yield template, method, op


def test_operation_ids_are_the_function_names(schema):
    ids = {(m.upper(), t): op["operationId"] for t, m, op in operations(schema)}
    assert ids[("POST", "/v1/jobs")] == "create_job"
    assert ids[("POST", "/v1/datasets")] == "create_dataset"
    assert ids[("POST", "/v1/models/{model_id}/predict")] == "predict"
    assert ids[("GET", "/v1/jobs/{job_id}/events")] == "stream_job_events"
    assert len(set(ids.values())) == len(ids)
    assert not [i for i in ids.values() if "_v1_" in i or i.endswith(("_get", "_post"))]


def test_file_fields_are_binary(schema):
    components = schema["components"]["schemas"]
    upload = schema["paths"]["/v1/datasets"]["post"]["requestBody"]["content"]
    ref = upload["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert components[ref]["properties"]["file"] == {
        "type": "string",
        "format": "binary",
        "title": "File",
        "description": "the archive",
    }
    predict = schema["paths"]["/v1/models/{model_id}/predict"]["post"]["requestBody"]["content"]
    ref = predict["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert components[ref]["properties"]["files"]["items"] == {"type": "string", "format": "binary"}
    assert "contentMediaType" not in json.dumps(schema)


def test_every_422_is_the_error_envelope(schema):
    assert "HTTPValidationError" not in json.dumps(schema)
    documented = 0
    for template, method, op in operations(schema):
        if "422" in op["responses"]:
            content = op["responses"]["422"]["content"]["application/json"]
            assert content["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}, (
                method,
                template,
            )
            documented += 1
    assert documented >= 15


def test_a_422_body_matches_what_is_documented(client):
    r = client.get("/v1/jobs", params={"limit": 0})
    assert r.status_code == 422
    assert set(r.json()) == {"error"} and r.json()["error"]["code"] == "validation_error"


def test_downloads_are_documented_as_bytes(schema):
    binary = {"schema": {"type": "string", "format": "binary"}}
    features = schema["paths"]["/v1/jobs/{job_id}/features"]["get"]["responses"]["200"]
    assert features["content"] == {"application/zip": binary}
    model = schema["paths"]["/v1/models/{model_id}/download"]["get"]["responses"]["200"]
    # A zip, or with format=onnx the ONNX file.
    assert model["content"] == {"application/zip": binary, "application/octet-stream": binary}


def test_the_operation_table_still_reads_scopes(client):
    table = OperationTable(client.app)
    assert table.match("POST", "/v1/jobs").scopes == {"train"}
    assert table.match("POST", "/v1/models/abc/predict").scopes == {"predict"}
    assert table.match("GET", "/v1/jobs/abc/events").scopes == {"read"}


@pytest.mark.filterwarnings("ignore:Duplicate Operation ID")
def test_two_routes_with_one_name_are_refused():
    app = FastAPI(generate_unique_id_function=operation_id)
    one, two = APIRouter(prefix="/a"), APIRouter(prefix="/b")

    @one.get("")
    def same() -> None: ...

    @two.get("")
    def same() -> None:  # noqa: F811
        ...

    app.include_router(one)
    app.include_router(two)
    with pytest.raises(RuntimeError, match="same"):
        check_operation_ids(app)
