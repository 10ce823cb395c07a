"""Real images for engine tests: sklearn's 8x8 digits written as PNG files, tiny timm models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from app.engine import DatasetSplits, Hyperparameters, TrainResult, run_training
from app.engine.data import ImageDataset
from tests.engine._helpers import CLASS_NAMES, scratch, take

PER_CLASS = 60  # 600 images: enough to learn above chance in a few seconds on 2 cores


@pytest.fixture(scope="package", autouse=True)
def one_torch_thread():
    """Engine tests run torch on one intra-op thread.

    NOTE on a shared 2-core machine (CI, or several test runs at once) two OpenMP threads that
    spin-wait for each other collapse as soon as another process holds a core: measured ~1.8 s
    per test_resnet step instead of ~25 ms, which took this suite from ~30 s to 8 minutes. On an
    idle machine one thread costs ~1.4x per step. Restored afterwards for the other test packages.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


@pytest.fixture
def count_image_reads(monkeypatch):
    """Counts ImageDataset.__getitem__ calls: every decoded image goes through it."""
    calls = {"n": 0}
    original = ImageDataset.__getitem__

    def counting(self, index):
        calls["n"] += 1
        return original(self, index)

    monkeypatch.setattr(ImageDataset, "__getitem__", counting)
    return calls
