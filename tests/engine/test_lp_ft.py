"""lp_ft: a linear probe on cached features, then fine-tuning from there, in one job."""

from __future__ import annotations

import pytest

from app.engine import Callback, EngineError, Hyperparameters, run_training
from app.engine.loop import seed_everything
from app.engine.models import create_timm_model
from tests.engine._helpers import changed_keys, scratch, state_copy


class Log(Callback):
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def on_train_start(self, total_epochs, steps_per_epoch):
        self.calls.append(("start", total_epochs, steps_per_epoch))

    def on_step(self, epoch, step, steps_per_epoch):
        self.calls.append(("step", epoch, step, steps_per_epoch))

    def on_epoch_end(self, metrics):
        self.calls.append(("epoch", metrics.epoch, metrics.phase))


def test_lp_ft_probes_then_finetunes_with_continuous_epochs(small_digits, count_image_reads):
    hparams = Hyperparameters(epochs=4, batch_size=32, learning_rate=1e-2, image_size=32)
    seed_everything(hparams.seed)
    before = state_copy(create_timm_model("test_resnet", 10, pretrained=False))
    log = Log()
    result = run_training(
        source=scratch(),
        strategy="lp_ft",
        data=small_digits,
        hparams=hparams,
        strategy_options={"probe_epochs": 1, "freeze_stages": 1},
        callbacks=[log],
        device="cpu",
    )
    history = result.history
    assert [(m.epoch, m.phase) for m in history] == [
        (1, "probe"),
        (2, "finetune"),
        (3, "finetune"),
        (4, "finetune"),
    ]
    # The probe uses the job's lr; fine-tuning lr * finetune_lr_mult (default 0.1).
    assert [m.learning_rate for m in history] == pytest.approx([1e-2, 1e-3, 1e-3, 1e-3])
    changed = changed_keys(before, state_copy(result.model))
    assert "layer2.0.conv1.weight" in changed and "fc.weight" in changed
    assert not {k for k in changed if k.startswith(("conv1.", "bn1."))}  # freeze_stages=1
    assert result.evaluation.accuracy == pytest.approx(history[-1].val_accuracy)
    assert set(result.card.architecture) == {"library", "name", "num_classes"}

    # One announcement; the feature pass is epoch 0 (5 train + 2 val batches); features are
    # decoded once, then 3 fine-tuning epochs decode the 160 training and 40 val images each.
    assert log.calls[0] == ("start", 4, 5)
    assert [c for c in log.calls if c[0] == "step" and c[1] == 0][-1] == ("step", 0, 7, 7)
    assert [c for c in log.calls if c[0] == "epoch"] == [
        ("epoch", 1, "probe"),
        ("epoch", 2, "finetune"),
        ("epoch", 3, "finetune"),
        ("epoch", 4, "finetune"),
    ]
    assert count_image_reads["n"] == 200 + 3 * 200


@pytest.mark.parametrize(
    ("epochs", "options", "message"),
    [
        (1, {}, "lp_ft needs epochs >= 2"),
        (3, {"probe_epochs": 3}, "probe_epochs=3 leaves no fine-tuning epoch"),
        (3, {"freeze_stages": 9}, "freeze_stages=9 but the model has 5 stages"),
    ],
)
def test_lp_ft_input_errors(small_digits, epochs, options, message):
    with pytest.raises(EngineError, match=message):
        run_training(
            source=scratch(),
            strategy="lp_ft",
            data=small_digits,
            hparams=Hyperparameters(epochs=epochs, image_size=32),
            strategy_options=options,
            device="cpu",
        )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"probe_epochs": 0}, "probe_epochs must be an integer >= 1"),
        ({"finetune_lr_mult": 0}, r"finetune_lr_mult must be a number in \(0, 1\]"),
    ],
)
def test_bad_lp_ft_options(options, message):
    from app.engine.strategies import create_strategy

    with pytest.raises(EngineError, match=message):
        create_strategy("lp_ft", **options)
