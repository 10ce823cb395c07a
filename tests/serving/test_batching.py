"""Adaptive batching across requests (issue 9, item 1): concurrent requests for one model are
merged into one forward pass, with the same answers as one image alone; a full queue answers
503 with Retry-After and the service recovers."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.engine import load_artifact, predict
from app.main import create_app
from app.serving.batcher import Overloaded
from tests.api.conftest import bearer, error_code, make_key
from tests.serving.conftest import CLASSES, Gate, register_model, wait_until


def batcher_of(client, settings, model_id):
    return client.app.state.model_cache.batcher(
        model_id, settings.artifacts.path(settings.artifacts.model_key(model_id))
    )


def post(client, model_id, images, route="predict", **params):
    files = [("files", (f"{i}.img", data)) for i, data in enumerate(images)]
    return client.post(f"/v1/models/{model_id}/{route}", files=files, params=params)


def probabilities(response) -> list[dict[str, float]]:
    assert response.status_code == 200, response.text
    return [
        {s["label"]: s["probability"] for s in p["top_k"]} for p in response.json()["predictions"]
    ]


def send_gated(client, settings, model_id, requests: list[list[bytes]], route="predict"):
    """Hold the model's forward pass while the first request runs, queue ``requests`` behind
    it, then open the gate. Returns (first response, responses, the batcher)."""
    batcher = batcher_of(client, settings, model_id)
    gate = Gate(batcher.predictor.model)
    batcher.predictor.model = gate
    queued = sum(len(r) for r in requests)
    with ThreadPoolExecutor(len(requests) + 1) as pool:
        first = pool.submit(post, client, model_id, requests[0], route, top_k=3)
        assert gate.entered.wait(60)
        before = batcher.stats.batches
        futures = [pool.submit(post, client, model_id, r, route, top_k=3) for r in requests]
        wait_until(lambda: batcher.queued_images == queued, f"{queued} images are queued")
        gate.opened.set()
        responses = [f.result() for f in futures]
    batcher.predictor.model = gate.inner
    return first.result(), responses, batcher, before


def test_concurrent_requests_are_merged_into_one_forward_pass(client, settings, model_id, photos):
    _, responses, batcher, before = send_gated(client, settings, model_id, [[p] for p in photos])
    assert all(r.status_code == 200 for r in responses)
    # The first request's pass, then all eight waiting requests in a single pass.
    assert batcher.stats.batches == before + 2
    assert list(batcher.stats.sizes)[-2:] == [1, len(photos)]
    metrics = client.get("/metrics").text
    assert 'transferlab_inference_batch_images_bucket{le="8.0"}' in metrics


def test_a_batched_answer_equals_the_single_image_answer(client, settings, model_id, photos):
    alone = [probabilities(post(client, model_id, [p], top_k=3))[0] for p in photos]
    _, responses, batcher, _ = send_gated(client, settings, model_id, [[p] for p in photos])
    assert list(batcher.stats.sizes)[-1] == len(photos)
    batched = [probabilities(r)[0] for r in responses]
    # And the unbatched engine path of before (timm's eval transform per image, one stack).
    model, card = load_artifact(settings.artifacts.path(settings.artifacts.model_key(model_id)))
    reference = predict(model, card, [Image.open(io.BytesIO(p)) for p in photos], top_k=3)
    for one, many, ref in zip(alone, batched, reference, strict=True):
        assert one.keys() == many.keys() == set(CLASSES)
        for label in CLASSES:
            assert many[label] == pytest.approx(one[label], abs=1e-5)
            assert dict(ref)[label] == pytest.approx(one[label], abs=1e-5)


def test_requests_of_several_images_keep_their_rows(client, settings, model_id, photos):
    alone = [probabilities(post(client, model_id, [p], top_k=3))[0] for p in photos]
    groups = [photos[0:3], photos[3:4], photos[4:8]]
    _, responses, batcher, _ = send_gated(client, settings, model_id, groups)
    assert list(batcher.stats.sizes)[-1] == 8
    got = [row for r in responses for row in probabilities(r)]
    for one, many in zip(alone, got, strict=True):
        assert many == pytest.approx(one, abs=1e-5)


def test_a_full_queue_answers_503_with_retry_after_and_recovers(settings, model_id, photos):
    tight = settings.model_copy(update={"predict_max_queued": 2})
    key = make_key(tight, ["predict", "read"])
    with app_client(tight, key) as client:
        batcher = batcher_of(client, tight, model_id)
        gate = Gate(batcher.predictor.model)
        batcher.predictor.model = gate
        with ThreadPoolExecutor(4) as pool:
            running = pool.submit(post, client, model_id, [photos[0]])
            assert gate.entered.wait(60)
            queued = pool.submit(post, client, model_id, [photos[1], photos[2]])
            wait_until(lambda: batcher.queued_images == 2, "two images are queued")
            refused = post(client, model_id, [photos[3]])
            assert refused.status_code == 503
            assert error_code(refused) == "overloaded"
            assert int(refused.headers["Retry-After"]) >= 1
            assert "TRANSFERLAB_PREDICT_MAX_QUEUED" in refused.json()["error"]["message"]
            gate.opened.set()
            assert running.result().status_code == 200
            assert queued.result().status_code == 200
        # Recovered: the queue drained, the next request is answered.
        assert post(client, model_id, [photos[3]]).status_code == 200
        assert batcher.queued_images == 0


def test_the_batcher_refuses_past_its_queue_but_always_takes_a_request_alone(settings):
    """A request larger than the whole queue still runs when nothing else waits."""
    model_id = register_model(settings)
    tight = settings.model_copy(update={"predict_max_queued": 1})
    with app_client(tight, make_key(tight, ["predict"])) as client:
        batcher = batcher_of(client, tight, model_id)
        pixels = [np.zeros((32, 32, 3), np.uint8)] * 3
        assert batcher.submit("probabilities", pixels).result(60).shape == (3, len(CLASSES))
        gate = Gate(batcher.predictor.model)
        batcher.predictor.model = gate
        first = batcher.submit("probabilities", pixels[:1])
        assert gate.entered.wait(60)
        second = batcher.submit("probabilities", pixels[:1])  # queue: 1 of 1
        with pytest.raises(Overloaded):
            batcher.submit("probabilities", pixels[:1])
        gate.opened.set()
        assert np.array_equal(first.result(60), second.result(60))


def test_shutdown_answers_what_is_queued_and_stops_the_threads(settings, model_id, photos):
    with app_client(settings, make_key(settings, ["predict"])) as client:
        batcher = batcher_of(client, settings, model_id)
        (thread,) = batcher.threads  # torch: one lane
        assert post(client, model_id, [photos[0]]).status_code == 200
        assert thread.is_alive()
    thread.join(30)
    assert not thread.is_alive()
    assert len(client.app.state.model_cache) == 0


def test_torch_never_runs_on_the_event_loop(client, settings, model_id, photos):
    """A lone request on an idle model and requests that queue behind a running pass all run on
    the model's inference thread, never on the event loop's (the routes are async)."""
    seen: list[str] = []
    batcher = batcher_of(client, settings, model_id)
    hook = batcher.predictor.model.register_forward_pre_hook(
        lambda *_: seen.append(threading.current_thread().name)
    )
    try:
        assert post(client, model_id, photos[:2]).status_code == 200
        send_gated(client, settings, model_id, [[p] for p in photos[:3]])
    finally:
        hook.remove()
    loop_threads = {t.name for t in threading.enumerate() if "portal" in t.name.lower()}
    assert len(seen) == 3  # the lone request, the gated one, the three queued behind it
    assert set(seen) == {f"inference-{model_id}#0"}  # torch: one lane
    assert not set(seen) & ({"MainThread"} | loop_threads)


@contextmanager
def app_client(settings, key: str) -> Iterator[TestClient]:
    """The app for other settings, with a key of its own."""
    with TestClient(create_app(settings), headers=bearer(key)) as client:
        yield client


def test_a_deleted_version_is_not_loaded_back_by_a_request_that_resolved_it_before(tmp_path):
    # A request may resolve a version, then the version is deleted (cache.forget), then the
    # request asks the cache for it: 404, not the weights read back into a fresh batcher.
    from app.serving.cache import ModelCache, ModelDeleted

    cache = ModelCache(2)
    cache.forget("v1")
    with pytest.raises(ModelDeleted) as err:
        cache.batcher("v1", tmp_path / "models" / "v1")
    assert err.value.status_code == 404 and err.value.code == "model_not_found"
    assert cache.loads == 0
