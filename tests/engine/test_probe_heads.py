"""linear_probe with an MLP head or intermediate-stage features: a frozen backbone, features
computed once, and a saved model that predicts end to end."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from app.engine import (
    DatasetSplits,
    EngineError,
    Hyperparameters,
    ModelSource,
    load_artifact,
    predict,
    run_training,
    save_artifact,
)
from app.engine.data import split_train_val
from app.engine.heads import ProbedModel
from app.engine.loop import seed_everything
from app.engine.models import create_timm_model
from app.engine.strategies import create_strategy
from tests.engine._helpers import changed_keys, scratch, state_copy, take

HP = Hyperparameters(epochs=15, batch_size=32, learning_rate=1e-2, image_size=32)


def _images(samples):
    out = []
    for path, _ in samples:
        with Image.open(path) as img:
            out.append(img.copy())
    return out


def _probe(data, name: str = "test_resnet", hparams: Hyperparameters = HP, **options):
    seed_everything(hparams.seed)  # run_training's exact starting weights
    reference = create_timm_model(name, 10, pretrained=False)
    if name == "test_vit":
        reference.set_input_size(img_size=(32, 32))
    before = {k: v for k, v in state_copy(reference).items() if not k.startswith(("fc.", "head."))}
    result = run_training(
        source=scratch(name),
        strategy="linear_probe",
        data=data,
        hparams=hparams,
        strategy_options=options,
        device="cpu",
    )
    return before, result


@pytest.mark.parametrize(
    ("name", "options", "head_keys"),
    [
        ("test_resnet", {"head": "mlp", "mlp_hidden": 32}, {"0.weight", "0.bias", "3.weight"}),
        ("test_resnet", {"features": "stage:2"}, {"weight", "bias"}),
        ("test_vit", {"head": "mlp", "features": "stage:3", "mlp_dropout": 0.2}, {"3.bias"}),
    ],
)
def test_probe_leaves_the_backbone_bitwise_and_predicts_end_to_end(
    small_digits, count_image_reads, tmp_path, name, options, head_keys
):
    before, result = _probe(small_digits, name, **options)
    model = result.model
    assert isinstance(model, ProbedModel)
    # The backbone (its classifier removed) is bitwise the starting one, BatchNorm included.
    after = state_copy(model.backbone)
    assert after.keys() == before.keys()
    assert not changed_keys(before, after)
    assert head_keys <= set(state_copy(model.head))
    # Features once: 160 train + 40 val images decoded over 15 epochs.
    assert count_image_reads["n"] == 200
    assert {m.phase for m in result.history} == {"probe"}
    assert result.history[-1].train_loss < result.history[0].train_loss

    arch = result.card.architecture
    assert arch["features"] == options.get("features", "pre_logits")
    assert arch["head"]["type"] == options.get("head", "linear")

    # End to end through the wrapper == the cached-feature path the evaluation came from.
    _, val = split_train_val(small_digits, HP.val_fraction, HP.seed)
    top1 = [r[0][0] for r in predict(model, result.card, _images(val), top_k=1)]
    names = result.card.class_names
    accuracy = sum(p == names[label] for p, (_, label) in zip(top1, val, strict=True)) / len(val)
    assert accuracy == pytest.approx(result.evaluation.accuracy)

    save_artifact(model, result.card, tmp_path)
    assert json.loads((tmp_path / "model.json").read_text())["format_version"] == 2
    loaded, card = load_artifact(tmp_path)
    assert isinstance(loaded, ProbedModel) and card == result.card
    assert not changed_keys(state_copy(model), state_copy(loaded))
    images = _images(val[:8])
    assert predict(loaded, card, images) == predict(model, result.card, images)


def test_plain_linear_probe_is_still_the_timm_model_and_a_version_1_artifact(
    small_digits, tmp_path
):
    _, result = _probe(small_digits, hparams=Hyperparameters(epochs=1, image_size=32))
    assert not isinstance(result.model, ProbedModel)
    assert set(result.card.architecture) == {"library", "name", "num_classes"}
    save_artifact(result.model, result.card, tmp_path)
    assert json.loads((tmp_path / "model.json").read_text())["format_version"] == 1


def test_a_probed_model_is_a_source_for_a_new_job(small_digits, digit_samples, tmp_path):
    _, probed = _probe(small_digits, hparams=Hyperparameters(epochs=1, image_size=32), head="mlp")
    save_artifact(probed.model, probed.card, tmp_path / "probe")
    subset = tuple(s for s in take(digit_samples, 10) if s[1] < 3)
    result = run_training(
        source=ModelSource(kind="artifact", artifact_dir=tmp_path / "probe"),
        strategy="finetune",
        data=DatasetSplits(class_names=("a", "b", "c"), train=subset),
        hparams=Hyperparameters(epochs=1, batch_size=8),
        device="cpu",
    )
    # The backbone carries over; the new job trains its own (plain) head.
    assert result.card.architecture == {"library": "timm", "name": "test_resnet", "num_classes": 3}
    assert result.model.fc.out_features == 3


def test_stage_out_of_range_names_the_stages(small_digits):
    with pytest.raises(EngineError, match=r"'stage:5' but the model has 5 stages \(0=act1, "):
        _probe(small_digits, features="stage:5")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"head": "conv"}, "head must be one of linear, mlp"),
        ({"features": "stage:-1"}, r"features must be 'pre_logits' or 'stage:<i>'"),
        ({"features": "layer2"}, r"features must be 'pre_logits' or 'stage:<i>'"),
        ({"mlp_hidden": 64}, "mlp_hidden applies only to head='mlp'"),
        ({"head": "mlp", "mlp_hidden": 0}, "mlp_hidden must be an integer from 1 to 16384"),
        ({"head": "mlp", "mlp_dropout": 1.0}, r"mlp_dropout must be a number in \[0, 1\)"),
    ],
)
def test_bad_probe_options(options, message):
    with pytest.raises(EngineError, match=message):
        create_strategy("linear_probe", **options)


def test_malformed_probe_card_is_rejected(small_digits, tmp_path):
    _, result = _probe(small_digits, hparams=Hyperparameters(epochs=1, image_size=32), head="mlp")
    save_artifact(result.model, result.card, tmp_path)
    path = tmp_path / "model.json"
    raw = json.loads(path.read_text())
    raw["architecture"]["head"]["type"] = "transformer"
    path.write_text(json.dumps(raw))
    with pytest.raises(EngineError, match="malformed"):
        load_artifact(tmp_path)


def test_probed_model_features_match_the_backbone_stage():
    model = create_timm_model("test_resnet", 10, pretrained=False).eval()
    x = torch.randn(2, 3, 32, 32)
    probe = ProbedModel(model, torch.nn.Identity(), stage=1)
    with torch.inference_mode():
        (fmap,) = model.forward_intermediates(x, indices=[1], intermediates_only=True)
        assert torch.equal(probe(x), fmap.mean(dim=(2, 3)))
