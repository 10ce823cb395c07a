"""Defaults that work on the first try: augmentation "auto" and keeping the best epoch."""

from __future__ import annotations

import pytest
from PIL import Image

from app.engine import DatasetSplits, Hyperparameters, run_training
from app.engine.data import resolve_augmentation
from tests.engine._helpers import CLASS_NAMES, scratch, take


def _images(tmp_path, side: int, n: int = 5) -> list[tuple[str, int]]:
    out = []
    for i in range(n):
        path = tmp_path / f"{side}_{i}.png"
        Image.new("RGB", (side, side + 10)).save(path)
        out.append((str(path), 0))
    return out


def test_auto_picks_timms_policy_only_for_photo_sized_images_and_inputs(tmp_path):
    photos, digits = _images(tmp_path, 300), _images(tmp_path, 32)
    assert resolve_augmentation("auto", photos, [3, 224, 224]) == "default"
    assert resolve_augmentation("auto", photos, [3, 64, 64]) == "light"  # a small input
    assert resolve_augmentation("auto", digits, [3, 224, 224]) == "light"  # upscaled small images
    assert resolve_augmentation("strong", digits, [3, 224, 224]) == "strong"  # asked: kept
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    assert resolve_augmentation("auto", [*photos, (str(broken), 0)], [3, 224, 224]) == "default"


def test_the_best_epoch_is_kept_unless_the_job_says_otherwise(digit_samples):
    data = DatasetSplits(class_names=CLASS_NAMES, train=take(digit_samples, 10))
    common = {"source": scratch(), "strategy": "finetune", "data": data, "device": "cpu"}
    # lr 0.01 on 100 images: the validation loss wanders (2.3-3.6), so with most seeds its
    # lowest is not at the last epoch. Which seed depends on the CPU's floating point (seed 0
    # kept epoch 1 on one machine and epoch 6 on another), so the test takes the first seed
    # whose best epoch is not the last: otherwise keep_best and the last epoch are the same
    # model and nothing would be checked.
    hp = {"epochs": 6, "batch_size": 16, "learning_rate": 0.01, "image_size": 32}
    for seed in range(5):
        best = run_training(**common, hparams=Hyperparameters(**hp, seed=seed))
        if best.choices["kept_epoch"] != 6:
            break
    else:
        pytest.fail("no seed of 5 had its best epoch before the last: pick other settings")
    last = run_training(**common, hparams=Hyperparameters(**hp, seed=seed, keep_best=False))
    assert [m.val_loss for m in best.history] == [m.val_loss for m in last.history]
    kept = best.choices["kept_epoch"]
    assert kept == min(best.history, key=lambda m: m.val_loss).epoch
    assert best.evaluation.accuracy == pytest.approx(best.history[kept - 1].val_accuracy)
    assert last.choices["kept_epoch"] == 6
    assert last.evaluation.accuracy == pytest.approx(last.history[-1].val_accuracy)
