"""Which parameters fine-tuning trains: name patterns, BatchNorm statistics, gradual unfreezing,
and per-layer learning rates."""

from __future__ import annotations

import pytest
import timm
import torch

from app.engine import DatasetSplits, EngineError, Hyperparameters, run_training
from app.engine.loop import seed_everything
from app.engine.models import create_timm_model
from app.engine.optim import create_param_groups
from app.engine.strategies import create_strategy
from tests.engine._helpers import CLASS_NAMES, changed_keys, scratch, state_copy, take

HP = Hyperparameters(epochs=1, batch_size=32, learning_rate=3e-3, image_size=32)


def start_state(hparams: Hyperparameters = HP) -> dict[str, torch.Tensor]:
    """run_training's exact starting weights: it seeds, then builds the model."""
    seed_everything(hparams.seed)
    return state_copy(create_timm_model("test_resnet", 10, pretrained=False))


def train(data, hparams: Hyperparameters = HP, strategy: str = "finetune", **options):
    return run_training(
        source=scratch(),
        strategy=strategy,
        data=data,
        hparams=hparams,
        strategy_options=options,
        device="cpu",
    )


def test_freeze_patterns_keep_parameters_and_their_bn_statistics_bitwise(small_digits):
    before = start_state()
    result = train(small_digits, freeze_patterns=["conv1.*", "layer1.*"])
    changed = changed_keys(before, state_copy(result.model))
    frozen = {k for k in before if k.startswith(("conv1.", "layer1."))}
    # Running statistics too: a BatchNorm layer whose parameters are all frozen runs in eval mode.
    assert any(k.endswith("running_mean") for k in frozen)
    assert not changed & frozen
    assert any(k.startswith("layer2.") for k in changed) and "fc.weight" in changed
    assert "bn1.running_mean" in changed  # not matched: trains as usual


def test_freeze_bn_keeps_every_running_statistic_but_trains_scale_and_shift(small_digits):
    before = start_state()
    result = train(small_digits, freeze_bn=True)
    changed = changed_keys(before, state_copy(result.model))
    stats = {
        k for k in before if k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    }
    assert stats and not changed & stats
    assert "layer1.0.bn1.weight" in changed and "layer1.0.conv1.weight" in changed


def test_gradual_unfreezing_releases_one_stage_per_period_deepest_first(digit_samples):
    # freeze_stages=2 (stem, layer1), unfreeze_every=1: epoch 1 trains layer2 and up, epoch 2
    # also layer1, epoch 3 everything. Runs are identical up to their last epoch (same seed,
    # constant lr), so stopping after 1, 2 and 3 epochs shows each state: the last epoch's, not
    # the best one's (keep_best off; with it, the outcome hung on which epoch validated best).
    data = DatasetSplits(class_names=CLASS_NAMES, train=take(digit_samples, 6))
    hparams = Hyperparameters(
        epochs=1, batch_size=16, learning_rate=3e-3, image_size=32, keep_best=False
    )
    before = start_state(hparams)
    stem = {k for k in before if k.startswith(("conv1.", "bn1."))}
    layer1 = {k for k in before if k.startswith("layer1.")}
    changed = []
    for epochs in (1, 2, 3):
        hp = hparams.model_copy(update={"epochs": epochs})
        result = train(data, hp, freeze_stages=2, unfreeze_every=1)
        changed.append(changed_keys(before, state_copy(result.model)))
    assert not changed[0] & (stem | layer1) and any(k.startswith("layer2.") for k in changed[0])
    assert layer1 <= changed[1] and not changed[1] & stem
    assert stem <= changed[2]


@pytest.mark.parametrize("penalty", ["l1", "l2"])
def test_penalties_towards_zero_leave_frozen_parameters_alone(small_digits, penalty):
    # A proximal step over every weight would shrink frozen ones too; it must skip them.
    before = start_state()
    result = train(small_digits, freeze_stages=2, penalty=penalty, penalty_lambda=1.0)
    changed = changed_keys(before, state_copy(result.model))
    assert not {k for k in changed if k.startswith(("conv1.", "bn1.", "layer1."))}
    assert "layer2.0.conv1.weight" in changed


def test_backbone_lr_mult_and_layer_decay_scale_the_groups():
    model = timm.create_model("test_resnet", pretrained=False, num_classes=10)
    params = list(model.parameters())
    head = list(model.get_classifier().parameters())
    groups = create_param_groups(
        model, params, head=head, weight_decay=0.05, backbone_lr_mult=0.1, layer_decay=0.5
    )
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert scale_of[id(named["fc.weight"])] == 1.0
    # timm's layers for test_resnet: stem 0, layer1..layer4 = 1..4, head 5.
    assert scale_of[id(named["layer4.0.conv1.weight"])] == pytest.approx(0.1 * 0.5)
    assert scale_of[id(named["layer1.0.conv1.weight"])] == pytest.approx(0.1 * 0.5**4)
    assert scale_of[id(named["conv1.0.weight"])] == pytest.approx(0.1 * 0.5**5)
    assert decay_of[id(named["layer1.0.conv1.weight"])] == 0.05
    assert decay_of[id(named["layer1.0.bn1.weight"])] == 0.0  # 1-D: no decay
    assert sum(len(g["params"]) for g in groups) == len(params)


def test_discriminative_lrs_train_and_report_the_head_lr(small_digits):
    result = train(
        small_digits, strategy="finetune", backbone_lr_mult=0.1, layer_decay=0.7, freeze_bn=True
    )
    assert result.history[0].learning_rate == pytest.approx(3e-3)  # the head's, the largest


def test_layer_decay_on_vit_and_efficientnet(small_digits):
    for name in ("test_vit", "test_efficientnet"):
        result = run_training(
            source=scratch(name),
            strategy="lp_ft",
            data=small_digits,
            hparams=Hyperparameters(epochs=2, batch_size=32, image_size=32),
            strategy_options={"layer_decay": 0.75, "probe_epochs": 1},
            device="cpu",
        )
        assert [m.phase for m in result.history] == ["probe", "finetune"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"freeze_patterns": "layer1.*"}, "freeze_patterns must be a list"),
        ({"freeze_patterns": ["layer1.*", ""]}, "strings of 1-200 characters"),
        ({"freeze_bn": "yes"}, "freeze_bn must be true or false"),
        ({"unfreeze_every": 2}, "unfreeze_every needs freeze_stages >= 1"),
        (
            {"freeze_stages": 1, "unfreeze_every": 0},
            "unfreeze_every must be an integer from 1 to 1000",
        ),
        ({"backbone_lr_mult": 0}, r"backbone_lr_mult must be a number in \(0, 1\]"),
        ({"backbone_lr_mult": 2.0}, r"backbone_lr_mult must be a number in \(0, 1\]"),
        ({"layer_decay": 1.5}, r"layer_decay must be a number in \(0, 1\] or null"),
        ({"penalty": "l3"}, "penalty must be one of none, l1, l2"),
        ({"penalty_lambda": 0.1}, "penalty_lambda is set but penalty is 'none'"),
        ({"penalty": "l2", "penalty_lambda": -1}, "penalty_lambda must be a number from 0 to"),
    ],
)
def test_bad_finetune_options_are_engine_errors(options, message):
    with pytest.raises(EngineError, match=message):
        create_strategy("finetune", **options)


def test_a_pattern_that_matches_nothing_names_real_parameters(small_digits):
    with pytest.raises(EngineError, match=r"'layer9\.\*' matches no parameter.*conv1\.0\.weight"):
        train(small_digits, freeze_patterns=["layer9.*"])


def test_freezing_everything_is_an_engine_error(small_digits):
    with pytest.raises(EngineError, match="Nothing to train"):
        train(small_digits, freeze_patterns=["*"])
