"""The API's start-up removes what a crash mid-ingest left behind, and only that."""

from __future__ import annotations

import uuid

from fastapi.testclient import TestClient

from app.main import create_app
from tests.api.conftest import upload


def test_start_up_sweeps_a_dead_ingest_and_keeps_real_datasets(settings, client, digits_zip):
    kept = upload(client, digits_zip(per_class=3, name="k.zip")).json()["id"]
    dead = uuid.uuid4()
    spool = settings.layout.upload_path(dead)
    spool.write_bytes(b"\0" * 4096)  # serve was killed while spooling...
    staging = settings.layout.dataset_dir(dead) / ".staging"
    staging.mkdir(parents=True)  # ...or while extracting
    (staging / "blob").write_bytes(b"x")
    with TestClient(create_app(settings)) as _:
        pass
    assert not spool.exists()
    assert not settings.layout.dataset_dir(dead).exists()
    assert settings.layout.dataset_dir(kept).is_dir()
    assert (settings.layout.dataset_dir(kept) / "manifest.json").exists()
