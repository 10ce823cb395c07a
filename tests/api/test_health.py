from __future__ import annotations

from fastapi.testclient import TestClient

from app.main import create_app


def test_healthz(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_on_the_embedded_default(client):
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "checks": {"database": "ok", "broker": "ok"}}


def test_readyz_reports_an_unreachable_broker(settings):
    # Port 9 (discard) is closed on loopback: a real connection attempt that fails.
    broken = settings.model_copy(update={"broker_url": "redis://127.0.0.1:9/0"})
    with TestClient(create_app(broken)) as c:
        r = c.get("/readyz")
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "not_ready"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["broker"].startswith("error:")


def test_enqueue_failure_is_a_503_and_the_job_is_marked_failed(settings, digits_zip):
    from tests.api.conftest import error_code, upload

    broken = settings.model_copy(update={"broker_url": "redis://127.0.0.1:9/0"})
    with TestClient(create_app(broken)) as c:
        ds = upload(c, digits_zip(per_class=3, name="h.zip")).json()
        r = c.post(
            "/v1/jobs",
            json={"strategy": "finetune", "base_model": "timm:test_resnet", "dataset_id": ds["id"]},
        )
        assert r.status_code == 503 and error_code(r) == "broker_unavailable"
        job = c.get(f"/v1/jobs/{r.json()['error']['details']['job_id']}").json()
    assert job["status"] == "failed"
    assert "broker" in job["error"]
