"""Artifacts on disk, rebuilding from them, and predictions."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch
from PIL import Image

from app.engine import (
    DatasetSplits,
    EngineError,
    Hyperparameters,
    ModelCard,
    ModelSource,
    load_artifact,
    predict,
    run_training,
    save_artifact,
)
from tests.engine._helpers import changed_keys, state_copy, take


def _images(samples, n):
    out = []
    for path, _ in samples[:n]:
        with Image.open(path) as img:
            out.append(img.copy())
    return out


def test_artifact_round_trip_gives_identical_predictions(finetuned, digit_samples, tmp_path):
    save_artifact(finetuned.model, finetuned.card, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.safetensors"]
    written = json.loads((tmp_path / "model.json").read_text())
    assert written["format_version"] == 1
    assert written["architecture"] == {"library": "timm", "name": "test_resnet", "num_classes": 10}

    model, card = load_artifact(tmp_path)
    assert card == finetuned.card
    assert not model.training
    assert not changed_keys(state_copy(finetuned.model), state_copy(model))
    images = _images(digit_samples[::60], 10)  # one image per digit
    assert predict(model, card, images, top_k=3) == predict(
        finetuned.model, finetuned.card, images, top_k=3
    )


def test_predict_returns_sorted_top_k_probabilities(finetuned, digit_samples):
    # One image of each digit. (digit_samples follows scikit-learn's order, not the labels':
    # this test used to compare samples[::60] with "digit_<position>", right only by chance.)
    chosen = [next(s for s in digit_samples if s[1] == d) for d in range(10)]
    images = _images(chosen, 10)
    results = predict(finetuned.model, finetuned.card, images, top_k=3)
    assert len(results) == 10
    for ranked in results:
        assert len(ranked) == 3
        probs = [p for _, p in ranked]
        assert probs == sorted(probs, reverse=True)
        assert all(0 <= p <= 1 for p in probs) and sum(probs) <= 1 + 1e-6
        assert len({name for name, _ in ranked}) == 3
        assert all(name in finetuned.card.class_names for name, _ in ranked)
    # top_k is clamped to the number of classes, and all probabilities then sum to 1.
    full = predict(finetuned.model, finetuned.card, images[:1], top_k=50)[0]
    assert len(full) == 10 and sum(p for _, p in full) == pytest.approx(1, abs=1e-5)
    # The model learnt something: the top-1 answers beat chance on these 10 images.
    correct = sum(
        r[0][0] == f"digit_{label}" for r, (_, label) in zip(results, chosen, strict=True)
    )
    assert correct >= 3
    assert predict(finetuned.model, finetuned.card, []) == []


def test_predict_accepts_rgb_rgba_and_odd_sizes(finetuned):
    images = [
        Image.new("RGB", (50, 20), "white"),
        Image.new("RGBA", (7, 9)),
        Image.new("P", (40, 40)),
    ]
    assert [len(r) for r in predict(finetuned.model, finetuned.card, images, top_k=2)] == [2, 2, 2]


def test_training_from_an_artifact_keeps_the_backbone_and_replaces_the_head(
    finetuned, digit_samples, tmp_path
):
    save_artifact(finetuned.model, finetuned.card, tmp_path / "source")
    # A new 3-class task: digits 0, 1, 2 only.
    subset = tuple(s for s in take(digit_samples, 20) if s[1] < 3)
    data = DatasetSplits(class_names=("zero", "one", "two"), train=subset)
    result = run_training(
        source=ModelSource(kind="artifact", artifact_dir=tmp_path / "source"),
        strategy="linear_probe",
        data=data,
        hparams=Hyperparameters(epochs=5, batch_size=16, learning_rate=1e-2),
        device="cpu",
    )
    assert result.card.architecture["num_classes"] == 3
    assert result.card.class_names == ("zero", "one", "two")
    # image_size unset -> the source's preprocessing (32 px), not the backbone's 160 px default.
    assert result.card.preprocessing == finetuned.card.preprocessing
    assert result.model.fc.out_features == 3
    source_state = state_copy(finetuned.model)
    new_state = state_copy(result.model)
    backbone = [k for k in source_state if not k.startswith("fc.")]
    assert all(source_state[k].equal(new_state[k]) for k in backbone)
    # The learnt backbone transfers: well above the 1/3 chance level.
    assert result.evaluation.accuracy > 0.6

    save_artifact(result.model, result.card, tmp_path / "derived")
    reloaded, card = load_artifact(tmp_path / "derived")
    assert card.class_names == ("zero", "one", "two") and reloaded.fc.out_features == 3


def test_vit_artifact_with_custom_input_size_round_trips(small_digits, tmp_path):
    result = run_training(
        source=ModelSource(kind="timm", name="test_vit", pretrained=False),
        strategy="linear_probe",
        data=small_digits,
        hparams=Hyperparameters(epochs=1, image_size=48),
        device="cpu",
    )
    save_artifact(result.model, result.card, tmp_path)
    model, card = load_artifact(tmp_path)  # strict load: pos_embed must be the 48 px shape
    assert tuple(model.pos_embed.shape) == tuple(result.model.pos_embed.shape) == (1, 10, 64)
    image = Image.new("L", (8, 8), 128)
    assert predict(model, card, [image]) == predict(result.model, result.card, [image])


def test_load_artifact_errors_are_actionable(finetuned, tmp_path):
    with pytest.raises(EngineError, match="not a model artifact"):
        load_artifact(tmp_path / "missing")

    save_artifact(finetuned.model, finetuned.card, tmp_path / "future")
    card_path = tmp_path / "future" / "model.json"
    card_path.write_text(json.dumps({**json.loads(card_path.read_text()), "format_version": 3}))
    with pytest.raises(EngineError, match="format_version 3"):
        load_artifact(tmp_path / "future")

    # Weights that do not fit the card: a card claiming 5 classes over 10-class weights.
    save_artifact(finetuned.model, finetuned.card, tmp_path / "mismatch")
    card = ModelCard(
        architecture={"library": "timm", "name": "test_resnet", "num_classes": 5},
        class_names=tuple("abcde"),
        preprocessing=finetuned.card.preprocessing,
    )
    (tmp_path / "mismatch" / "model.json").write_text(
        json.dumps({"format_version": 1, **card.to_dict()})
    )
    with pytest.raises(EngineError, match="do not match the model card"):
        load_artifact(tmp_path / "mismatch")


def test_model_card_dict_round_trip_is_json_safe(finetuned):
    d = finetuned.card.to_dict()
    again = ModelCard.from_dict(json.loads(json.dumps(d)))
    assert again == finetuned.card
    assert isinstance(d["class_names"], list) and isinstance(d["preprocessing"]["mean"], list)
    with pytest.raises(EngineError, match="malformed"):
        ModelCard.from_dict({"architecture": {"library": "timm"}, "class_names": []})


def test_save_artifact_handles_tensors_that_share_storage(tmp_path):
    # The same module under two names puts two keys over one storage into the state dict, which
    # safetensors refuses unless the repeat is copied.
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    model.alias = model[0]
    card = ModelCard({"library": "timm", "name": "test_resnet", "num_classes": 2}, ("a", "b"), {})
    save_artifact(model, card, tmp_path)
    saved = safetensors.torch.load_file(str(tmp_path / "model.safetensors"))
    assert saved.keys() == {"0.weight", "0.bias", "alias.weight", "alias.bias"}
    assert saved["alias.weight"].equal(model[0].weight.detach())
