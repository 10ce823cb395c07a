"""ONNX as an artifact of a version: made by the worker, downloadable, and a serving backend."""

from __future__ import annotations

import json
import uuid

import numpy as np
import onnxruntime as ort
from fastapi.testclient import TestClient

from app.main import create_app
from tests.api.conftest import bearer, error_code, upload
from tests.api.registry_helpers import png, register_version
from worker.runner import execute_job


def test_a_trained_version_carries_a_checked_onnx_export(client, settings, db, digits_zip):
    dataset = upload(client, digits_zip(per_class=6, name="onnx.zip")).json()["id"]
    r = client.post(
        "/v1/jobs",
        json={
            "strategy": "finetune",
            "base_model": "timm:test_resnet",
            "pretrained": False,
            "dataset_id": dataset,
            "name": "digits",
            "hyperparameters": {"epochs": 1, "image_size": 32, "batch_size": 8},
        },
    )
    assert execute_job(uuid.UUID(r.json()["id"]), settings, db) == "succeeded"
    model = client.get("/v1/models/digits:1").json()
    report = model["metrics"]["onnx"]
    assert 0 <= report["max_abs_diff"] < 1e-4, report
    assert report["check_batches"] == [8, 1]

    r = client.get("/v1/models/digits:1/download", params={"format": "onnx"})
    assert r.status_code == 200
    assert r.headers["content-disposition"].endswith('digits-v1.onnx"')
    session = ort.InferenceSession(r.content, providers=["CPUExecutionProvider"])
    out = session.run(None, {"images": np.zeros((3, 3, 32, 32), np.float32)})[0]
    assert out.shape == (3, 3)  # three classes, any batch
    assert client.get("/v1/models/digits:1/download").headers["content-type"] == "application/zip"
    r = client.get("/v1/models/digits:1/download", params={"format": "tflite"})
    assert r.status_code == 422 and error_code(r) == "validation_error"


def test_a_version_without_an_export_says_so(client, settings):
    register_version(settings, "old")
    r = client.get("/v1/models/old:1/download", params={"format": "onnx"})
    assert r.status_code == 409 and error_code(r) == "onnx_unavailable"


def test_the_onnx_backend_answers_as_torch_does(settings, admin_key):
    register_version(settings, "pets", ("cat", "dog", "emu"), onnx=True)
    without = register_version(settings, "pets", ("cat", "dog"))
    files = [("files", (f"{i}.png", png(i))) for i in range(5)]
    answers = {}
    for backend in ("torch", "onnx"):
        app = create_app(settings.model_copy(update={"serving_backend": backend}))
        with TestClient(app, headers=bearer(admin_key)) as c:
            r = c.post("/v1/models/pets:1/predict", files=files, params={"top_k": 3})
            assert r.status_code == 200, r.text
            answers[backend] = r.json()["predictions"]
            (loaded,) = c.app.state.model_cache._items.values()  # its batcher
            assert loaded.predictor.backend_name == backend
            # A version made before exports is served by torch whatever the setting.
            assert c.post("/v1/models/pets:2/predict", files=files).status_code == 200
            batcher = c.app.state.model_cache.batcher(without["id"], without["folder"])
            assert batcher.predictor.backend_name == "torch"
    for t, o in zip(answers["torch"], answers["onnx"], strict=True):
        assert [s["label"] for s in t["top_k"]] == [s["label"] for s in o["top_k"]]
        torch_p = [s["probability"] for s in t["top_k"]]
        np.testing.assert_allclose(torch_p, [s["probability"] for s in o["top_k"]], atol=1e-5)


def test_a_version_made_before_exports_can_be_exported_afterwards(
    client, settings, monkeypatch, capsys
):
    from app.cli import main
    from app.settings import get_settings

    register_version(settings, "old")
    monkeypatch.setenv("TRANSFERLAB_DATA_DIR", str(settings.data_dir))
    get_settings.cache_clear()
    try:
        assert main(["models", "export-onnx", "old:1"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert main(["models", "export-onnx", "old:7"]) == 1
        assert "no version 7" in capsys.readouterr().err
    finally:
        get_settings.cache_clear()
    assert report["max_abs_diff"] < 1e-4
    assert client.get("/v1/models/old:1").json()["metrics"]["onnx"] == report
    r = client.get("/v1/models/old:1/download", params={"format": "onnx"})
    assert r.status_code == 200 and len(r.content) > 1000
