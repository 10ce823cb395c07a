"""What the schemathesis run (test_fuzz.py) found, each pinned by the request that showed it."""

from __future__ import annotations

import uuid

import pytest

from tests.api.conftest import error_code


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/v1/datasets", {"GET", "POST"}),
        (f"/v1/datasets/{uuid.uuid4()}", {"GET", "DELETE"}),
        ("/v1/jobs", {"GET", "POST"}),
        ("/v1/keys", {"GET", "POST"}),
        ("/healthz", {"GET"}),
    ],
)
def test_a_405_lists_every_method_of_the_resource(client, path, allowed):
    # Starlette's 405 named only the first route on the path (`Allow: POST` on /v1/datasets),
    # and the error envelope dropped even that: RFC 9110 requires an `Allow` header.
    r = client.request("TRACE", path)
    assert r.status_code == 405 and error_code(r) == "method_not_allowed"
    assert set(r.headers["allow"].split(", ")) == allowed


def test_metrics_documents_its_auth_errors_as_json(client):
    # A 401/403 from /metrics is the JSON envelope, but was undocumented (then, once listed,
    # documented as text/plain because of the route's response class).
    responses = client.app.openapi()["paths"]["/metrics"]["get"]["responses"]
    assert set(responses) == {"200", "401", "403"}
    assert list(responses["200"]["content"]) == ["text/plain"]
    for status in ("401", "403"):
        assert list(responses[status]["content"]) == ["application/json"]
    anonymous = client.get("/metrics", headers={"Authorization": ""})
    assert anonymous.status_code == 401
    assert anonymous.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("method", "path", "template"),
    [
        ("POST", "/v1/jobs", "/v1/jobs"),
        ("POST", "/v1/keys", "/v1/keys"),
        ("POST", f"/v1/models/{uuid.uuid4()}/predict", "/v1/models/{model_id}/predict"),
    ],
)
def test_an_unparsable_body_is_a_documented_400(client, method, path, template):
    # Bytes that are not UTF-8 under `Content-Type: application/json`, or broken multipart
    # framing: 400 `malformed_body`, which these operations did not document.
    if template.endswith("predict"):
        headers = {"Content-Type": "multipart/form-data; boundary=x"}
        body = b"garbage"
    else:
        headers = {"Content-Type": "application/json"}
        body = b"\xfd7zXZ\x00"
    r = client.request(method, path, content=body, headers=headers)
    assert r.status_code == 400 and error_code(r) == "malformed_body", r.text
    documented = client.app.openapi()["paths"][template][method.lower()]["responses"]
    assert "400" in documented


def test_an_oversized_key_request_is_a_documented_413(client, settings):
    r = client.post(
        "/v1/keys",
        content=b'{"name": "' + b"x" * settings.max_json_bytes + b'"}',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 413 and error_code(r) == "body_too_large"
    assert "413" in client.app.openapi()["paths"]["/v1/keys"]["post"]["responses"]
