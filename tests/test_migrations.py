"""Migrations build exactly the schema the ORM models describe, on SQLite and on Postgres."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from app.db.base import Base
from app.db.migrate import alembic_config, upgrade


def assert_matches_models(url: str) -> None:
    upgrade(url)
    engine = create_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], f"models and migrations disagree: {diff}"
    command.downgrade(alembic_config(url), "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade(url)  # and back up again: downgrades really undo their upgrades
    engine.dispose()


def test_migrations_match_models_on_sqlite(tmp_path):
    assert_matches_models(f"sqlite:///{tmp_path / 'm.db'}")


@pytest.mark.e2e
def test_migrations_match_models_on_postgres(postgres_url):
    assert_matches_models(postgres_url)


def test_0005_turns_model_paths_into_keys(tmp_path):
    """Rows written with absolute paths (before 0005) get the key of the same folder."""
    import uuid

    from sqlalchemy import text

    url = f"sqlite:///{tmp_path / 'k.db'}"
    command.upgrade(alembic_config(url), "0004")
    engine = create_engine(url)
    model_id = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO model_versions (id, name, version, base_model, strategy, class_names,"
                " metrics, lineage, artifact_dir, created_at) VALUES (:id, 'm', 1, 'timm:x',"
                " 'finetune', '[]', '{}', '{}', :path, '2026-11-29 00:00:00')"
            ),
            {"id": model_id.hex, "path": f"/srv/old-data/models/{model_id}"},
        )
    upgrade(url)
    with engine.connect() as conn:
        key = conn.execute(text("SELECT artifact_key FROM model_versions")).scalar_one()
    assert key == f"models/{model_id}"
    engine.dispose()


def test_0007_leaves_existing_jobs_without_warnings(tmp_path):
    """Jobs created before 0007 get warnings NULL (shown as []); the uploads table is new."""
    import uuid

    from sqlalchemy import text

    from app.api.schemas.jobs import JobOut
    from app.db.models import Job
    from app.db.session import Database

    url = f"sqlite:///{tmp_path / 'w.db'}"
    command.upgrade(alembic_config(url), "0005")
    engine = create_engine(url)
    job_id = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO jobs (id, status, strategy, base_model, spec, cancel_requested, epoch,"
                " total_epochs, step, total_steps, created_at, attempts) VALUES (:id, 'queued',"
                " 'finetune', 'timm:x', '{}', 0, 0, 1, 0, 0, '2026-11-29 00:00:00', 0)"
            ),
            {"id": job_id.hex},
        )
    assert "uploads" not in inspect(engine).get_table_names()
    upgrade(url)
    assert "uploads" in inspect(engine).get_table_names()
    db = Database(url)
    with db.session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.warnings is None
        assert JobOut.from_job(job, None).warnings == []
    db.dispose()
    engine.dispose()


def test_0006_starts_the_registry_generation_and_keeps_versions(tmp_path):
    """Versions made before 0006 are unarchived and unaliased; the generation row exists."""
    import uuid

    from sqlalchemy import text

    url = f"sqlite:///{tmp_path / 'r.db'}"
    command.upgrade(alembic_config(url), "0005")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO model_versions (id, name, version, base_model, strategy, class_names,"
                " metrics, lineage, artifact_key, created_at) VALUES (:id, 'm', 1, 'timm:x',"
                " 'finetune', '[]', '{}', '{}', 'models/x', '2026-11-29 00:00:00')"
            ),
            {"id": uuid.uuid4().hex},
        )
    upgrade(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT archived_at FROM model_versions")).all() == [(None,)]
        assert conn.execute(text("SELECT id, generation FROM registry_state")).all() == [(1, 0)]
    engine.dispose()


def test_0008_makes_existing_datasets_labelled_and_keeps_old_epochs_readable(tmp_path):
    """Datasets uploaded before 0008 are labelled; epochs recorded before it have no eval
    figures and an empty extra; jobs have no target; a downgrade drops exactly the new columns."""
    import uuid

    from sqlalchemy import text

    from app.api.schemas.jobs import EpochMetricsOut, JobOut
    from app.db.models import Dataset, Job, JobMetric
    from app.db.session import Database

    url = f"sqlite:///{tmp_path / 'd.db'}"
    command.upgrade(alembic_config(url), "0007")
    engine = create_engine(url)
    dataset_id, job_id = uuid.uuid4(), uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO datasets (id, name, sha256, format, num_classes, num_images,"
                " size_bytes, report, created_at) VALUES (:id, 'd', 'x', 'zip', 2, 4, 10, '{}',"
                " '2026-11-29 00:00:00')"
            ),
            {"id": dataset_id.hex},
        )
        conn.execute(
            text(
                "INSERT INTO jobs (id, status, strategy, base_model, dataset_id, spec,"
                " cancel_requested, epoch, total_epochs, step, total_steps, created_at, attempts)"
                " VALUES (:id, 'succeeded', 'finetune', 'timm:x', :ds, '{}', 0, 1, 1, 0, 0,"
                " '2026-11-29 00:00:00', 1)"
            ),
            {"id": job_id.hex, "ds": dataset_id.hex},
        )
        conn.execute(
            text(
                "INSERT INTO job_metrics (job_id, epoch, phase, train_loss, val_loss, val_accuracy,"
                " learning_rate, images_per_second, seconds, created_at) VALUES (:id, 1, 'train',"
                " 1.0, 1.0, 0.5, 0.001, 10.0, 1.0, '2026-11-29 00:00:00')"
            ),
            {"id": job_id.hex},
        )
    upgrade(url)
    db = Database(url)
    with db.session_scope() as session:
        dataset = session.get(Dataset, dataset_id)
        assert dataset is not None and dataset.kind == "labelled"
        job = session.get(Job, job_id)
        assert job is not None
        assert (job.target_dataset_id, job.labeled_target_dataset_id, job.eval_dataset_id) == (
            None, None, None
        )  # fmt: skip
        out = JobOut.from_job(job, None)
        assert out.target_dataset_id is None and out.eval_dataset_id is None
        epoch = EpochMetricsOut.model_validate(session.query(JobMetric).one())
        assert (epoch.extra, epoch.eval_loss, epoch.eval_accuracy) == ({}, None, None)
    db.dispose()
    command.downgrade(alembic_config(url), "0007")
    columns = {c["name"] for c in inspect(engine).get_columns("jobs")}
    assert not {"target_dataset_id", "labeled_target_dataset_id", "eval_dataset_id"} & columns
    assert "kind" not in {c["name"] for c in inspect(engine).get_columns("datasets")}
    assert "extra" not in {c["name"] for c in inspect(engine).get_columns("job_metrics")}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM job_metrics")).scalar_one() == 1
    engine.dispose()


def test_0009_takes_the_version_numbers_given_so_far(tmp_path):
    """After 0009 the next version of a name follows the largest it had; new names start at 1."""
    import uuid

    from sqlalchemy import text

    from app.db.repositories import models as models_repo
    from app.db.session import Database

    url = f"sqlite:///{tmp_path / 'n.db'}"
    command.upgrade(alembic_config(url), "0008")
    engine = create_engine(url)
    with engine.begin() as conn:
        for version in (1, 4):
            conn.execute(
                text(
                    "INSERT INTO model_versions (id, name, version, base_model, strategy,"
                    " class_names, metrics, lineage, artifact_key, created_at) VALUES (:id, 'm',"
                    " :v, 'timm:x', 'finetune', '[]', '{}', '{}', 'models/x', '2026-11-29')"
                ),
                {"id": uuid.uuid4().hex, "v": version},
            )
    upgrade(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT name, last_version FROM model_names")).all() == [("m", 4)]
    engine.dispose()
    db = Database(url)
    with db.session_scope() as session:
        assert models_repo.next_version(session, "m") == 5
        assert models_repo.next_version(session, "m") == 6
        assert models_repo.next_version(session, "new") == 1
    db.dispose()
    command.downgrade(alembic_config(url), "0008")
