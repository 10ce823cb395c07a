"""API keys and scopes: every /v1 operation refuses a caller without a key of the right scope."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.db.models import ApiKey
from app.main import StartupRefused, create_app
from app.settings import Settings
from tests.api.conftest import bearer, error_code, make_key, upload

BIN = Path(sys.executable).parent


def operations(app) -> list[tuple[str, str]]:
    """(method, concrete path) for every operation in the OpenAPI schema."""
    out = []
    for template, ops in app.openapi()["paths"].items():
        path = template
        for param in ("dataset_id", "job_id", "model_id", "key"):
            path = path.replace("{" + param + "}", str(uuid.uuid4()))
        out += [(method.upper(), path) for method in ops]
    return out


def test_every_v1_operation_needs_a_key(client):
    anonymous = TestClient(client.app)
    ops = [(m, p) for m, p in operations(client.app) if p.startswith("/v1")]
    assert len(ops) >= 19
    for method, path in ops:
        r = anonymous.request(method, path)
        assert r.status_code == 401, (method, path, r.text)
        assert error_code(r) == "unauthenticated"
        assert r.headers["www-authenticate"].startswith("Bearer")
    # Unknown paths under /v1 say nothing more to a caller without a key.
    assert anonymous.get("/v1/secrets").status_code == 401
    # Liveness and readiness stay open.
    assert anonymous.get("/healthz").status_code == 200
    assert anonymous.get("/readyz").status_code == 200


def test_the_openapi_schema_documents_each_scope(client):
    schema = client.app.openapi()
    assert schema["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"
    assert schema["paths"]["/v1/jobs"]["post"]["security"] == [{"ApiKey": ["train"]}]
    assert schema["paths"]["/v1/models/{model_id}/predict"]["post"]["security"] == [
        {"ApiKey": ["predict"]}
    ]
    assert schema["paths"]["/v1/keys"]["get"]["security"] == [{"ApiKey": ["admin"]}]
    assert "security" not in schema["paths"]["/healthz"]["get"]


@pytest.mark.parametrize(
    "header",
    ["Bearer tl_000000000000_nope", "Bearer nonsense", "Basic dXNlcjpwYXNz", "Bearer " + "x" * 300],
)
def test_invalid_keys_are_refused(client, header):
    r = TestClient(client.app).get("/v1/datasets", headers={"Authorization": header})
    assert r.status_code == 401
    assert error_code(r) in ("invalid_api_key", "unauthenticated")


def test_a_key_with_the_right_prefix_and_a_wrong_secret_is_refused(client, admin_key):
    forged = admin_key[:-4] + ("AAAA" if not admin_key.endswith("AAAA") else "BBBB")
    r = TestClient(client.app).get("/v1/datasets", headers=bearer(forged))
    assert r.status_code == 401 and error_code(r) == "invalid_api_key"


def test_scopes(client, settings, digits_zip):
    read = TestClient(client.app, headers=bearer(make_key(settings, ["read"], "reader")))
    train = TestClient(client.app, headers=bearer(make_key(settings, ["train"], "trainer")))
    predict = TestClient(client.app, headers=bearer(make_key(settings, ["predict"], "predictor")))

    assert read.get("/v1/datasets").status_code == 200
    assert read.get("/v1/strategies").status_code == 200
    r = upload(read, digits_zip(per_class=3, name="r.zip"))
    assert r.status_code == 403 and error_code(r) == "insufficient_scope"
    assert r.json()["error"]["details"] == {"required": "train", "granted": ["read"]}
    assert read.get("/v1/keys").status_code == 403

    dataset = upload(train, digits_zip(per_class=3, name="t.zip"))
    assert dataset.status_code == 201
    assert train.get("/v1/datasets").status_code == 403  # train does not include read
    assert predict.get("/v1/models").status_code == 403
    assert predict.post("/v1/jobs", json={}).status_code == 403
    assert predict.delete(f"/v1/datasets/{dataset.json()['id']}").status_code == 403
    # Nothing was created or removed by the refused calls.
    assert client.get("/v1/datasets").json()["total"] == 1


def test_unauthenticated_upload_is_refused_before_the_body_is_read(client, settings):
    sent = 0

    def two_gib():
        nonlocal sent
        yield (
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.zip"\r\n'
            b"Content-Type: application/zip\r\n\r\n"
        )
        for _ in range(2048):
            sent += 1 << 20
            yield b"\0" * (1 << 20)
        yield b"\r\n--b--\r\n"

    r = TestClient(client.app).post(
        "/v1/datasets",
        content=two_gib(),
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert r.status_code == 401
    assert sent <= 1 << 20  # the client was not even asked for the second MiB
    assert not any(settings.layout.tmp.iterdir())


def test_a_cross_site_cancel_is_refused(client, digits_zip):
    dataset_id = upload(client, digits_zip(per_class=3, name="x.zip")).json()["id"]
    spec = {"strategy": "finetune", "base_model": "timm:test_resnet", "dataset_id": dataset_id}
    job_id = client.post("/v1/jobs", json=spec).json()["id"]
    # What a web page can send cross-site: a simple POST with cookies, never our header.
    r = TestClient(client.app).post(
        f"/v1/jobs/{job_id}/cancel",
        headers={"Origin": "https://evil.example", "Content-Type": "text/plain"},
    )
    assert r.status_code == 401
    assert "access-control-allow-origin" not in r.headers
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"


def test_cors_is_off_by_default_and_configurable(settings, admin_key):
    preflight = {
        "Origin": "https://dash.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    with TestClient(create_app(settings)) as c:
        r = c.options("/v1/jobs", headers=preflight)
        assert "access-control-allow-origin" not in r.headers
    allowed = settings.model_copy(update={"cors_origins": "https://dash.example"})
    with TestClient(create_app(allowed)) as c:
        r = c.options("/v1/jobs", headers=preflight)
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://dash.example"
        r = c.options("/v1/jobs", headers={**preflight, "Origin": "https://evil.example"})
        assert r.headers.get("access-control-allow-origin") != "https://evil.example"


def test_host_allow_list(settings, admin_key):
    limited = settings.model_copy(update={"allowed_hosts": "api.example.com,*.internal"})
    with TestClient(create_app(limited), headers=bearer(admin_key)) as c:
        r = c.get("/v1/datasets", headers={"Host": "rebound.attacker.example"})
        assert r.status_code == 400 and error_code(r) == "host_not_allowed"
        assert c.get("/v1/datasets", headers={"Host": "api.example.com:8000"}).status_code == 200
        assert c.get("/v1/datasets", headers={"Host": "a.b.internal"}).status_code == 200
        assert c.get("/healthz", headers={"Host": "127.0.0.1"}).status_code == 400
    with TestClient(create_app(settings), headers=bearer(admin_key)) as c:  # off by default
        assert c.get("/v1/datasets", headers={"Host": "anything.example"}).status_code == 200


def test_revoked_key_is_refused_and_last_use_is_recorded(client, settings, db):
    key = make_key(settings, ["read"], "temp")
    user = TestClient(client.app, headers=bearer(key))
    assert user.get("/v1/datasets").status_code == 200
    with db.session_scope() as s:
        row = s.scalar(select(ApiKey).where(ApiKey.name == "temp"))
        assert row.last_used_at is not None
        prefix = row.prefix
    listed = client.get("/v1/keys").json()
    assert any(k["prefix"] == prefix for k in listed)
    assert all("key" not in k and "key_hash" not in k for k in listed)
    r = client.delete(f"/v1/keys/{prefix}")
    assert r.status_code == 200 and r.json()["revoked_at"]
    r = user.get("/v1/datasets")
    assert r.status_code == 401 and error_code(r) == "invalid_api_key"


def test_keys_api_creates_a_working_key_with_the_asked_scopes(client):
    r = client.post("/v1/keys", json={"name": "ci", "scopes": ["read", "train"]})
    assert r.status_code == 201
    created = r.json()
    assert created["key"].startswith(f"tl_{created['prefix']}_")
    ci = TestClient(client.app, headers=bearer(created["key"]))
    assert ci.get("/v1/jobs").status_code == 200
    assert ci.get("/v1/keys").status_code == 403
    bad = client.post("/v1/keys", json={"name": "x", "scopes": ["root"]})
    assert bad.status_code == 422
    bad = client.post("/v1/keys", json={"name": "../x", "scopes": ["read"]})
    assert bad.status_code == 422


def test_keys_cli(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRANSFERLAB_")}
    env |= {"TRANSFERLAB_DATA_DIR": str(tmp_path / "data"), "TRANSFERLAB_API_KEY_CACHE_S": "0"}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "transferlab"), "keys", *args], env=env, capture_output=True, text=True
        )

    created = cli("create", "--scopes", "read,predict", "--name", "ci")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("tl_") and "\n" not in key  # the key alone on stdout
    # ...and one line on stderr to say what was made, not the migration's progress.
    assert created.stderr.strip().splitlines() == [
        "created key " + key.split("_")[1] + " (ci: predict, read); it is shown only now"
    ]
    settings = Settings(data_dir=tmp_path / "data", api_key_cache_s=0)
    with TestClient(create_app(settings), headers=bearer(key)) as c:
        assert c.get("/v1/models").status_code == 200
        assert c.post("/v1/jobs", json={}).status_code == 403
        listed = cli("list")
        prefix = key.split("_")[1]
        assert prefix in listed.stdout and key not in listed.stdout
        assert cli("revoke", prefix).returncode == 0
        assert c.get("/v1/models").status_code == 401
    assert cli("create", "--scopes", "root", "--name", "x").returncode == 2
    assert cli("revoke", "nope").returncode == 2


def test_production_refuses_default_secrets():
    common = {"environment": "production", "broker_url": "redis://redis:6379/0"}
    for url in (
        "postgresql+psycopg://transferlab:transferlab@postgres/transferlab",
        "postgresql+psycopg://transferlab@postgres/transferlab",
        "postgresql+psycopg://transferlab:@postgres/transferlab",
    ):
        with pytest.raises(ValueError, match="password"):
            Settings(database_url=url, **common)
    Settings(database_url="postgresql+psycopg://t:9dQ2-long-random@postgres/t", **common)


def test_production_refuses_to_start_without_a_key(tmp_path):
    from app.db.migrate import upgrade

    dev = Settings(data_dir=tmp_path / "data")
    dev.layout.ensure()
    upgrade(dev.resolved_database_url)
    # model_copy skips validation: production on SQLite only to reach the key check here.
    prod = dev.model_copy(update={"environment": "production"})
    with pytest.raises(StartupRefused, match="no API key"), TestClient(create_app(prod)):
        pass
    make_key(dev, ["admin"])
    with TestClient(create_app(prod)) as c:
        assert c.get("/healthz").status_code == 200
