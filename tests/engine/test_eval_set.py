"""The job's eval set (DatasetSplits.evaluation): scored after every epoch and with the final model,
for every strategy that goes through the trainer, without changing what is trained."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from app.engine import Callback, DatasetSplits, EngineError, Hyperparameters, run_training
from app.engine.state import Checkpointer
from tests.engine._helpers import CLASS_NAMES, scratch, take


@pytest.fixture(scope="module")
def inverted(digit_samples, tmp_path_factory) -> tuple[tuple[str, int], ...]:
    """Digits with inverted colours: a target domain, labelled."""
    root = tmp_path_factory.mktemp("inverted-eval")
    out = []
    for path, label in take(digit_samples, 40)[-100:]:
        with Image.open(path) as img:
            flipped = Image.fromarray(255 - np.asarray(img))
        target = root / f"{label}_{len(out)}.png"
        flipped.save(target)
        out.append((str(target), label))
    return tuple(out)


@pytest.fixture(scope="module")
def data(digit_samples, inverted) -> DatasetSplits:
    return DatasetSplits(
        class_names=CLASS_NAMES,
        train=take(digit_samples, 12),
        target=tuple(path for path, _ in inverted[:50]),
        evaluation=inverted[50:],
    )


def without_eval(data: DatasetSplits) -> DatasetSplits:
    return DatasetSplits(class_names=data.class_names, train=data.train, target=data.target)


def run(data, strategy, options=None, **hp):
    hparams = Hyperparameters(
        **{"epochs": 3, "batch_size": 16, "learning_rate": 3e-3, "image_size": 32, **hp}
    )
    return run_training(source=scratch(), strategy=strategy, data=data, hparams=hparams,
                        strategy_options=options or {}, device="cpu")  # fmt: skip


STRATEGIES = [
    ("finetune", {}),
    ("l2sp", {"alpha": 0.1}),
    ("l1sp", {"alpha": 0.1}),
    ("linear_probe", {}),
    ("lp_ft", {"probe_epochs": 1}),
    ("dann", {"discriminator_hidden": 32}),
    ("instance_weighting", {}),
]


@pytest.mark.parametrize(("strategy", "options"), STRATEGIES)
def test_the_eval_set_is_scored_every_epoch_and_at_the_end_without_changing_training(
    data, strategy, options
):
    # keep_best off: the returned model is the last epoch's, so its score is the last one's.
    scored = run(data, strategy, options, keep_best=False)
    plain = run(without_eval(data), strategy, options, keep_best=False)

    n = len(data.evaluation)
    assert scored.eval_dataset is not None and scored.eval_dataset.num_samples == n
    assert all(m.eval_loss is not None and m.eval_loss > 0 for m in scored.history)
    assert all(m.eval_accuracy is not None for m in scored.history)
    assert scored.eval_dataset.accuracy == pytest.approx(scored.history[-1].eval_accuracy)
    matrix = np.array(scored.eval_dataset.confusion_matrix)
    assert matrix.sum() == n and matrix.trace() == round(scored.eval_dataset.accuracy * n)
    assert plain.eval_dataset is None
    assert all(m.eval_loss is None and m.eval_accuracy is None for m in plain.history)
    # Scoring draws from no RNG training uses, so training is bitwise the same.
    assert [(m.train_loss, m.val_loss, m.val_accuracy, m.extra) for m in scored.history] == [
        (m.train_loss, m.val_loss, m.val_accuracy, m.extra) for m in plain.history
    ]
    for key, value in plain.model.state_dict().items():
        assert torch.equal(value, scored.model.state_dict()[key]), key


def test_the_final_score_is_that_of_the_kept_epoch(data):
    # keep_best by val_loss, with a learning rate that overfits 96 images: the first seed whose
    # best epoch is not the last one (CPU runs repeat, so this is the same run every time).
    for seed in range(5):
        result = run(data, "finetune", epochs=6, learning_rate=3e-2, seed=seed)
        kept = result.choices["kept_epoch"]
        if kept != result.history[-1].epoch:
            break
    else:
        pytest.fail("no seed kept an epoch before the last")
    assert result.eval_dataset is not None
    assert result.eval_dataset.accuracy == pytest.approx(result.history[kept - 1].eval_accuracy)
    assert result.history[kept - 1].eval_accuracy != result.history[-1].eval_accuracy


def test_the_probe_reads_each_eval_image_once(data, count_image_reads):
    result = run(data, "linear_probe", epochs=4)
    assert result.eval_dataset is not None
    # train + val + eval, once each: the eval set's features are cached like val's.
    assert count_image_reads["n"] == len(data.train) + len(data.evaluation)


class Killed(Exception):
    pass


class DieAtStep(Callback):
    def on_step(self, epoch: int, step: int, steps_per_epoch: int) -> None:
        if (epoch, step) == (3, 2):
            raise Killed


@pytest.mark.parametrize(
    ("strategy", "options"), [("finetune", {}), ("dann", {"discriminator_hidden": 32})]
)
def test_a_resumed_run_with_an_eval_set_equals_an_uninterrupted_one(
    tmp_path, data, strategy, options
):
    hp = Hyperparameters(epochs=3, batch_size=16, learning_rate=3e-3, image_size=32)
    common = {"source": scratch(), "strategy": strategy, "data": data, "hparams": hp,
              "strategy_options": options, "device": "cpu"}  # fmt: skip
    whole = run_training(**common)
    folder = tmp_path / "ckpt"
    with pytest.raises(Killed):
        run_training(**common, checkpoint_dir=folder, checkpoint_interval_s=0,
                     callbacks=[DieAtStep()])  # fmt: skip
    assert Checkpointer(folder).latest() is not None
    resumed = run_training(**common, checkpoint_dir=folder, checkpoint_interval_s=0)
    fields = lambda m: (m.train_loss, m.val_loss, m.val_accuracy, m.extra, m.eval_loss,  # noqa: E731
                        m.eval_accuracy)  # fmt: skip
    assert [fields(m) for m in resumed.history] == [fields(m) for m in whole.history]
    assert resumed.eval_dataset == whole.eval_dataset
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_eval_labels_outside_the_classes_are_refused(data):
    bad = DatasetSplits(
        class_names=CLASS_NAMES, train=data.train, evaluation=((data.evaluation[0][0], 10),)
    )
    with pytest.raises(EngineError, match="evaluation images have labels outside"):
        run(bad, "finetune")


def test_labelled_target_images_are_refused_where_unused(data):
    semi = DatasetSplits(
        class_names=CLASS_NAMES, train=data.train, target_labeled=data.evaluation[:5]
    )
    with pytest.raises(EngineError, match="does not use labelled target images"):
        run(semi, "finetune")
