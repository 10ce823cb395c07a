"""Real images for engine tests: sklearn's 8x8 digits written as PNG files, tiny timm models."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from app.engine import DatasetSplits, Hyperparameters, TrainResult, run_training
from tests.engine._helpers import CLASS_NAMES, scratch, take

PER_CLASS = 60  # 600 images: enough to learn above chance in a few seconds on 2 cores


@pytest.fixture(scope="session")
def digit_samples(tmp_path_factory: pytest.TempPathFactory) -> tuple[tuple[str, int], ...]:
    """(absolute path, label) for PER_CLASS greyscale PNGs per digit, upscaled 8x8 -> 32x32."""
    root = tmp_path_factory.mktemp("digits")
    digits = load_digits()
    counts = dict.fromkeys(range(10), 0)
    samples = []
    for index, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        label = int(label)
        if counts[label] >= PER_CLASS:
            continue
        counts[label] += 1
        img = Image.fromarray((pixels * (255 / 16)).astype(np.uint8))  # 2-D uint8 -> "L"
        path = root / f"{label}_{index}.png"
        img.resize((32, 32), Image.Resampling.NEAREST).save(path)
        samples.append((str(path), label))
    return tuple(samples)


@pytest.fixture(scope="session")
def digits(digit_samples) -> DatasetSplits:
    """All 600 digit images as training data; the engine holds out a stratified 20%."""
    return DatasetSplits(class_names=CLASS_NAMES, train=digit_samples)


@pytest.fixture(scope="session")
def small_digits(digit_samples) -> DatasetSplits:
    """200 images for tests that check mechanics, not learning."""
    return DatasetSplits(class_names=CLASS_NAMES, train=take(digit_samples, 20))


@pytest.fixture(scope="session")
def finetuned(digits) -> TrainResult:
    """One real fine-tuning job shared by the tests that inspect its result (~3 s)."""
    return run_training(
        source=scratch("test_resnet"),
        strategy="finetune",
        data=digits,
        hparams=Hyperparameters(epochs=6, batch_size=32, learning_rate=3e-3, image_size=32),
        device="cpu",
    )
