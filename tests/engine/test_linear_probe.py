"""Linear probing: frozen backbone, features computed once, only the classifier trains."""

from __future__ import annotations

import time

import pytest
import torch

from app.engine import Callback, Hyperparameters, TrainingCancelled, run_training
from app.engine.loop import seed_everything
from app.engine.models import create_timm_model
from tests.engine._helpers import changed_keys, scratch, state_copy


class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_train_start(self, total_epochs, steps_per_epoch):
        self.events.append(("start", total_epochs, steps_per_epoch, time.perf_counter()))

    def on_step(self, epoch, step, steps_per_epoch):
        self.events.append(("step", epoch, step, steps_per_epoch, time.perf_counter()))

    def on_epoch_end(self, metrics):
        self.events.append(("epoch", metrics, time.perf_counter()))


def test_linear_probe_trains_only_the_head_on_features_computed_once(
    small_digits, count_image_reads
):
    hparams = Hyperparameters(epochs=30, batch_size=32, learning_rate=1e-2, image_size=32)
    seed_everything(hparams.seed)  # run_training's exact starting weights
    before = state_copy(create_timm_model("test_resnet", 10, pretrained=False))
    recorder = Recorder()

    result = run_training(
        source=scratch(),
        strategy="linear_probe",
        data=small_digits,
        hparams=hparams,
        callbacks=[recorder],
        device="cpu",
    )

    assert changed_keys(before, state_copy(result.model)) == {"fc.weight", "fc.bias"}
    # 200 images, 160 train + 40 val: each decoded exactly once over 30 epochs.
    assert count_image_reads["n"] == 200
    history = result.history
    assert [m.epoch for m in history] == list(range(1, 31))
    assert {m.phase for m in history} == {"probe"}
    assert history[-1].train_loss < history[0].train_loss
    assert result.evaluation.accuracy == pytest.approx(history[-1].val_accuracy)

    # Progress: feature batches as epoch 0 (5 train + 2 val), then 5 head steps per epoch.
    start = recorder.events[0]
    assert start[:3] == ("start", 30, 5)
    steps = [e for e in recorder.events if e[0] == "step"]
    feature_steps = [e for e in steps if e[1] == 0]
    assert [(e[2], e[3]) for e in feature_steps] == [(i, 7) for i in range(1, 8)]
    assert len(steps) - len(feature_steps) == 30 * 5
    # What the cache saves in time is measured by bench/speed.py, not asserted here: timings on
    # a shared CI machine are noise.


def test_linear_probe_on_vit_uses_pre_logits_features(small_digits):
    hparams = Hyperparameters(epochs=10, batch_size=32, learning_rate=1e-2, image_size=32)
    seed_everything(hparams.seed)
    reference = create_timm_model("test_vit", 10, pretrained=False)
    reference.set_input_size(img_size=(32, 32))  # what run_training does for image_size=32
    before = state_copy(reference)

    result = run_training(
        source=scratch("test_vit"),
        strategy="linear_probe",
        data=small_digits,
        hparams=hparams,
        device="cpu",
    )
    assert changed_keys(before, state_copy(result.model)) == {"head.weight", "head.bias"}
    # 32 px with 16 px patches: a 2x2 grid + class token, resampled from the 160 px default.
    assert tuple(result.model.pos_embed.shape) == (1, 5, 64)
    assert result.card.preprocessing["input_size"] == [3, 32, 32]
    assert result.history[-1].val_accuracy > 0.3  # chance is 0.1


def test_linear_probe_honours_should_stop_during_feature_extraction(small_digits):
    class StopAfterTwoFeatureBatches(Callback):
        def __init__(self) -> None:
            self.steps: list[tuple[int, int]] = []

        def on_step(self, epoch, step, steps_per_epoch):
            self.steps.append((epoch, step))

        def should_stop(self):
            return len(self.steps) >= 2

    cb = StopAfterTwoFeatureBatches()
    with pytest.raises(TrainingCancelled, match="epoch 0, step 2/"):
        run_training(
            source=scratch(),
            strategy="linear_probe",
            data=small_digits,
            hparams=Hyperparameters(epochs=5, batch_size=32, image_size=32),
            callbacks=[cb],
            device="cpu",
        )
    assert cb.steps == [(0, 1), (0, 2)]


def test_head_steps_run_on_one_cpu_thread_and_the_count_is_restored(small_digits):
    class Threads(Callback):
        def __init__(self) -> None:
            self.by_epoch: dict[int, set[int]] = {}

        def on_step(self, epoch, step, steps_per_epoch):
            self.by_epoch.setdefault(epoch, set()).add(torch.get_num_threads())

    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the package runs on one thread; the job's feature pass uses 2
    try:
        seen = Threads()
        run_training(
            source=scratch(),
            strategy="linear_probe",
            data=small_digits,
            hparams=Hyperparameters(epochs=2, batch_size=32, image_size=32),
            callbacks=[seen],
            device="cpu",
        )
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert seen.by_epoch == {0: {2}, 1: {1}, 2: {1}}
    assert after == 2
