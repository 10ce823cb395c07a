"""Input validation, registries, backbones and pretrained-weight errors: fast, no training."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from app.engine import (
    DatasetSplits,
    EngineError,
    Hyperparameters,
    ModelSource,
    create_eval_transform,
    is_known_backbone,
    list_backbones,
    list_strategies,
    run_training,
    strategy_option_names,
)
from app.engine.data import split_train_val
from app.engine.models import create_timm_model
from app.engine.strategies import Strategy, create_strategy, register_strategy
from app.engine.strategies._registry import _strategies
from tests.engine._helpers import CLASS_NAMES, scratch, take

# --- strategies ---------------------------------------------------------------------------------


FINETUNE_OPTIONS = [
    "freeze_stages",
    "freeze_patterns",
    "freeze_bn",
    "unfreeze_every",
    "backbone_lr_mult",
    "layer_decay",
]


def test_strategy_registry_lists_builtins_and_their_options():
    assert list_strategies() == [
        "dann", "finetune", "instance_weighting", "l1sp", "l2sp", "linear_probe", "lp_ft"
    ]  # fmt: skip
    assert list_strategies(needs_target=True) == ["dann", "instance_weighting"]
    penalised = [*FINETUNE_OPTIONS, "orthogonal"]  # finetune, l2sp and l1sp
    assert strategy_option_names("finetune") == [*penalised, "penalty", "penalty_lambda"]
    assert strategy_option_names("l2sp") == [*penalised, "alpha", "beta"]
    assert strategy_option_names("l1sp") == [*penalised, "alpha", "beta"]
    assert strategy_option_names("lp_ft") == [*FINETUNE_OPTIONS, "probe_epochs", "finetune_lr_mult"]
    assert strategy_option_names("linear_probe") == [
        "head",
        "features",
        "mlp_hidden",
        "mlp_dropout",
    ]
    assert create_strategy("finetune", freeze_stages=2).freeze_stages == 2
    # JSON lists become tuples: the strategy stays hashable and immutable.
    assert create_strategy("l2sp", freeze_patterns=["layer1.*"]).freeze_patterns == ("layer1.*",)


def test_unknown_strategy_names_the_valid_ones(small_digits):
    with pytest.raises(EngineError, match=r"Unknown strategy .l3sp.*finetune, instance_weighting"):
        run_training(
            source=scratch(),
            strategy="l3sp",
            data=small_digits,
            hparams=Hyperparameters(),
            device="cpu",
        )
    with pytest.raises(EngineError, match="instance_weighting, l1sp, l2sp, linear_probe, lp_ft"):
        strategy_option_names("nope")


def test_unknown_option_names_the_valid_ones(small_digits):
    with pytest.raises(EngineError, match=r"'freeze' for strategy 'finetune'.*freeze_stages"):
        run_training(
            source=scratch(),
            strategy="finetune",
            data=small_digits,
            hparams=Hyperparameters(),
            strategy_options={"freeze": 1},
            device="cpu",
        )
    with pytest.raises(EngineError, match="valid options are: head, features, mlp_hidden"):
        create_strategy("linear_probe", freeze_stages=1)


@pytest.mark.parametrize("value", [-1, 1.5, "2", True])
def test_freeze_stages_must_be_a_non_negative_int(value):
    with pytest.raises(EngineError, match="freeze_stages must be an integer from 0 to 100"):
        create_strategy("finetune", freeze_stages=value)


def test_registering_a_duplicate_strategy_name_warns():
    original = _strategies["finetune"]
    try:
        with pytest.warns(UserWarning, match="registered twice"):

            @register_strategy("finetune")
            @dataclass(frozen=True)
            class Other(Strategy):
                def fit(self, ctx):
                    raise NotImplementedError

        assert _strategies["finetune"] is Other
    finally:
        _strategies["finetune"] = original
        original.name = "finetune"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        register_strategy("finetune")(original)  # re-registering the same class is silent


# --- backbones and pretrained weights ------------------------------------------------------------


def test_backbone_listing_and_lookup():
    assert "test_resnet" in list_backbones("test_*")
    assert all(name.startswith("test_") for name in list_backbones("test_*"))
    assert len(list_backbones()) > 500
    assert is_known_backbone("resnet18") and is_known_backbone("resnet18.a1_in1k")
    assert not is_known_backbone("resnet18.no_such_tag")
    assert not is_known_backbone("resnet_9000")


def test_unknown_backbone_is_an_engine_error(small_digits):
    with pytest.raises(EngineError, match="Unknown timm model 'resnet_9000'"):
        run_training(
            source=scratch("resnet_9000"),
            strategy="finetune",
            data=small_digits,
            hparams=Hyperparameters(),
            device="cpu",
        )


def test_pretrained_weights_without_network_give_a_clear_message(monkeypatch, tmp_path):
    # This machine has no internet; offline mode makes the hub fail at once instead of retrying.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache, whatever the machine has
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(EngineError) as err:
        create_timm_model("test_resnet", 10, pretrained=True)
    message = str(err.value)
    assert message.startswith(
        "pretrained weights for timm model 'test_resnet' could not be loaded ("
    )
    for hint in ("HF_HOME", "pretrained=false", "base_model 'model:<id>'"):
        assert hint in message
    assert "\n" not in message


# --- hyperparameters, sources, splits -------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epochs", 0),
        ("batch_size", 0),
        ("learning_rate", 0.0),
        ("learning_rate", float("nan")),
        ("optimizer", "lion"),
        ("weight_decay", -1.0),
        ("momentum", 1.0),
        ("image_size", 4),
        ("val_fraction", 1.0),
        ("epochs", True),
        ("seed", -1),
        ("early_stopping_patience", 0),
        ("early_stopping_metric", "f1"),
        ("class_weighting", "inverse"),
        ("sampler", "weighted"),
        ("augmentation", "heavy"),
        ("label_smoothing", 1.0),
        ("scheduler", "linear"),
        ("warmup_epochs", -1),
        ("warmup_epochs", 10),  # == epochs: the lr would never reach its value
        ("step_size", 0),
        ("gamma", 0.0),
        ("gamma", 1.5),
        ("grad_clip_norm", 0.0),
        ("amp", "yes"),
    ],
)
def test_bad_hyperparameters_are_rejected_with_the_field_named(field, value):
    with pytest.raises(ValidationError, match=field):
        Hyperparameters(**{field: value})


def test_hyperparameter_defaults():
    hp = Hyperparameters()
    assert hp.early_stopping_patience is None and hp.scheduler == "constant"
    assert hp.warmup_epochs == 0 and hp.grad_clip_norm is None and hp.label_smoothing == 0
    assert (hp.class_weighting, hp.sampler) == ("none", "shuffle")
    # Chosen to work on the first try (bench/defaults.py): the augmentation fits the images, and
    # the best validation epoch is kept.
    assert hp.augmentation == "auto" and hp.keep_best is True
    assert hp.amp is True


def test_model_source_validation(tmp_path):
    with pytest.raises(EngineError, match="timm, artifact"):
        ModelSource(kind="hub")
    with pytest.raises(EngineError, match="needs a model name"):
        ModelSource(kind="timm")
    with pytest.raises(EngineError, match="artifact_dir"):
        ModelSource(kind="artifact")
    assert ModelSource(kind="artifact", artifact_dir=str(tmp_path)).artifact_dir == tmp_path


def test_stratified_split_is_seeded_and_keeps_every_class(digit_samples):
    lonely = ("/data/only_one.png", 10)
    data = DatasetSplits(
        class_names=(*CLASS_NAMES, "lonely"), train=(*take(digit_samples, 7), lonely)
    )
    train, val = split_train_val(data, 0.2, seed=3)
    assert split_train_val(data, 0.2, seed=3) == (train, val)
    assert split_train_val(data, 0.2, seed=4) != (train, val)
    val_labels = [label for _, label in val]
    # round(7 * 0.2) = 1 per digit; the class with a single image keeps it for training.
    assert sorted(val_labels) == list(range(10))
    assert lonely in train and len(train) + len(val) == 71
    assert not set(train) & set(val)


def test_explicit_validation_split_is_used_as_given(digit_samples):
    samples = take(digit_samples, 3)
    data = DatasetSplits(class_names=CLASS_NAMES, train=samples[:20], val=samples[20:])
    assert split_train_val(data, 0.2, seed=0) == (samples[:20], samples[20:])


def test_split_errors():
    names = ("a", "b")
    with pytest.raises(EngineError, match="no validation data"):
        split_train_val(DatasetSplits(names, (("x.png", 0), ("y.png", 1))), 0.2, 0)
    with pytest.raises(EngineError, match=r"label 2; labels are class indices 0\.\.1"):
        split_train_val(DatasetSplits(names, (("x.png", 2),)), 0.2, 0)
    with pytest.raises(EngineError, match=r"label 1\.0;"):
        split_train_val(DatasetSplits(names, (("x.png", 1.0),)), 0.2, 0)  # type: ignore[arg-type]
    with pytest.raises(EngineError, match="at least 2 classes"):
        split_train_val(DatasetSplits(("a",), (("x.png", 0),)), 0.2, 0)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_unreadable_image_names_the_file(tmp_path, small_digits, num_workers):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    data = DatasetSplits(
        class_names=small_digits.class_names, train=((str(broken), 0), *small_digits.train)
    )
    with pytest.raises(EngineError) as err:
        run_training(
            source=scratch(),
            strategy="linear_probe",
            data=data,
            hparams=Hyperparameters(epochs=1, image_size=32, batch_size=256),
            device="cpu",
            num_workers=num_workers,
        )
    # One clean sentence even when a DataLoader worker process raised it.
    assert str(err.value).startswith(f"Image {str(broken)!r} could not be read (")
    assert "Traceback" not in str(err.value) and "\n" not in str(err.value)


def test_eval_transform_makes_rgb_tensors_of_the_card_size():
    preprocessing = {
        "input_size": [3, 40, 40],
        "interpolation": "bicubic",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "crop_pct": 0.9,
        "crop_mode": "center",
    }
    transform = create_eval_transform(preprocessing)
    for img in (
        Image.new("L", (8, 8), 255),
        Image.new("RGBA", (100, 60)),
        Image.new("RGB", (3, 3)),
    ):
        out = transform(img)
        assert out.shape == (3, 40, 40) and out.dtype == torch.float32
    white = transform(Image.new("L", (8, 8), 255))
    assert torch.allclose(white, torch.ones_like(white))  # (1.0 - 0.5) / 0.5


def test_bad_device_and_workers(small_digits):
    kwargs = {"source": scratch(), "strategy": "finetune", "data": small_digits}
    with pytest.raises(EngineError, match="device"):
        run_training(**kwargs, hparams=Hyperparameters(), device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(EngineError, match="CUDA is not available"):
            run_training(**kwargs, hparams=Hyperparameters(), device="cuda")
    with pytest.raises(EngineError, match="num_workers"):
        run_training(**kwargs, hparams=Hyperparameters(), device="cpu", num_workers=-1)


def test_pretrained_request_for_a_model_without_published_weights():
    # timm itself would only log a warning and train from random weights.
    with pytest.raises(EngineError, match=r"no published pretrained weights.*pretrained=false"):
        create_timm_model("botnet50ts_256", 2, pretrained=True)


def test_vit_image_size_must_fit_its_patches(small_digits):
    with pytest.raises(EngineError, match=r"image_size 40 is not a multiple of .* patch size 16"):
        run_training(
            source=scratch("test_vit"),
            strategy="linear_probe",
            data=small_digits,
            hparams=Hyperparameters(epochs=1, image_size=40),
            device="cpu",
        )
