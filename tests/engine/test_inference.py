"""The engine side of serving: Predictor's probabilities and embeddings, plain and probed."""

from __future__ import annotations

import pytest
import timm
import torch

from app.engine import ModelCard, load_artifact, save_artifact
from app.engine.heads import build_probed_model, probe_architecture
from app.engine.inference import Predictor, top_k
from tests.engine._helpers import PREPROCESSING_32

PRE = PREPROCESSING_32


def test_a_probe_on_a_stage_embeds_the_features_its_head_reads(tmp_path):
    torch.manual_seed(0)
    backbone = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    channels = backbone.feature_info[2]["num_chs"]
    arch = {
        "library": "timm",
        "name": "test_resnet",
        "num_classes": 3,
        **probe_architecture("mlp", channels, hidden=16, dropout=0.0, stage=2),
    }
    card = ModelCard(architecture=arch, class_names=("a", "b", "c"), preprocessing=PRE)
    save_artifact(build_probed_model(backbone, arch), card, tmp_path)
    model, card = load_artifact(tmp_path)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.inference_mode():
        features = model.forward_features(x)
        probs = model(x).softmax(dim=1)
    predictor = Predictor(model, card)
    embedded = predictor.embeddings(x)
    assert embedded.shape == (4, channels)
    assert torch.allclose(embedded, features, atol=1e-5)
    assert torch.allclose(predictor.probabilities(x), probs, atol=1e-6)


def test_a_plain_model_embeds_its_pre_logits_and_ranks_its_classes():
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()
    card = ModelCard(
        architecture={"library": "timm", "name": "test_resnet", "num_classes": 3},
        class_names=("a", "b", "c"),
        preprocessing=PRE,
    )
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        expected = model.forward_head(model.forward_features(x), pre_logits=True)
    for channels_last in (True, False):
        predictor = Predictor(model, card, channels_last=channels_last)
        got = predictor.embeddings(x)
        assert got.shape == (2, model.num_features)
        assert torch.allclose(got, expected, atol=1e-5)
    probs = torch.tensor([[0.2, 0.5, 0.3]])
    ranked = top_k(probs, card.class_names, 5)  # k is capped at the number of classes
    assert [name for name, _ in ranked[0]] == ["b", "c", "a"]
    assert [p for _, p in ranked[0]] == pytest.approx([0.5, 0.3, 0.2])
