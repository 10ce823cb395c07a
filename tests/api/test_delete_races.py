"""A dataset deleted while a job that uses it is being submitted, on SQLite and on Postgres: the
check "is a queued job using it?" and the delete are one step, and a job that loses the race is
told its dataset is gone (found by an attack: a 500, or a job accepted for a deleted dataset)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from app.db.migrate import upgrade
from app.db.session import Database
from app.jobspec import JobCreate
from app.main import create_app
from app.services import datasets as dataset_service
from app.services import jobs as job_service
from app.settings import Settings
from tests.api.conftest import bearer, error_code, make_key, upload
from tests.api.test_domain_adaptation import job, upload_unlabeled


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.e2e)])
def racing(request, tmp_path, digits_zip, unlabeled_zip) -> Iterator[tuple]:
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
        settings = Settings(data_dir=tmp_path / "data", database_url=url)
    else:
        settings = Settings(data_dir=tmp_path / "data")
    settings.layout.ensure()
    upgrade(settings.resolved_database_url)
    key = make_key(settings, ["admin"], name=f"races-{uuid.uuid4().hex[:8]}")
    db = Database(settings.resolved_database_url)
    with TestClient(create_app(settings), headers=bearer(key)) as client:
        source = upload(client, digits_zip(per_class=4, name="source.zip")).json()["id"]
        target = upload_unlabeled(client, unlabeled_zip()).json()["id"]
        with ThreadPoolExecutor(1) as pool:
            yield client, settings, db, pool, source, target
    db.dispose()


def still_waiting(call: Future, seconds: float = 1.5) -> bool:
    time.sleep(seconds)
    return call.running()


def test_a_job_submitted_while_its_dataset_is_deleted_is_told_it_is_gone(racing):
    client, settings, db, pool, source, target = racing
    with db.session_scope() as session:
        # The delete has checked and removed the row, and not yet committed.
        dataset_service.delete_dataset(session, settings, uuid.UUID(target))
        post = pool.submit(client.post, "/v1/jobs", json=job(source, target_dataset_id=target))
        assert still_waiting(post), "the job's insert should wait for the delete to commit"
    r = post.result(timeout=60)
    assert r.status_code == 404, r.text  # was a 500 (a foreign key error)
    assert error_code(r) == "dataset_not_found"
    assert r.json()["error"]["details"]["field"] == "target_dataset_id"
    # (The Postgres database is shared with other tests of the session: look for this job only.)
    jobs = client.get("/v1/jobs", params={"limit": 500}).json()["items"]
    assert not [j for j in jobs if j["dataset_id"] == source]


def test_a_delete_while_a_job_is_being_submitted_waits_and_is_refused(racing):
    client, _, db, pool, source, target = racing
    spec = JobCreate(**job(source, target_dataset_id=target)).model_dump(mode="json")
    with db.session_scope() as session:
        # The job is inserted, not yet committed.
        job_id = job_service.create_job(session, spec).id
        delete = pool.submit(client.delete, f"/v1/datasets/{target}")
        assert still_waiting(delete), "the delete's check should wait for the job to commit"
    r = delete.result(timeout=60)
    assert r.status_code == 409, r.text  # was a 204, leaving a queued job without its target
    assert error_code(r) == "dataset_in_use"
    assert client.get(f"/v1/jobs/{job_id}").json()["target_dataset_id"] == target
