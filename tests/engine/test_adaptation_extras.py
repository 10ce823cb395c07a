"""Issue 10's engine half beside the eval set: semi-supervised dann, the proxy A-distance, and
orthogonal regularisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from app.engine import Callback, DatasetSplits, EngineError, Hyperparameters, run_training
from app.engine.domain import proxy_a_distance
from app.engine.regularization import orthogonality, orthogonality_gradient
from app.engine.state import Checkpointer
from app.engine.strategies import create_strategy
from tests.engine._helpers import CLASS_NAMES, scratch, take

# --- proxy A-distance ---------------------------------------------------------------------------


def test_the_proxy_a_distance_is_near_0_for_one_distribution_and_near_2_for_separated_ones():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(1500, 32, generator=g)
    b = torch.randn(1000, 32, generator=g)
    direction = torch.nn.functional.normalize(torch.ones(32), dim=0)
    assert 0 <= proxy_a_distance(a, b) < 0.15
    assert proxy_a_distance(a, b + 8.0 * direction) > 1.98  # 8 sd apart
    # Two unit Gaussians d sd apart: the best classifier errs Phi(-d/2), so the distance is
    # 2 (1 - 2 Phi(-d/2)): 0.77 at d = 1, 1.91 at d = 4.
    for d, expected in ((1.0, 0.766), (4.0, 1.909)):
        assert proxy_a_distance(a, b + d * direction) == pytest.approx(expected, abs=0.1)


def test_the_proxy_a_distance_needs_rows_of_both_domains():
    with pytest.raises(ValueError, match="at least 4 rows"):
        proxy_a_distance(torch.zeros(2, 3), torch.zeros(10, 3))


# --- orthogonal regularisation -----------------------------------------------------------------


def test_the_orthogonal_penalty_is_zero_on_orthogonal_matrices_and_its_gradient_fixes_others():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=torch.float64))
    assert orthogonality(q).item() == pytest.approx(0.0, abs=1e-20)
    wide = q[:6]  # 6 orthonormal rows of 16 columns: W W^T = I
    assert orthogonality(wide).item() == pytest.approx(0.0, abs=1e-20)
    assert orthogonality(wide.T).item() == pytest.approx(0.0, abs=1e-20)  # the smaller side
    conv = torch.randn(8, 3, 3, 3, generator=g, dtype=torch.float64)
    for w in (conv, conv.reshape(8, -1).T.contiguous(), torch.randn(5, 20, generator=g)):
        w = w.clone().requires_grad_(True)
        orthogonality(w).backward()
        assert torch.allclose(orthogonality_gradient(w.detach()), w.grad, rtol=1e-4, atol=1e-5)
        # Small steps down the gradient approach orthogonality.
        x, before = w.detach().clone(), orthogonality(w).item()
        for _ in range(200):
            x -= 1e-3 * orthogonality_gradient(x)
        assert orthogonality(x).item() < 0.5 * before


def test_orthogonal_is_an_option_of_the_penalised_strategies_with_bounds():
    for name in ("finetune", "l2sp", "l1sp"):
        assert create_strategy(name, orthogonal=0.01).orthogonal == 0.01
        for bad in (-0.1, 2.0, "x", True):
            with pytest.raises(EngineError, match="orthogonal must be a number from 0 to 1"):
                create_strategy(name, orthogonal=bad)


def test_a_job_with_orthogonal_regularisation_trains_and_moves_towards_orthogonality(digits):
    def conv_penalty(model) -> float:
        return sum(
            orthogonality(p.detach()).item()
            for name, p in model.named_parameters()
            if p.ndim > 1 and "fc" not in name
        )

    hp = Hyperparameters(epochs=3, batch_size=32, learning_rate=3e-3, image_size=32)
    plain = run_training(source=scratch(), strategy="finetune", data=digits, hparams=hp,
                         device="cpu")  # fmt: skip
    ortho = run_training(source=scratch(), strategy="finetune", data=digits, hparams=hp,
                         strategy_options={"orthogonal": 0.5}, device="cpu")  # fmt: skip
    assert ortho.evaluation.accuracy > 0.5  # it learns (10 classes: chance is 0.1)
    assert conv_penalty(ortho.model) < 0.5 * conv_penalty(plain.model)


# --- semi-supervised dann -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def semi(digit_samples, tmp_path_factory) -> DatasetSplits:
    root = tmp_path_factory.mktemp("inverted-semi")
    inverted = []
    for path, label in take(digit_samples, 30)[::3]:
        with Image.open(path) as img:
            flipped = Image.fromarray(255 - np.asarray(img))
        out = root / f"{label}_{len(inverted)}.png"
        flipped.save(out)
        inverted.append((str(out), label))
    return DatasetSplits(
        class_names=CLASS_NAMES,
        train=take(digit_samples, 12),
        target=tuple(path for path, _ in inverted[10:]),
        target_labeled=tuple(inverted[:10]),
    )


def dann(data, options=None, **kwargs):
    hp = Hyperparameters(epochs=3, batch_size=16, learning_rate=3e-3, image_size=32)
    return run_training(source=scratch(), strategy="dann", data=data, hparams=hp,
                        strategy_options={"discriminator_hidden": 32, **(options or {})},
                        device="cpu", **kwargs)  # fmt: skip


def test_semi_supervised_dann_adds_the_labelled_target_loss_and_reports_it(semi):
    result = dann(semi, {"labeled_target_weight": 2.0})
    for m in result.history:
        assert set(m.extra) == {
            "classification_loss", "domain_loss", "domain_accuracy", "target_classification_loss"
        }  # fmt: skip
        assert m.train_loss == pytest.approx(
            m.extra["classification_loss"]
            + 2.0 * m.extra["target_classification_loss"]
            + m.extra["domain_loss"],
            rel=1e-5,
        )
    # The labelled target images train: their loss falls.
    losses = [m.extra["target_classification_loss"] for m in result.history]
    assert losses[-1] < losses[0]
    unsupervised = DatasetSplits(class_names=CLASS_NAMES, train=semi.train, target=semi.target)
    plain = dann(unsupervised)
    assert "target_classification_loss" not in plain.history[0].extra
    assert plain.history[0].train_loss != result.history[0].train_loss


def test_dann_with_only_labelled_target_images_trains(semi):
    only = DatasetSplits(
        class_names=CLASS_NAMES, train=semi.train, target_labeled=semi.target_labeled
    )
    assert len(dann(only).history) == 3


def test_dann_reports_the_proxy_a_distance_before_and_after(semi):
    result = dann(semi)
    pad = result.choices["proxy_a_distance"]
    assert set(pad) == {"before", "after"}
    assert all(0 <= v <= 2 for v in pad.values())
    assert pad["before"] != pad["after"]


def test_the_labelled_target_weight_is_bounded():
    for bad in (-1, 101, "1", None):
        with pytest.raises(EngineError, match="labeled_target_weight must be a number"):
            create_strategy("dann", labeled_target_weight=bad)


class Killed(Exception):
    pass


class DieAtStep(Callback):
    def on_step(self, epoch: int, step: int, steps_per_epoch: int) -> None:
        if (epoch, step) == (3, 2):
            raise Killed


def test_a_semi_supervised_dann_run_resumed_mid_epoch_ends_as_an_uninterrupted_one(tmp_path, semi):
    whole = dann(semi)
    folder = tmp_path / "ckpt"
    with pytest.raises(Killed):
        dann(semi, checkpoint_dir=folder, checkpoint_interval_s=0, callbacks=[DieAtStep()])
    state = Checkpointer(folder).latest()
    assert state is not None and (state.epoch, state.step) == (2, 1)
    assert {"rng.target", "rng.target_labeled", "epoch.order_rng.target_labeled"} <= set(
        state.tensors
    )
    resumed = dann(semi, checkpoint_dir=folder, checkpoint_interval_s=0)
    assert [(m.train_loss, m.val_loss, m.val_accuracy, m.extra) for m in resumed.history] == [
        (m.train_loss, m.val_loss, m.val_accuracy, m.extra) for m in whole.history
    ]
    assert resumed.choices["proxy_a_distance"] == whole.choices["proxy_a_distance"]
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


@pytest.mark.parametrize("strategy", ["dann", "instance_weighting"])
def test_a_tiny_target_trains_and_leaves_the_proxy_a_distance_out(semi, strategy):
    # Found by the attack: one target image made both strategies fail with an internal error,
    # because the proxy A-distance needs 4 images of each domain to hold out halves.
    tiny = DatasetSplits(class_names=CLASS_NAMES, train=semi.train, target=semi.target[:1])
    hp = Hyperparameters(epochs=1, batch_size=16, learning_rate=3e-3, image_size=32)
    options = {"discriminator_hidden": 32} if strategy == "dann" else {}
    result = run_training(source=scratch(), strategy=strategy, data=tiny, hparams=hp,
                          strategy_options=options, device="cpu")  # fmt: skip
    assert len(result.history) == 1
    assert result.choices["proxy_a_distance"] == {"before": None, "after": None}
