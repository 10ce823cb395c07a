"""Instance weighting: the density-ratio estimate and the weighted fine-tuning it drives."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from app.engine import DatasetSplits, EngineError, Hyperparameters, run_training
from app.engine.domain import estimate_density_ratio, weight_summary
from tests.engine._helpers import CLASS_NAMES, scratch, take


def test_the_estimate_recovers_a_known_density_ratio():
    # Source N(0, I), target N(mu, I) in 4-D: p_t(x) / p_s(x) = exp(mu.x - |mu|^2 / 2), which a
    # logistic classifier represents exactly.
    g = torch.Generator().manual_seed(0)
    mu = torch.tensor([0.8, -0.4, 0.0, 0.0])
    source = torch.randn(4000, 4, generator=g)
    target = torch.randn(3000, 4, generator=g) + mu
    true = torch.exp(source @ mu - mu.dot(mu) / 2)
    true = true / true.mean()
    estimate = estimate_density_ratio(source, target, clip=1000.0)
    assert estimate.mean().item() == pytest.approx(1.0)
    log_error = (estimate.log() - true.log()).abs()
    assert log_error.median() < 0.1  # within ~10% for the typical image
    assert np.corrcoef(estimate.log().numpy(), true.log().numpy())[0, 1] > 0.99


def test_clipping_bounds_the_largest_weight_and_the_summary_reports_it():
    g = torch.Generator().manual_seed(1)
    source = torch.randn(2000, 2, generator=g)
    target = torch.randn(2000, 2, generator=g) + 3.0  # far apart: a few weights would be huge
    weights = estimate_density_ratio(source, target, clip=5.0)
    assert weights.mean().item() == pytest.approx(1.0)
    assert weights.max().item() <= 5.0 * 1.0001 / (weights.clamp(max=1e9).mean().item()) + 5
    summary = weight_summary(weights)
    assert summary["max"] == pytest.approx(weights.max().item())
    assert 0 < summary["effective_fraction"] < 0.5  # strongly shifted: few images carry it
    assert summary["effective_sample_size"] == pytest.approx(
        summary["effective_fraction"] * len(weights)
    )
    assert weight_summary(torch.ones(10))["effective_fraction"] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def shifted(digit_samples, tmp_path_factory) -> DatasetSplits:
    root = tmp_path_factory.mktemp("bright")
    target = []
    for path, label in take(digit_samples, 30)[::3]:
        with Image.open(path) as img:
            brighter = Image.fromarray(
                np.minimum(np.asarray(img).astype(int) + 80, 255).astype(np.uint8)
            )
        out = root / f"{label}_{len(target)}.png"
        brighter.save(out)
        target.append(str(out))
    train = take(digit_samples, 12)
    return DatasetSplits(class_names=CLASS_NAMES, train=train, target=tuple(target))


def test_an_instance_weighting_job_trains_and_reports_its_weights(shifted):
    hp = Hyperparameters(epochs=2, batch_size=16, learning_rate=3e-3, image_size=32)
    result = run_training(source=scratch(), strategy="instance_weighting", data=shifted,
                          hparams=hp, device="cpu")  # fmt: skip
    assert [m.epoch for m in result.history] == [1, 2]
    assert all(math.isfinite(m.train_loss) for m in result.history)
    summary = result.choices["instance_weights"]
    assert summary["max"] <= 10.0 + 1e-6 and summary["min"] >= 0
    assert 0 < summary["effective_fraction"] <= 1


def test_instance_weighting_without_target_images_says_what_is_missing(small_digits):
    hp = Hyperparameters(epochs=1, batch_size=16, image_size=32)
    with pytest.raises(EngineError, match="target"):
        run_training(source=scratch(), strategy="instance_weighting", data=small_digits,
                     hparams=hp, device="cpu")  # fmt: skip
