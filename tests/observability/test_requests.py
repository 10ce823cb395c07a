"""Request ids (X-Request-ID in and out) and the log lines that carry them."""

from __future__ import annotations

import json
import logging
import uuid

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.observability import configure_logging, job_context


def test_request_id_round_trips(client):
    r = client.get("/healthz", headers={"X-Request-ID": "client-req_42.a"})
    assert r.headers["X-Request-ID"] == "client-req_42.a"


@pytest.mark.parametrize("sent", [None, "", "has space", "new\\nline", "x" * 65, b"caf\xe9"])
def test_request_id_is_generated_when_absent_or_invalid(client, sent):
    headers = {} if sent is None else {"X-Request-ID": sent}
    got = client.get("/healthz", headers=headers).headers["X-Request-ID"]
    assert got != sent and uuid.UUID(hex=got)


def test_every_response_has_a_request_id_even_a_refused_one(settings):
    with TestClient(create_app(settings)) as anonymous:  # no API key
        r = anonymous.get("/v1/jobs", headers={"X-Request-ID": "abc"})
    assert r.status_code == 401 and r.headers["X-Request-ID"] == "abc"


def log_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_json_logs_carry_the_request_id(settings, auth_headers, capsys, restore_logging):
    configure_logging(settings.model_copy(update={"log_format": "json"}), "api")
    app = create_app(settings)

    @app.get("/test-log")
    def test_log() -> dict:  # a sync endpoint: runs in a worker thread, like most routes here
        logging.getLogger("app.test").warning("inside the endpoint")
        return {}

    with TestClient(app, headers=auth_headers) as c:
        capsys.readouterr()
        c.get("/test-log", headers={"X-Request-ID": "req-1"})
        c.get("/healthz", headers={"X-Request-ID": "req-2"})
    records = [json.loads(line) for line in log_lines(capsys)]  # every line is one JSON object
    inside = next(r for r in records if r["message"] == "inside the endpoint")
    assert inside["request_id"] == "req-1" and inside["level"] == "WARNING"
    assert inside["service"] == "api" and inside["logger"] == "app.test" and inside["timestamp"]
    access = [r for r in records if r["logger"] == "transferlab.access"]
    assert [(a["request_id"], a["route"], a["status"], a["method"]) for a in access] == [
        ("req-1", "/test-log", 200, "GET"),
        ("req-2", "/healthz", 200, "GET"),
    ]
    assert all(a["level"] == "INFO" and a["duration_ms"] >= 0 for a in access)
    assert "job_id" not in inside


def test_json_logs_carry_the_job_id(settings, capsys, restore_logging):
    configure_logging(settings.model_copy(update={"log_format": "json"}), "worker")
    with job_context("0f0f"):
        logging.getLogger("worker.test").info("epoch done")
    logging.getLogger("worker.test").info("between jobs")
    first, second = (json.loads(line) for line in log_lines(capsys))
    assert (first["job_id"], first["service"]) == ("0f0f", "worker")
    assert "job_id" not in second


def test_text_logs_tag_request_and_job_ids(settings, capsys, restore_logging):
    configure_logging(settings.model_copy(update={"log_format": "text"}), "worker")
    log = logging.getLogger("worker.test")
    with job_context("0f0f"):
        log.error("job failed (%s)", "invalid_spec", extra={"error_code": "invalid_spec"})
    log.info("plain")
    tagged, plain = log_lines(capsys)
    assert tagged.endswith(
        "ERROR worker.test job failed (invalid_spec) [job_id=0f0f error_code=invalid_spec]"
    )
    assert plain.endswith("INFO worker.test plain")


def test_auto_log_format_is_json_only_in_production(settings):
    assert settings.json_logs is False
    assert settings.model_copy(update={"environment": "production"}).json_logs is True
