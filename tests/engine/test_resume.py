"""Training state saved every epoch; a run that stops and resumes ends as if never stopped."""

from __future__ import annotations

import pytest
import torch

from app.engine import Callback, DatasetSplits, Hyperparameters, run_training
from app.engine.state import Checkpointer
from tests.engine._helpers import CLASS_NAMES, scratch, take


class Killed(Exception):
    """Stands for the worker dying: raised from a callback, nothing after it runs."""


class DieAfter(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, metrics) -> None:  # type: ignore[no-untyped-def]
        if metrics.epoch == self.epoch:
            raise Killed


def comparable(history) -> list[tuple]:
    # Everything but wall-clock figures.
    return [(m.epoch, m.phase, m.train_loss, m.val_loss, m.val_accuracy, m.learning_rate)
            for m in history]  # fmt: skip


@pytest.fixture(scope="module")
def data(digit_samples) -> DatasetSplits:
    return DatasetSplits(class_names=CLASS_NAMES, train=take(digit_samples, 12))


CASES = [
    ("finetune", {}, {}),
    # The penalty's anchors are rebuilt from the source, not saved: they must be the same.
    ("l2sp", {"alpha": 1.0}, {"scheduler": "cosine", "warmup_epochs": 1}),
    ("finetune", {"freeze_stages": 2, "unfreeze_every": 1}, {"sampler": "balanced"}),
    # Keeps the best epoch: its weights and evaluation are part of the state (patience 4 of 5
    # epochs: the run cannot stop before the kill).
    ("finetune", {}, {"early_stopping_patience": 4, "early_stopping_metric": "val_accuracy"}),
    ("lp_ft", {"probe_epochs": 2}, {}),
]


@pytest.mark.parametrize(("strategy", "options", "extra"), CASES)
def test_a_resumed_run_has_the_metrics_of_an_uninterrupted_one(
    tmp_path, data, strategy, options, extra
):
    hp = Hyperparameters(epochs=5, batch_size=16, learning_rate=3e-3, image_size=32, **extra)
    common = {"source": scratch(), "strategy": strategy, "data": data, "hparams": hp,
              "strategy_options": options, "device": "cpu"}  # fmt: skip
    whole = run_training(**common)

    folder = tmp_path / "ckpt"
    with pytest.raises(Killed):
        run_training(**common, checkpoint_dir=folder, callbacks=[DieAfter(4)])
    saved = Checkpointer(folder).latest()
    assert saved is not None and saved.epoch == 3  # epoch 4 ended but died before its save
    resumed = run_training(**common, checkpoint_dir=folder)

    assert comparable(resumed.history) == comparable(whole.history)
    assert resumed.evaluation == whole.evaluation
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_state_round_trip(tmp_path, data):
    folder = tmp_path / "ckpt"
    hp = Hyperparameters(epochs=3, batch_size=16, image_size=32)
    with pytest.raises(Killed):
        run_training(source=scratch(), strategy="finetune", data=data, hparams=hp,
                      device="cpu", checkpoint_dir=folder, callbacks=[DieAfter(3)])  # fmt: skip
    state = Checkpointer(folder).latest()
    assert state is not None
    assert [p.name for p in folder.iterdir()] == ["epoch-0002"]  # older epochs removed
    assert sorted(f.name for f in (folder / "epoch-0002").iterdir()) == [
        "state.json", "state.safetensors"
    ]  # fmt: skip
    assert [m.epoch for m in state.history] == [1, 2]
    assert {"rng.torch", "rng.loader", "rng.numpy"} <= set(state.tensors)
    assert any(k.startswith("model.") for k in state.tensors)
    assert any(k.startswith("optim.") for k in state.tensors)
    # Saved again and read back: the same tensors and the same JSON.
    again = Checkpointer(tmp_path / "copy")
    again.save(state)
    copy = again.latest()
    assert copy is not None and copy.meta == state.meta and copy.history == state.history
    assert copy.tensors.keys() == state.tensors.keys()
    assert all(torch.equal(copy.tensors[k], state.tensors[k]) for k in state.tensors)


def test_a_half_written_state_is_ignored(tmp_path):
    folder = tmp_path / "ckpt"
    (folder / "epoch-0005.partial").mkdir(parents=True)  # died while writing
    assert Checkpointer(folder).latest() is None


class DieAtStep(Callback):
    def __init__(self, epoch: int, step: int) -> None:
        self.epoch, self.step = epoch, step

    def on_step(self, epoch: int, step: int, steps_per_epoch: int) -> None:
        if (epoch, step) == (self.epoch, self.step):
            raise Killed


MID_EPOCH_CASES = [
    ("finetune", {}, {}),
    ("l2sp", {"alpha": 1.0, "freeze_stages": 2, "unfreeze_every": 1}, {"sampler": "balanced"}),
    ("lp_ft", {"probe_epochs": 2}, {"grad_clip_norm": 1.0}),
]


@pytest.mark.parametrize(("strategy", "options", "extra"), MID_EPOCH_CASES)
def test_a_run_resumed_mid_epoch_has_the_metrics_of_an_uninterrupted_one(
    tmp_path, data, strategy, options, extra
):
    # 96 training images at batch 16: 6 steps an epoch (val_fraction 0.2 of 120).
    hp = Hyperparameters(epochs=4, batch_size=16, learning_rate=3e-3, image_size=32, **extra)
    common = {"source": scratch(), "strategy": strategy, "data": data, "hparams": hp,
              "strategy_options": options, "device": "cpu"}  # fmt: skip
    whole = run_training(**common)

    folder = tmp_path / "ckpt"
    # Interval 0: a state after every step, so the latest is that of step 3 of epoch 4.
    with pytest.raises(Killed):
        run_training(**common, checkpoint_dir=folder, checkpoint_interval_s=0,
                     callbacks=[DieAtStep(4, 4)])  # fmt: skip
    saved = Checkpointer(folder).latest()
    assert saved is not None and (saved.epoch, saved.step) == (3, 3)
    assert [p.name for p in folder.iterdir()] == ["epoch-0003-0000003"]
    assert Checkpointer(folder).latest_position() == (3, 3)
    resumed = run_training(**common, checkpoint_dir=folder, checkpoint_interval_s=0)

    assert comparable(resumed.history) == comparable(whole.history)
    assert resumed.evaluation == whole.evaluation
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_without_an_interval_states_are_saved_at_epoch_ends_only(tmp_path, data):
    folder = tmp_path / "ckpt"
    hp = Hyperparameters(epochs=3, batch_size=16, image_size=32)
    with pytest.raises(Killed):
        run_training(source=scratch(), strategy="finetune", data=data, hparams=hp,
                     device="cpu", checkpoint_dir=folder, callbacks=[DieAtStep(2, 5)])  # fmt: skip
    assert [p.name for p in folder.iterdir()] == ["epoch-0001"]


class Indexed(torch.utils.data.Dataset):
    """Each item is its own index: the order a loader yields is visible."""

    def __len__(self) -> int:
        return 40

    def __getitem__(self, index: int):  # type: ignore[no-untyped-def]
        return torch.tensor(index), 0


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_resumed_epoch_draws_the_order_of_an_uninterrupted_one(num_workers):
    # Persistent loader workers draw their base seed once, from the loader's generator: when
    # that generator was also the sampler's, a resumed process (a new iterator, one more draw)
    # got another order from its second epoch on, and a mid-epoch resume skipped other images.
    from app.engine.data import create_train_loader
    from app.engine.trainer import LoaderBatches

    def batches() -> LoaderBatches:
        loader = create_train_loader(
            Indexed(), 8, device=torch.device("cpu"), seed=0, num_workers=num_workers
        )
        return LoaderBatches(loader)

    whole = batches()
    orders, starts = [], []
    for _ in range(3):
        starts.append(whole.generators()["loader"].get_state())
        orders.append([int(i) for images, _ in whole.epoch() for i in images])
    assert orders[1] != orders[2]

    resumed = batches()  # a new process: epoch 3, after 2 of its 5 batches
    resumed.generators()["loader"].set_state(starts[2])
    rest = [int(i) for images, _ in resumed.epoch(skip=2) for i in images]
    assert rest == orders[2][16:]
