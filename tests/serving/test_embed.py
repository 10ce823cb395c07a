"""POST /v1/models/{id}/embed (issue 9, item 4): the pre-logits vector of each image, through
the same batcher as predictions."""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from PIL import Image

from app.engine import load_artifact
from app.engine.data import create_eval_transform
from tests.api.conftest import bearer, error_code, make_key
from tests.serving.conftest import Gate, wait_until
from tests.serving.test_batching import batcher_of, post


def reference_embeddings(settings, model_id, images: list[bytes]) -> torch.Tensor:
    """timm's own pre-logits on timm's eval transform, one image at a time."""
    model, card = load_artifact(settings.artifacts.path(settings.artifacts.model_key(model_id)))
    transform = create_eval_transform(card.preprocessing)
    rows = []
    with torch.inference_mode():
        for data in images:
            x = transform(Image.open(io.BytesIO(data))).unsqueeze(0)
            rows.append(model.forward_head(model.forward_features(x), pre_logits=True)[0])
    return torch.stack(rows)


def test_embed_returns_the_pre_logits_of_each_image(client, settings, model_id, photos):
    r = post(client, model_id, photos[:3], route="embed")
    assert r.status_code == 200, r.text
    body = r.json()
    expected = reference_embeddings(settings, model_id, photos[:3])
    assert body["model_id"] == model_id
    assert body["dimension"] == expected.shape[1]
    assert [e["filename"] for e in body["embeddings"]] == ["0.img", "1.img", "2.img"]
    got = torch.tensor([e["vector"] for e in body["embeddings"]])
    assert torch.allclose(got, expected, atol=1e-5)
    assert expected.abs().sum() > 0  # the comparison compares something


def test_embeddings_and_predictions_queued_together_both_come_right(
    client, settings, model_id, photos
):
    alone = post(client, model_id, [photos[5]]).json()["predictions"]
    batcher = batcher_of(client, settings, model_id)
    gate = Gate(batcher.predictor.model)
    batcher.predictor.model = gate
    try:
        with ThreadPoolExecutor(4) as pool:
            first = pool.submit(post, client, model_id, [photos[0]])
            assert gate.entered.wait(60)
            embedded = pool.submit(post, client, model_id, photos[1:5], "embed")
            predicted = pool.submit(post, client, model_id, [photos[5]])
            wait_until(lambda: batcher.queued_images == 5, "both requests are queued")
            gate.opened.set()
            assert first.result().status_code == 200
            vectors = torch.tensor([e["vector"] for e in embedded.result().json()["embeddings"]])
            predictions = predicted.result().json()["predictions"]
    finally:
        batcher.predictor.model = gate.inner
    assert torch.allclose(vectors, reference_embeddings(settings, model_id, photos[1:5]), atol=1e-5)
    assert predictions[0]["top_k"][0]["label"] == alone[0]["top_k"][0]["label"]
    assert predictions[0]["top_k"][0]["probability"] == pytest.approx(
        alone[0]["top_k"][0]["probability"], abs=1e-5
    )


def test_embed_needs_the_predict_scope(client, settings, model_id, photos):
    files = [("files", ("a.png", photos[1]))]
    read_only = bearer(make_key(settings, ["read"]))
    r = client.post(f"/v1/models/{model_id}/embed", files=files, headers=read_only)
    assert r.status_code == 403
    assert error_code(r) == "insufficient_scope"
    predict_key = bearer(make_key(settings, ["predict"]))
    r = client.post(f"/v1/models/{model_id}/embed", files=files, headers=predict_key)
    assert r.status_code == 200


def test_embed_refuses_bad_input_with_the_prediction_codes(client, model_id, photos):
    r = client.post(f"/v1/models/{model_id}/embed", files=[("files", ("x.txt", b"hello"))])
    assert r.status_code == 422
    assert error_code(r) == "image_invalid"
    assert r.json()["error"]["details"]["filename"] == "x.txt"
    r = client.post(f"/v1/models/{model_id}/embed", data={"other": "field"})
    assert r.status_code == 422
    files = [("files", (f"{i}.png", photos[1])) for i in range(65)]
    r = client.post(f"/v1/models/{model_id}/embed", files=files)
    assert (r.status_code, error_code(r)) == (413, "too_many_files")
    r = client.post(
        "/v1/models/00000000-0000-0000-0000-000000000000/embed", files=[("files", ("a", photos[1]))]
    )
    assert (r.status_code, error_code(r)) == (404, "model_not_found")


def test_embed_is_documented(client):
    op = client.get("/openapi.json").json()["paths"]["/v1/models/{model_id}/embed"]["post"]
    assert op["summary"]
    assert {"413", "422", "503"} <= set(op["responses"])
    schema = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    name = schema.rsplit("/", 1)[1]
    spec = client.get("/openapi.json").json()["components"]["schemas"][name]
    assert spec["examples"][0]["embeddings"][0]["vector"]


def test_a_large_answer_is_built_off_the_event_loop_and_equals_small_ones(
    client, settings, model_id, photos, monkeypatch
):
    """Past LOOP_RESPONSE_ITEMS entries the body is built on a worker thread; its content is
    what the same images give in small requests."""
    from app.api import models as routes

    dimension = post(client, model_id, photos[:1], route="embed").json()["dimension"]
    images = (photos * 64)[: routes.LOOP_RESPONSE_ITEMS // dimension + 2]
    built_on: list[str] = []
    original = routes.EmbeddingOut.model_dump_json

    def recorded(self, *args, **kwargs):
        built_on.append(threading.current_thread().name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(routes.EmbeddingOut, "model_dump_json", recorded)
    big = post(client, model_id, images, route="embed")
    assert big.status_code == 200, big.text
    assert built_on and built_on[-1].startswith("AnyIO worker thread")
    small = [post(client, model_id, [p], route="embed").json() for p in photos]
    vectors = [e["vector"] for e in big.json()["embeddings"]]
    for i, vector in enumerate(vectors):
        assert vector == pytest.approx(small[i % len(photos)]["embeddings"][0]["vector"], abs=1e-5)
