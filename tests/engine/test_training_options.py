"""Job-wide hyperparameters: early stopping, class imbalance, augmentation presets, schedules,
gradient clipping, precision, and exact repeats with all of them on."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision import transforms

from app.engine import DatasetSplits, Hyperparameters, run_training
from app.engine.callbacks import CallbackList
from app.engine.data import (
    ImageDataset,
    create_eval_transform,
    create_loader,
    create_train_loader,
    create_train_transform,
    split_train_val,
)
from app.engine.loop import Runtime, class_weights, create_criterion, evaluate, seed_everything
from app.engine.models import create_timm_model
from app.engine.optim import lr_factor
from tests.engine._helpers import CLASS_NAMES, PREPROCESSING_32, scratch, state_copy, take

PREPROCESSING = PREPROCESSING_32


def _train(data, strategy="finetune", options=None, num_workers=0, **hp):
    return run_training(
        source=scratch(),
        strategy=strategy,
        data=data,
        hparams=Hyperparameters(**{"batch_size": 32, "image_size": 32, **hp}),
        strategy_options=options or {},
        device="cpu",
        num_workers=num_workers,
    )


# --- early stopping -----------------------------------------------------------------------------


def test_early_stopping_stops_and_returns_the_best_epoch(small_digits):
    # lr 1e-2 overshoots from epoch 2 on (val_loss ~2.8 -> ~4.5 -> ~3.8): patience 2 stops at 3.
    result = _train(small_digits, epochs=10, learning_rate=1e-2, early_stopping_patience=2)
    history = result.history
    losses = [m.val_loss for m in history]
    best = losses.index(min(losses))
    assert len(history) == best + 1 + 2 < 10
    assert result.evaluation.accuracy == pytest.approx(history[best].val_accuracy)
    # The returned model is the best epoch's, BatchNorm statistics included: evaluating it again
    # gives that epoch's validation loss, not the last one's.
    _, val = split_train_val(small_digits, 0.2, 0)
    loader = create_loader(
        ImageDataset(val, create_eval_transform(result.card.preprocessing)),
        32,
        device=torch.device("cpu"),
    )
    again = evaluate(
        result.model, loader, runtime=Runtime(torch.device("cpu")), callbacks=CallbackList()
    )
    assert again.loss == pytest.approx(history[best].val_loss, rel=1e-5)
    assert again.loss != pytest.approx(history[-1].val_loss, rel=1e-3)


@pytest.mark.parametrize("strategy", ["linear_probe", "lp_ft"])
def test_early_stopping_on_accuracy_keeps_the_first_best_epoch(small_digits, strategy):
    result = _train(
        small_digits,
        strategy,
        epochs=12,
        learning_rate=3e-2,
        early_stopping_patience=1,
        early_stopping_metric="val_accuracy",
    )
    history = result.history
    final = [m for m in history if m.phase == history[-1].phase]
    accuracies = [m.val_accuracy for m in final]
    best = accuracies.index(max(accuracies))  # the first of equals
    assert len(final) == best + 2 or final[-1].epoch == 12
    assert result.evaluation.accuracy == pytest.approx(final[best].val_accuracy)


# --- class imbalance --------------------------------------------------------------------------


def test_balanced_class_weights_equalise_the_total_weight_of_each_class():
    labels = [0] * 8 + [1] * 2  # class 2 has no training image
    weights = class_weights(labels, 3)
    assert weights.tolist() == pytest.approx([10 / 24, 10 / 6, 1.0])
    hparams = Hyperparameters(class_weighting="balanced", label_smoothing=0.0)
    criterion = create_criterion(hparams, labels, 3, torch.device("cpu"))
    logits, targets = torch.randn(6, 3), torch.tensor([0, 0, 0, 0, 1, 1])
    w = weights[targets]
    manual = (w * F.cross_entropy(logits, targets, reduction="none")).sum() / w.sum()
    assert criterion(logits, targets).item() == pytest.approx(manual.item())
    plain = create_criterion(Hyperparameters(), labels, 3, torch.device("cpu"))
    assert plain(logits, targets).item() == pytest.approx(F.cross_entropy(logits, targets).item())


def test_label_smoothing_reaches_the_loss():
    criterion = create_criterion(
        Hyperparameters(label_smoothing=0.2), [0, 1], 2, torch.device("cpu")
    )
    logits, targets = torch.tensor([[4.0, -4.0]]), torch.tensor([0])
    expected = F.cross_entropy(logits, targets, label_smoothing=0.2)
    assert criterion(logits, targets).item() == pytest.approx(expected.item())


@pytest.fixture(scope="module")
def imbalanced(digit_samples) -> tuple[tuple[str, int], ...]:
    """40 zeros and 4 ones."""
    zeros = [s for s in digit_samples if s[1] == 0][:40]
    ones = [s for s in digit_samples if s[1] == 1][:4]
    return (*zeros, *ones)


def _drawn_labels(samples, sampler: str, seed: int, epochs: int = 5) -> list[int]:
    loader = create_train_loader(
        ImageDataset(samples, create_eval_transform(PREPROCESSING)),
        11,
        device=torch.device("cpu"),
        seed=seed,
        num_workers=0,
        sampler=sampler,
    )
    return [int(y) for _ in range(epochs) for _, labels in loader for y in labels]


def test_balanced_sampler_draws_every_class_equally_often_and_repeats(imbalanced):
    shuffled = _drawn_labels(imbalanced, "shuffle", seed=0)
    assert sum(shuffled) / len(shuffled) == pytest.approx(4 / 44)
    balanced = _drawn_labels(imbalanced, "balanced", seed=0)
    assert len(balanced) == len(shuffled) == 5 * 44  # an epoch is still len(train) images
    assert 0.4 < sum(balanced) / len(balanced) < 0.6
    assert _drawn_labels(imbalanced, "balanced", seed=0) == balanced
    assert _drawn_labels(imbalanced, "balanced", seed=1) != balanced


def test_class_weighting_and_sampler_change_training_on_an_imbalanced_split(imbalanced):
    data = DatasetSplits(class_names=("zero", "one"), train=imbalanced)
    runs = {
        key: _train(data, "linear_probe", epochs=3, learning_rate=1e-2, **hp).history
        for key, hp in {
            "plain": {},
            "weights": {"class_weighting": "balanced"},
            "sampler": {"sampler": "balanced"},
        }.items()
    }
    plain = [m.train_loss for m in runs["plain"]]
    assert [m.train_loss for m in runs["weights"]] != plain
    assert [m.train_loss for m in runs["sampler"]] != plain
    # val_loss is the plain cross-entropy whatever the training objective.
    assert all(m.val_loss > 0 for run in runs.values() for m in run)


# --- augmentation ---------------------------------------------------------------------------


def _steps(transform) -> list:
    return [t for t in transform.transforms[1].transforms]  # [ToRGB, timm's Compose]


def test_augmentation_presets():
    default = _steps(create_train_transform(PREPROCESSING))
    light = _steps(create_train_transform(PREPROCESSING, "light"))
    strong = _steps(create_train_transform(PREPROCESSING, "strong"))
    types = {
        name: {type(t).__name__ for t in steps}
        for name, steps in [("default", default), ("light", light), ("strong", strong)]
    }
    assert {"RandomHorizontalFlip", "ColorJitter"} <= types["default"]
    crop = next(t for t in light if type(t).__name__ == "RandomResizedCropAndInterpolation")
    assert tuple(crop.scale) == (0.6, 1.0)
    assert not types["light"] & {"RandomHorizontalFlip", "ColorJitter"}
    assert "RandAugment" in types["strong"]
    none = create_train_transform(PREPROCESSING, "none")
    assert repr(none) == repr(create_eval_transform(PREPROCESSING))
    assert isinstance(none, transforms.Compose)


# --- schedules ------------------------------------------------------------------------------


def test_lr_factor_warmup_then_cosine_step_or_constant():
    cosine = Hyperparameters(epochs=6, scheduler="cosine", warmup_epochs=2)
    expected = [1 / 3, 2 / 3, 1.0, 0.5 * (1 + 2**-0.5), 0.5, 0.5 * (1 - 2**-0.5)]
    assert [lr_factor(e, 6, cosine) for e in range(1, 7)] == pytest.approx(expected)
    step = Hyperparameters(epochs=5, scheduler="step", step_size=2, gamma=0.5)
    assert [lr_factor(e, 5, step) for e in range(1, 6)] == [1, 1, 0.5, 0.5, 0.25]
    constant = Hyperparameters(epochs=3, warmup_epochs=1)
    assert [lr_factor(e, 3, constant) for e in range(1, 4)] == [0.5, 1, 1]
    # A phase shorter than the warm-up (lp_ft) still reaches the full lr in its last epoch.
    assert [lr_factor(e, 2, Hyperparameters(epochs=9, warmup_epochs=4)) for e in (1, 2)] == [
        0.5,
        1.0,
    ]


@pytest.mark.parametrize("strategy", ["finetune", "linear_probe"])
def test_reported_learning_rates_follow_warmup_and_cosine(small_digits, strategy):
    history = _train(
        small_digits, strategy, epochs=4, learning_rate=1e-2, scheduler="cosine", warmup_epochs=1
    ).history
    expected = [1e-2 * f for f in (0.5, 1.0, 0.5 * (1 + 0.5), 0.5 * (1 - 0.5))]
    assert [m.learning_rate for m in history] == pytest.approx(expected)


# --- clipping, precision ------------------------------------------------------------------------


def test_gradient_clipping_bounds_every_update(small_digits):
    seed_everything(0)  # run_training's exact starting weights
    before = state_copy(create_timm_model("test_resnet", 10, pretrained=False))
    clipped = _train(
        small_digits, epochs=1, optimizer="sgd", learning_rate=0.1, grad_clip_norm=1e-6
    )
    after = {k: v.detach() for k, v in clipped.model.named_parameters()}
    # 5 SGD steps of norm <= lr * 1e-6, amplified at most 1 / (1 - momentum) = 10x by momentum.
    moved = max(float((after[k] - before[k]).abs().max()) for k in after)
    assert 0 < moved <= 5 * 0.1 * 1e-6 * 10
    unclipped = _train(small_digits, epochs=1, optimizer="sgd", learning_rate=0.1)
    free = max(
        float((p.detach() - before[k]).abs().max()) for k, p in unclipped.model.named_parameters()
    )
    assert free > 1e-3


def test_amp_never_autocasts_on_cpu():
    cpu = torch.device("cpu")
    assert not Runtime.on(cpu, amp=True).bf16 and not Runtime.on(cpu, amp=False).bf16


# --- repeatability and step cost ----------------------------------------------------------------

EVERYTHING = {
    "sampler": "balanced",
    "class_weighting": "balanced",
    "augmentation": "strong",
    "label_smoothing": 0.1,
    "scheduler": "cosine",
    "warmup_epochs": 1,
    "grad_clip_norm": 1.0,
    "early_stopping_patience": 2,
}


@pytest.mark.parametrize(
    ("strategy", "options", "hp"),
    [
        ("finetune", {"freeze_bn": True, "layer_decay": 0.8, "penalty": "l2"}, EVERYTHING),
        (
            "l1sp",
            {"freeze_stages": 2, "unfreeze_every": 1},
            {**EVERYTHING, "augmentation": "light"},
        ),
        ("lp_ft", {"backbone_lr_mult": 0.1}, {**EVERYTHING, "scheduler": "step", "step_size": 1}),
        ("linear_probe", {"head": "mlp", "features": "stage:3", "mlp_dropout": 0.3}, EVERYTHING),
    ],
)
def test_same_seed_repeats_exactly_with_the_new_features(small_digits, strategy, options, hp):
    def history(seed: int):
        result = _train(small_digits, strategy, options, epochs=3, seed=seed, **hp)
        return [(m.train_loss, m.val_loss, m.val_accuracy, m.learning_rate) for m in result.history]

    first = history(5)
    assert history(5) == first
    assert history(6) != first


def test_loader_workers_repeat_exactly_with_balanced_sampling_and_augmentation(small_digits):
    def history():
        result = _train(
            small_digits, epochs=1, seed=3, num_workers=2, sampler="balanced", augmentation="strong"
        )
        return [(m.train_loss, m.val_loss) for m in result.history]

    assert history() == history()


def test_no_host_sync_per_step(small_digits, monkeypatch):
    # Everything that runs per step (penalty, clipping, class weights, balanced sampling,
    # schedule) must not read device values: the count of reads is the same for 5 or 20 steps.
    reads = {"n": 0}
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, **kwargs):
            reads["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)

    def count(batch_size: int) -> int:
        reads["n"] = 0
        _train(
            DatasetSplits(CLASS_NAMES, take(small_digits.train, 10)),
            "l2sp",
            epochs=2,
            batch_size=batch_size,
            **{**EVERYTHING, "augmentation": "none"},
        )
        return reads["n"]

    assert count(40) == count(8)
