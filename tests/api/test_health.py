from __future__ import annotations

import logging

from fastapi.testclient import TestClient

from app.main import create_app


def test_healthz(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_on_the_embedded_default(client):
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "checks": {"database": "ok", "broker": "ok"}}


def test_readyz_reports_an_unreachable_broker_without_its_details(settings, caplog):
    # Port 9 (discard) is closed on loopback: a real connection attempt that fails, whose
    # message names the host, port (and would name the password) of the broker URL.
    broken = settings.model_copy(update={"broker_url": "redis://:s3cret@127.0.0.1:9/0"})
    with TestClient(create_app(broken)) as c, caplog.at_level(logging.WARNING):
        r = c.get("/readyz")
    assert r.status_code == 503
    assert r.json() == {
        "status": "not_ready",
        "checks": {"database": "ok", "broker": "unreachable"},
    }
    assert "127.0.0.1" not in r.text and "s3cret" not in r.text
    # The cause goes to the server's log, with its traceback.
    (record,) = [r for r in caplog.records if r.name == "app.api.health"]
    assert record.levelno == logging.WARNING
    assert "broker" in record.getMessage()
    assert record.exc_info is not None


def test_readyz_openapi_example_shows_no_exception_text(client):
    spec = client.get("/openapi.json").json()
    example = spec["paths"]["/readyz"]["get"]["responses"]["503"]["content"]["application/json"]
    assert example["example"]["checks"] == {"database": "ok", "broker": "unreachable"}


def test_enqueue_failure_is_a_503_and_the_job_is_marked_failed(admin_key, settings, digits_zip):
    from tests.api.conftest import bearer, error_code, upload

    broken = settings.model_copy(update={"broker_url": "redis://127.0.0.1:9/0"})
    with TestClient(create_app(broken), headers=bearer(admin_key)) as c:
        ds = upload(c, digits_zip(per_class=3, name="h.zip")).json()
        r = c.post(
            "/v1/jobs",
            json={"strategy": "finetune", "base_model": "timm:test_resnet", "dataset_id": ds["id"]},
        )
        assert r.status_code == 503 and error_code(r) == "broker_unavailable"
        job = c.get(f"/v1/jobs/{r.json()['error']['details']['job_id']}").json()
    assert job["status"] == "failed"
    assert "broker" in job["error"]
