"""ONNX export: a dynamic batch axis, outputs that match the eager model, the same predictions."""

from __future__ import annotations

import numpy as np
import timm
import torch
from PIL import Image

from app.engine import ModelCard, export_onnx, predict, predict_with
from app.engine.onnx import ONNX_FILE, run_onnx
from app.onnxrt import create_onnx_session

CARD = ModelCard(
    architecture={"library": "timm", "name": "test_resnet", "num_classes": 3},
    class_names=("a", "b", "c"),
    preprocessing={
        "input_size": [3, 32, 32],
        "interpolation": "bilinear",
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "crop_pct": 0.875,
        "crop_mode": "center",
    },
)


def test_export_has_a_dynamic_batch_and_matches_eager(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()
    report = export_onnx(model, CARD, tmp_path)
    assert (tmp_path / ONNX_FILE).is_file() and not list(tmp_path.glob("*.tmp"))
    assert report.max_abs_diff < 1e-4 and report.check_batches == (8, 1)
    assert report.exporter == "torchscript"  # the fast one first (app/engine/onnx.py)
    session = create_onnx_session(tmp_path / ONNX_FILE)
    for n in (1, 5, 33):  # batch sizes the export never saw
        x = torch.randn(n, 3, 32, 32)
        with torch.inference_mode():
            eager = model(x).numpy()
        out = run_onnx(session, x)
        assert out.shape == (n, 3)
        np.testing.assert_allclose(out, eager, atol=1e-4, rtol=0)


def test_predictions_through_onnx_equal_eager_ones(tmp_path):
    torch.manual_seed(1)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()
    export_onnx(model, CARD, tmp_path)
    session = create_onnx_session(tmp_path / ONNX_FILE)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)) for _ in range(6)]
    eager = predict(model, CARD, images, top_k=3)
    onnx = predict_with(lambda b: torch.from_numpy(run_onnx(session, b)), CARD, images, top_k=3)
    for e, o in zip(eager, onnx, strict=True):
        assert [c for c, _ in e] == [c for c, _ in o]
        np.testing.assert_allclose([p for _, p in e], [p for _, p in o], atol=1e-5)


def test_a_probed_model_on_stage_features_exports_too(tmp_path):
    from app.engine.heads import ProbedModel
    from app.engine.models import create_timm_model

    torch.manual_seed(2)
    backbone = create_timm_model("test_resnet", 10, pretrained=False).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        (fmap,) = backbone.forward_intermediates(x, indices=[1], intermediates_only=True)
    head = torch.nn.Sequential(
        torch.nn.Linear(fmap.shape[1], 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
    )
    model = ProbedModel(backbone, head, stage=1).eval()
    report = export_onnx(model, CARD, tmp_path)
    assert report.max_abs_diff < 1e-4
    assert report.exporter in ("dynamo", "torchscript")
