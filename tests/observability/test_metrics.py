"""/metrics: request counters by route template, scrape-time job and queue gauges, serving."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import timm
import torch
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from app.db.models import Job, JobStatus
from app.db.session import Database
from app.engine import ModelCard, save_artifact
from app.main import create_app
from app.queue import JobQueue
from app.serving.cache import ModelCache
from app.serving.predict import predict_uploads
from app.settings import Settings
from tests.engine._helpers import PREPROCESSING_32

ROOT = Path(__file__).resolve().parents[2]


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = client.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def test_requests_are_counted_by_route_template_and_status(client, delta):
    healthz = delta("transferlab_http_requests_total", method="GET", route="/healthz", status="200")
    timed = delta("transferlab_http_request_duration_seconds_count", method="GET", route="/healthz")
    job = delta(
        "transferlab_http_requests_total", method="GET", route="/v1/jobs/{job_id}", status="404"
    )
    missing = delta(
        "transferlab_http_requests_total", method="GET", route="unmatched", status="404"
    )
    client.get("/healthz")
    client.get("/healthz")
    client.get(f"/v1/jobs/{uuid.uuid4()}")  # one series for every id, not one per id
    client.get("/no/such/page")
    assert (healthz(), timed(), job(), missing()) == (2, 2, 1, 1)


def test_a_request_refused_before_routing_keeps_its_route(settings, delta):
    # No API key: the auth middleware answers before the router runs.
    refused = delta(
        "transferlab_http_requests_total", method="GET", route="/v1/jobs/{job_id}", status="401"
    )
    with TestClient(create_app(settings)) as anonymous:
        assert anonymous.get(f"/v1/jobs/{uuid.uuid4()}").status_code == 401
    assert refused() == 1


def test_metrics_reports_jobs_by_status_and_queue_depth(client, settings):
    before = scrape(client)
    assert before[("transferlab_metrics_source_up", (("source", "database"),))] == 1
    assert before[("transferlab_metrics_source_up", (("source", "broker"),))] == 1
    assert before[("transferlab_jobs", (("status", "failed"),))] == 0
    assert before[("transferlab_queue_depth", (("queue", "training"),))] == 0

    db = Database(settings.resolved_database_url)
    with db.session_scope() as s:
        for status in ("queued", "queued", "failed"):
            s.add(Job(status=status, strategy="finetune", base_model="timm:x", spec={}))
    db.dispose()
    JobQueue(settings).enqueue_job(uuid.uuid4())  # a real message in the folder broker

    after = scrape(client)
    assert after[("transferlab_jobs", (("status", "queued"),))] == 2
    assert after[("transferlab_jobs", (("status", "failed"),))] == 1
    assert after[("transferlab_jobs", (("status", JobStatus.running.value),))] == 0
    assert after[("transferlab_queue_depth", (("queue", "training"),))] == 1


def test_queue_depth_on_redis(settings, redis_url, auth_headers):
    on_redis = settings.model_copy(update={"broker_url": redis_url})
    with TestClient(create_app(on_redis), headers=auth_headers) as c:
        empty = scrape(c)[("transferlab_queue_depth", (("queue", "training"),))]
        for _ in range(3):
            JobQueue(on_redis).enqueue_job(uuid.uuid4())
        assert scrape(c)[("transferlab_queue_depth", (("queue", "training"),))] == empty + 3


def test_an_unreachable_broker_fails_only_its_own_gauge(settings, auth_headers):
    broken = settings.model_copy(update={"broker_url": "redis://127.0.0.1:9/0"})
    with TestClient(create_app(broken), headers=auth_headers) as c:
        samples = scrape(c)
    assert samples[("transferlab_metrics_source_up", (("source", "broker"),))] == 0
    assert samples[("transferlab_metrics_source_up", (("source", "database"),))] == 1
    assert not any(name == "transferlab_queue_depth" for name, _ in samples)


def test_metrics_route_is_documented_as_text(client):
    op = client.get("/openapi.json").json()["paths"]["/metrics"]["get"]
    assert op["summary"]
    assert "transferlab_jobs" in op["responses"]["200"]["content"]["text/plain"]["example"]


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    """A real (untrained) test_resnet artifact at 32 px, as the worker writes one."""
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=2)
    card = ModelCard(
        architecture={"library": "timm", "name": "test_resnet", "num_classes": 2},
        class_names=("a", "b"),
        preprocessing=PREPROCESSING_32,
    )
    save_artifact(model, card, tmp_path / "model")
    return tmp_path / "model"


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (120, 30, 200)).save(buf, format="PNG")
    return buf.getvalue()


def test_model_cache_and_prediction_metrics(tiny_model, delta):
    hits = delta("transferlab_model_cache_hits_total")
    misses = delta("transferlab_model_cache_misses_total")
    requests = delta("transferlab_prediction_seconds_count")
    images = delta("transferlab_prediction_images_sum")
    small_batches = delta("transferlab_prediction_images_bucket", le="2.0")
    cache = ModelCache(capacity=2)
    for n in (3, 1):
        predict_run = predict_uploads(
            cache,
            "m1",
            tiny_model,
            [(f"{i}.png", png()) for i in range(n)],
            top_k=1,
            max_files=8,
            max_pixels=10**6,
        )
        asyncio.run(predict_run)
    assert (misses(), hits()) == (1, 1)
    assert (requests(), images(), small_batches()) == (2, 4, 1)


def test_multiprocess_mode(tmp_path: Path, settings: Settings):
    """With PROMETHEUS_MULTIPROC_DIR set (transferlab api --workers N), each process writes its
    counts to files there and /metrics, in whichever process answers, reads them all. One
    process here (each costs seconds of imports); prometheus-client does the adding up."""
    folder = tmp_path / "prom"
    folder.mkdir()
    script = textwrap.dedent(
        f"""
        from fastapi.testclient import TestClient
        from app.main import create_app
        from app.settings import Settings
        from tests.api.conftest import bearer, make_key
        settings = Settings(data_dir={str(settings.data_dir)!r})
        key = bearer(make_key(settings, ["read"]))
        with TestClient(create_app(settings), headers=key) as c:
            for _ in range(3):
                assert c.get("/healthz").status_code == 200
            print(c.get("/metrics").text)
        """
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(out)
        for s in family.samples
    }
    key = (("method", "GET"), ("route", "/healthz"), ("status", "200"))
    assert samples[("transferlab_http_requests_total", key)] == 3
    assert samples[("transferlab_jobs", (("status", "queued"),))] == 0  # scrape-time gauges too
    assert any(f.name.startswith("counter_") for f in folder.iterdir())  # really in files
