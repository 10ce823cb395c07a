"""Domain-adversarial training: the gradient reversal, its schedule, and dann jobs that train,
report the discriminator and resume exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from app.engine import Callback, DatasetSplits, EngineError, Hyperparameters, run_training
from app.engine.domain import ganin_strength, reverse_gradient
from app.engine.state import Checkpointer
from tests.engine._helpers import CLASS_NAMES, scratch, take


def test_the_reversal_is_the_identity_forward_and_flips_and_scales_the_gradient():
    x = torch.randn(4, 8, requires_grad=True)
    weights = torch.randn(4, 8)
    y = reverse_gradient(x, 0.3)
    assert torch.equal(y, x)
    (y * weights).sum().backward()
    assert torch.allclose(x.grad, -0.3 * weights)
    x.grad = None
    (reverse_gradient(x, 0.0) * weights).sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(weights))


def test_ganins_schedule_rises_from_zero_to_the_trade_off():
    values = [ganin_strength(p / 10, 2.0) for p in range(11)]
    assert values[0] == 0.0 and values == sorted(values)
    assert values[-1] == pytest.approx(2.0 * (2 / (1 + np.exp(-10)) - 1))
    assert values[5] == pytest.approx(2.0 * (2 / (1 + np.exp(-5)) - 1))


@pytest.fixture(scope="module")
def shifted(digit_samples, tmp_path_factory) -> DatasetSplits:
    """Source: digits; target: the same kind of digits with inverted colours (a domain shift)."""
    root = tmp_path_factory.mktemp("inverted")
    target = []
    for path, label in take(digit_samples, 30)[::3]:
        with Image.open(path) as img:
            inverted = Image.fromarray(255 - np.asarray(img))
        out = root / f"{label}_{len(target)}.png"
        inverted.save(out)
        target.append(str(out))
    return DatasetSplits(
        class_names=CLASS_NAMES, train=take(digit_samples, 12), target=tuple(target)
    )


def dann(data, **kwargs):
    hp = Hyperparameters(epochs=3, batch_size=16, learning_rate=3e-3, image_size=32)
    return run_training(source=scratch(), strategy="dann", data=data, hparams=hp,
                        strategy_options={"discriminator_hidden": 32}, device="cpu",
                        **kwargs)  # fmt: skip


def test_dann_trains_and_reports_the_discriminator_every_epoch(shifted):
    result = dann(shifted)
    assert [m.epoch for m in result.history] == [1, 2, 3]
    for m in result.history:
        assert set(m.extra) == {"classification_loss", "domain_loss", "domain_accuracy"}
        assert 0 <= m.extra["domain_accuracy"] <= 1
        assert m.train_loss == pytest.approx(
            m.extra["classification_loss"] + m.extra["domain_loss"], rel=1e-5
        )
    # The stored model is a plain classifier: the discriminator is not part of it.
    assert not any("discriminator" in k for k in result.model.state_dict())


def test_dann_without_target_images_says_what_is_missing(small_digits):
    with pytest.raises(EngineError, match="target"):
        dann(small_digits)


class Killed(Exception):
    pass


class DieAtStep(Callback):
    def on_step(self, epoch: int, step: int, steps_per_epoch: int) -> None:
        if (epoch, step) == (3, 2):
            raise Killed


def test_a_dann_run_resumed_mid_epoch_ends_as_an_uninterrupted_one(tmp_path, shifted):
    whole = dann(shifted)
    folder = tmp_path / "ckpt"
    with pytest.raises(Killed):
        dann(shifted, checkpoint_dir=folder, checkpoint_interval_s=0, callbacks=[DieAtStep()])
    state = Checkpointer(folder).latest()
    assert state is not None and (state.epoch, state.step) == (2, 1)
    assert any(k.startswith("discriminator.") for k in state.tensors)
    assert {"rng.loader", "rng.target", "epoch.order_rng.target"} <= set(state.tensors)
    resumed = dann(shifted, checkpoint_dir=folder, checkpoint_interval_s=0)
    assert [(m.train_loss, m.val_loss, m.val_accuracy, m.extra) for m in resumed.history] == [
        (m.train_loss, m.val_loss, m.val_accuracy, m.extra) for m in whole.history
    ]
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
