"""GET /v1/jobs/{id}/events: Server-Sent Events read from the database.

The job rows are written here by the worker's own code (claim, DatabaseProgress, finish) on the
real SQLite database; tests/e2e/test_events.py follows a job a real worker trains.
"""

from __future__ import annotations

import json
import threading
import time
import uuid

import anyio
import pytest

from app.api.events import job_events
from app.db.models import JobStatus
from app.db.repositories import jobs as repo
from app.engine import EpochMetrics
from tests.api.conftest import bearer, error_code, make_key, upload
from worker.progress import DatabaseProgress


def parse(text: str) -> list[dict]:
    """SSE frames -> [{"event", "id", "data"}] and {"comment"} entries, in order."""
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        item: dict = {}
        for line in block.split("\n"):
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "":
                item["comment"] = value
            elif field == "data":
                item["data"] = json.loads(value)
            else:
                item[field] = value
        events.append(item)
    return events


def epoch_metrics(epoch: int) -> EpochMetrics:
    return EpochMetrics(
        epoch=epoch, phase="train", train_loss=1.0 / epoch, val_loss=1.2 / epoch,
        val_accuracy=0.5 + epoch / 10, learning_rate=0.01, images_per_second=100.0, seconds=1.0,
    )  # fmt: skip


@pytest.fixture
def job_id(client, digits_zip) -> uuid.UUID:
    dataset = upload(client, digits_zip(per_class=4, name="events.zip")).json()["id"]
    r = client.post(
        "/v1/jobs",
        json={
            "strategy": "finetune", "base_model": "timm:test_resnet", "pretrained": False,
            "dataset_id": dataset, "hyperparameters": {"epochs": 3, "image_size": 32},
        },
    )  # fmt: skip
    assert r.status_code == 202, r.text
    return uuid.UUID(r.json()["id"])


def run_worker(db, job_id: uuid.UUID, epochs: int, *, pause: float = 0.0) -> None:
    """What a worker writes for a job, through the worker's own code."""
    with db.session_scope() as session:
        attempt = repo.claim(session, job_id)
    progress = DatabaseProgress(db, job_id, interval_s=0.0, attempt=attempt)
    progress.on_train_start(total_epochs=epochs, steps_per_epoch=4)
    for epoch in range(1, epochs + 1):
        for step in range(1, 5):
            time.sleep(pause)
            progress.on_step(epoch, step, 4)
        progress.on_epoch_end(epoch_metrics(epoch))
    with db.session_scope() as session:
        assert repo.finish(session, job_id, JobStatus.succeeded, attempt=attempt)


def test_a_finished_job_streams_its_metrics_then_ends(client, db, job_id):
    run_worker(db, job_id, epochs=3)
    r = client.get(f"/v1/jobs/{job_id}/events")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["cache-control"] == "no-cache, no-transform"
    events = parse(r.text)
    assert events[0] == {"retry": "2000"}
    assert [(e["event"], e["id"]) for e in events[1:]] == [
        ("metrics", "1"), ("metrics", "2"), ("metrics", "3"), ("end", "3")
    ]  # fmt: skip
    assert [e["data"]["val_accuracy"] for e in events[1:4]] == pytest.approx([0.6, 0.7, 0.8])
    end = events[-1]["data"]
    assert end["status"] == "succeeded" and end["progress"]["fraction"] == 1.0


def test_last_event_id_resumes_after_that_epoch(client, db, job_id):
    run_worker(db, job_id, epochs=3)
    r = client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "2"})
    events = parse(r.text)[1:]
    assert [(e["event"], e["data"].get("epoch")) for e in events] == [
        ("metrics", 3), ("end", None)
    ]  # fmt: skip


def test_bad_requests_get_the_envelope(client, job_id, settings):
    r = client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "soon"})
    assert r.status_code == 422 and error_code(r) == "validation_error"
    assert "Last-Event-ID" in r.json()["error"]["message"]
    r = client.get(f"/v1/jobs/{uuid.uuid4()}/events")
    assert r.status_code == 404 and error_code(r) == "job_not_found"
    r = client.get(f"/v1/jobs/{job_id}/events", headers={"Authorization": ""})
    assert r.status_code == 401
    predict_only = make_key(settings, ["predict"], name="predict-only")
    r = client.get(f"/v1/jobs/{job_id}/events", headers=bearer(predict_only))
    assert r.status_code == 403 and error_code(r) == "insufficient_scope"


def test_a_live_job_streams_status_progress_metrics_and_heartbeats(client, db, job_id):
    frames: list[str] = []

    async def watch() -> None:
        with anyio.fail_after(30):
            async for chunk in job_events(db, job_id, poll_s=0.02, heartbeat_s=0.1):
                frames.append(chunk)

    # While the job waits in the queue the stream sends heartbeats; then a worker runs it.
    def worker() -> None:
        time.sleep(0.5)
        run_worker(db, job_id, epochs=2, pause=0.05)

    thread = threading.Thread(target=worker)
    thread.start()
    anyio.run(watch)
    thread.join()
    events = parse("".join(frames))
    kinds = [e.get("event", "comment" if "comment" in e else "retry") for e in events]
    assert kinds[:3] == ["retry", "status", "comment"]
    assert events[1]["data"]["status"] == "queued"
    assert events[2]["comment"] == "keep-alive"
    running = kinds.index("status", 2)
    assert events[running]["data"]["status"] == "running"
    assert kinds[-1] == "end" and events[-1]["data"]["status"] == "succeeded"
    assert [e["data"]["epoch"] for e in events if e.get("event") == "metrics"] == [1, 2]
    steps = [
        (e["data"]["epoch"], e["data"]["step"]) for e in events if e.get("event") == "progress"
    ]
    assert len(steps) >= 4 and steps == sorted(steps)  # it moved, and never backwards
    # Each event carries the last epoch whose metrics were sent.
    first_metrics = kinds.index("metrics")
    assert {e["id"] for e in events[running:first_metrics]} == {"0"}
    assert events[-1]["id"] == "2"


def test_a_cancelled_queued_job_ends_its_stream(client, job_id):
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    events = parse(client.get(f"/v1/jobs/{job_id}/events").text)
    assert [e.get("event") for e in events] == [None, "end"]
    assert events[-1]["data"]["status"] == "cancelled"


def test_a_stream_closes_after_max_s_and_resumes_where_it_stopped(client, db, job_id):
    async def collect(**kwargs) -> str:
        return "".join([c async for c in job_events(db, job_id, poll_s=0.02, **kwargs)])

    # A queued job: the stream gives its status, then closes after max_s without `end`.
    first = parse(anyio.run(lambda: collect(max_s=0.2)))
    assert [e.get("event") for e in first] == [None, "status"]
    # The job runs two epochs meanwhile; the next connection, after epoch 1, sends the rest.
    run_worker(db, job_id, epochs=2)
    second = parse(anyio.run(lambda: collect(last_epoch=1, max_s=0.2)))
    assert [(e.get("event"), e.get("id")) for e in second[1:]] == [("metrics", "2"), ("end", "2")]
