"""Live events of a job a real worker trains, from a real `transferlab serve`."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.e2e.conftest import Service, upload_file

pytestmark = pytest.mark.e2e


def read_events(response: httpx.Response) -> list[tuple[str, str, dict]]:
    """(event, id, data) of each event as it arrives; comments and retry lines are skipped."""
    events, fields = [], {}
    for line in response.iter_lines():
        if line == "":
            if "event" in fields:
                events.append((fields["event"], fields["id"], json.loads(fields["data"])))
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value
    return events


def test_events_follow_a_real_job_to_its_end(embedded: Service, digits_zip):
    path = digits_zip(classes=(0, 1, 2), per_class=30, name="events.zip")
    with embedded.client() as c:
        dataset = upload_file(c, path)
        job = c.post(
            "/v1/jobs",
            json={
                "strategy": "finetune", "base_model": "timm:test_resnet", "pretrained": False,
                "dataset_id": dataset["id"],
                "hyperparameters": {"epochs": 3, "image_size": 32, "batch_size": 4},
            },
        ).json()  # fmt: skip
        # Streams close every 3 s here (TRANSFERLAB_EVENTS_MAX_S): reconnect as clients do.
        events: list[tuple[str, str, dict]] = []
        connections = 0
        while not events or events[-1][0] != "end":
            headers = {"Last-Event-ID": events[-1][1]} if events else {}
            path = f"/v1/jobs/{job['id']}/events"
            with c.stream("GET", path, headers=headers, timeout=180) as r:
                assert r.status_code == 200
                events += read_events(r)
            connections += 1
            assert connections < 200, events
        final = c.get(f"/v1/jobs/{job['id']}").json()
        metrics = c.get(f"/v1/jobs/{job['id']}/metrics").json()["epochs"]

    kinds = [e[0] for e in events]
    assert kinds[0] == "status" and kinds[-1] == "end", kinds
    assert final["status"] == "succeeded", embedded.log_text()
    assert events[-1][2] == final | {"duration_seconds": events[-1][2]["duration_seconds"]}
    # Each epoch's metrics, once, in order, equal to what /metrics returns.
    assert [e[2] for e in events if e[0] == "metrics"] == metrics
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    # Step progress while it ran (3 epochs of 23 steps, written every 0.1 s), never backwards.
    progress = [(e[2]["epoch"], e[2]["step"]) for e in events if e[0] == "progress"]
    assert len(progress) >= 3 and progress == sorted(progress), progress
    assert "running" in [e[2]["status"] for e in events if e[0] == "status"]
    # Event ids: the last epoch whose metrics were sent.
    assert [e[1] for e in events if e[0] == "metrics"] == ["1", "2", "3"]

    # Reconnecting after epoch 2 gives only epoch 3 and the end.
    with embedded.client() as c:
        r = c.get(f"/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": "2"})
    again = read_events(r)
    assert [(e[0], e[1]) for e in again] == [("metrics", "3"), ("end", "3")]


class DropFirstStream(httpx.HTTPTransport):
    """The real transport, but the first event stream breaks off after its first metrics event
    (as a restarting proxy or API process would cut it)."""

    def __init__(self) -> None:
        super().__init__()
        self.stream_requests: list[str | None] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if not request.url.path.endswith("/events"):
            return response
        self.stream_requests.append(request.headers.get("last-event-id"))
        if len(self.stream_requests) > 1:
            return response
        upstream = response.stream

        class Cut(httpx.SyncByteStream):
            def __iter__(self):
                for chunk in upstream:
                    yield chunk
                    if b"event: metrics" in chunk:
                        raise httpx.RemoteProtocolError("connection dropped")

            def close(self) -> None:
                upstream.close()

        return httpx.Response(
            response.status_code, headers=response.headers, stream=Cut(), request=request
        )


def test_the_client_resumes_a_dropped_stream_without_repeating_an_epoch(
    embedded: Service, digits_zip
):
    from app.client import Client

    transport = DropFirstStream()
    path = digits_zip(classes=(0, 1), per_class=20, name="resume-stream.zip")
    with Client(embedded.url, embedded.api_key, transport=transport) as client:
        dataset = client.upload_dataset(path)
        job = client.submit_job(
            {
                "strategy": "finetune", "base_model": "timm:test_resnet", "pretrained": False,
                "dataset_id": dataset["id"],
                "hyperparameters": {"epochs": 3, "image_size": 32, "batch_size": 4},
            }
        )  # fmt: skip
        events = list(client.events(job["id"]))
    assert events[-1].event == "end" and events[-1].data["status"] == "succeeded"
    assert [e.data["epoch"] for e in events if e.event == "metrics"] == [1, 2, 3]
    # The first request from the start, the next ones from the last epoch each had.
    assert transport.stream_requests[0] is None
    assert transport.stream_requests[1] in ("1", "2", "3")
    assert all(r in ("1", "2", "3") for r in transport.stream_requests[1:])
