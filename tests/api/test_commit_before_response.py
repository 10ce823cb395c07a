"""A client that reads right after a write must see it: every response is sent only after the
request's transaction has committed.

FastAPI runs the exit code of a ``yield`` dependency after the response is sent unless the
dependency is function-scoped; a session committed there let a fast client get 201 for a dataset
and then 404 for its id. These tests look at the database, over a connection of their own, at the
moment the response starts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import text

from app.db.session import Database
from app.main import create_app
from app.settings import Settings
from tests.api.conftest import bearer, upload


def client_observing(
    settings: Settings, key: str, look: Callable[[], Any], seen: list[Any]
) -> TestClient:
    """A TestClient whose app calls ``look()`` when it starts sending each HTTP response."""
    app = create_app(settings)

    async def observed(scope, receive, send):  # type: ignore[no-untyped-def]
        async def send_and_look(message):  # type: ignore[no-untyped-def]
            if message["type"] == "http.response.start":
                seen.append(look())
            await send(message)

        await app(scope, receive, send_and_look)

    return TestClient(observed, headers=bearer(key))


def test_uploaded_dataset_is_committed_before_the_response(
    admin_key, settings, db: Database, digits_zip
):
    def datasets_in_db() -> int:
        with db.engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM datasets")).scalar_one()

    seen: list[int] = []
    with client_observing(settings, admin_key, datasets_in_db, seen) as client:
        r = upload(client, digits_zip())
    assert r.status_code == 201
    assert seen == [1]


def test_cancel_is_committed_before_the_response(admin_key, settings, db: Database, digits_zip):
    with TestClient(create_app(settings), headers=bearer(admin_key)) as client:
        dataset_id = upload(client, digits_zip()).json()["id"]
        spec = {"strategy": "finetune", "base_model": "timm:test_resnet", "pretrained": False,
                "dataset_id": dataset_id}  # fmt: skip
        job_id = client.post("/v1/jobs", json=spec).json()["id"]

    def job_status() -> str:
        with db.engine.connect() as conn:
            return conn.execute(
                text("SELECT status FROM jobs WHERE id = :id"), {"id": job_id.replace("-", "")}
            ).scalar_one()

    seen: list[str] = []
    with client_observing(settings, admin_key, job_status, seen) as client:
        r = client.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "cancelled"
    assert [s.lower() for s in seen] == ["cancelled"]
