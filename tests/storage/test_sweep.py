"""The start-up sweep removes a dead ingest's leftovers and keeps a live one's (real processes)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.storage.layout import DataLayout
from app.storage.sweep import STALE_AFTER_S, ingest_in_progress, ingest_lock, sweep_leftovers

REPO = Path(__file__).resolve().parents[2]

# Does what the dataset service does: lock, spool, extract into <id>/.staging, then hangs.
_INGESTER = textwrap.dedent(
    """
    import sys, time, uuid
    from pathlib import Path
    from app.storage.layout import DataLayout
    from app.storage.sweep import ingest_lock

    layout = DataLayout(Path(sys.argv[1])).ensure()
    dataset_id = uuid.UUID(sys.argv[2])
    with ingest_lock(layout, dataset_id):
        layout.upload_path(dataset_id).write_bytes(b"x" * 4096)
        (layout.dataset_dir(dataset_id) / ".staging").mkdir(parents=True)
        (layout.dataset_dir(dataset_id) / ".staging" / "00000000").write_bytes(b"png")
        print("ready", flush=True)
        time.sleep(120)
    """
)


@pytest.fixture
def layout(tmp_path: Path) -> DataLayout:
    return DataLayout(tmp_path / "data").ensure()


@pytest.fixture
def ingester(layout: DataLayout) -> Iterator[tuple[subprocess.Popen[str], uuid.UUID]]:
    dataset_id = uuid.uuid4()
    proc = subprocess.Popen(
        [sys.executable, "-c", _INGESTER, str(layout.root), str(dataset_id)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        yield proc, dataset_id
    finally:
        proc.kill()
        proc.wait(timeout=10)


def nothing_known(_: uuid.UUID) -> bool:
    return False


def test_a_live_ingest_in_another_process_is_kept(layout: DataLayout, ingester) -> None:
    _, dataset_id = ingester
    assert ingest_in_progress(layout, dataset_id)
    assert sweep_leftovers(layout, nothing_known) == []
    assert layout.upload_path(dataset_id).exists()
    assert (layout.dataset_dir(dataset_id) / ".staging" / "00000000").exists()
    assert layout.ingest_lock_path(dataset_id).exists()


def test_a_killed_ingest_is_swept(layout: DataLayout, ingester, caplog) -> None:
    proc, dataset_id = ingester
    os.kill(proc.pid, signal.SIGKILL)  # no finally, no atexit: what a crash leaves
    proc.wait(timeout=10)
    assert layout.upload_path(dataset_id).exists()
    assert not ingest_in_progress(layout, dataset_id)

    with caplog.at_level(logging.WARNING, logger="app.storage.sweep"):
        removed = sweep_leftovers(layout, nothing_known)

    assert set(removed) == {
        layout.upload_path(dataset_id),
        layout.dataset_dir(dataset_id),
        layout.ingest_lock_path(dataset_id),
    }
    assert not layout.upload_path(dataset_id).exists()
    assert not layout.dataset_dir(dataset_id).exists()
    assert not layout.ingest_lock_path(dataset_id).exists()
    logged = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert {str(p) for p in removed} <= {str(r.args[0]) for r in logged}  # type: ignore[index]
    assert all("removed" in r.getMessage() for r in logged)


def test_a_dataset_folder_with_a_row_is_never_removed(layout: DataLayout) -> None:
    dataset_id = uuid.uuid4()
    folder = layout.dataset_dir(dataset_id)
    (folder / "train" / "cats").mkdir(parents=True)
    (folder / "manifest.json").write_text("{}")
    (folder / ".staging").mkdir()  # cannot normally exist; without a live ingest, it goes
    removed = sweep_leftovers(layout, lambda i: i == dataset_id)
    assert removed == [folder / ".staging"]
    assert (folder / "manifest.json").exists() and (folder / "train" / "cats").is_dir()


def test_leftovers_from_before_locks_existed_are_swept(layout: DataLayout) -> None:
    # No lock file and no row: nobody is working on it.
    dataset_id = uuid.uuid4()
    layout.upload_path(dataset_id).write_bytes(b"x")
    layout.dataset_dir(dataset_id).mkdir()
    removed = sweep_leftovers(layout, nothing_known)
    assert set(removed) == {layout.upload_path(dataset_id), layout.dataset_dir(dataset_id)}


def test_a_lock_held_in_this_process_counts_as_live(layout: DataLayout) -> None:
    dataset_id = uuid.uuid4()
    with ingest_lock(layout, dataset_id) as lock:
        layout.upload_path(dataset_id).write_bytes(b"x")
        assert sweep_leftovers(layout, nothing_known) == []
        assert lock.exists()
        layout.upload_path(dataset_id).unlink()
    assert not lock.exists()
    assert not ingest_in_progress(layout, dataset_id)


def test_ingest_lock_survives_a_stale_lock_file(layout: DataLayout) -> None:
    dataset_id = uuid.uuid4()
    layout.ingest_lock_path(dataset_id).write_text("pid 1 on a host that crashed\n")
    with ingest_lock(layout, dataset_id):
        assert ingest_in_progress(layout, dataset_id)
    assert not layout.ingest_lock_path(dataset_id).exists()


def test_the_dataset_is_kept_when_the_database_cannot_be_asked(layout: DataLayout) -> None:
    folder = layout.dataset_dir(uuid.uuid4())
    folder.mkdir()

    def unreachable(_: uuid.UUID) -> bool:
        raise ConnectionError("database down")

    assert sweep_leftovers(layout, unreachable) == []
    assert folder.exists()


def _age(path: Path, seconds: float) -> None:
    when = time.time() - seconds
    os.utime(path, (when, when))


def test_stale_partial_outputs_are_removed_and_fresh_ones_kept(layout: DataLayout) -> None:
    old_model = layout.models / f"{uuid.uuid4()}.partial"
    old_model.mkdir()
    (old_model / "model.safetensors.tmp").write_bytes(b"w")
    _age(old_model / "model.safetensors.tmp", STALE_AFTER_S + 60)
    _age(old_model, STALE_AFTER_S + 60)

    fresh_model = layout.models / f"{uuid.uuid4()}.partial"
    fresh_model.mkdir()
    (fresh_model / "model.safetensors.tmp").write_bytes(b"w")  # being written right now
    _age(fresh_model, STALE_AFTER_S + 60)  # the folder is old, its file is not

    finished = layout.model_dir(uuid.uuid4())
    (finished / "bundle").mkdir(parents=True)
    (finished / "model.safetensors").write_bytes(b"w")
    _age(finished / "model.safetensors", STALE_AFTER_S * 10)  # old finished files stay
    old_bundle = finished / "bundle" / "m-v1.partial"
    old_bundle.write_bytes(b"zip")
    _age(old_bundle, STALE_AFTER_S + 60)
    fresh_bundle = finished / "bundle" / "m-v2.partial"
    fresh_bundle.write_bytes(b"zip")

    old_features = layout.features / f"{uuid.uuid4()}.partial"
    old_features.mkdir()
    _age(old_features, STALE_AFTER_S + 60)

    removed = sweep_leftovers(layout, nothing_known)

    assert set(removed) == {old_model, old_bundle, old_features}
    assert fresh_model.exists() and fresh_bundle.exists()
    assert (finished / "model.safetensors").exists()


def test_names_that_are_not_ours_are_left_alone(layout: DataLayout) -> None:
    keep = [
        layout.tmp / "upload-not-a-uuid",
        layout.tmp / f"upload-{uuid.uuid4()}.keep",
        layout.tmp / "something-else",
        layout.datasets / "README",
        layout.datasets / "my-dataset",
        layout.models / "old.partial",
    ]
    for path in keep:
        if path.parent == layout.datasets or path.suffix == ".partial":
            path.mkdir()
        else:
            path.write_bytes(b"x")
    _age(layout.models / "old.partial", STALE_AFTER_S * 2)
    assert sweep_leftovers(layout, nothing_known) == []
    assert all(p.exists() for p in keep)
