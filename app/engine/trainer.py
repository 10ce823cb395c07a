"""One trainer for every strategy: a strategy says what differs, the trainer drives the rest.

A strategy builds a ``TrainingTask`` per phase: the modules it trains, their optimizer, the
batches of an epoch, and ``step(batch) -> StepOutput`` (the loss of one batch). ``fit_phase``
drives everything around it, the same way for all of them: the epochs and their learning-rate
schedule, backward, gradient clipping and the optimizer step, early stopping, per-epoch metrics,
progress callbacks and cancellation, and the training state (``app.engine.state``), saved at every
epoch end and, inside long epochs, at most every ``FitContext.checkpoint_interval_s``, and
resumed from exactly where it was saved.

This is timm's ``TrainingTask`` idea (the loss lives in the task, the loop is generic): a method
that needs another step (a domain loss over two datasets, per-sample weights, unlabeled images)
writes a task, not a loop.

NOTE the step loop does only what a plain PyTorch loop does plus a callback call and, when the
phase is saved, one clock read: bench/speed.py holds training to >= 0.9x a textbook loop and the
linear probe's cached-feature path to its earlier time. The loss is summed on the device and
read once per epoch (a per-step ``.item()`` would sync the CUDA queue every step).
"""

from __future__ import annotations

import abc
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader

from app.engine.data import ResumableSampler
from app.engine.early_stopping import EarlyStopping
from app.engine.errors import EngineError
from app.engine.loop import EvalStats, TrainStats, check_finite
from app.engine.optim import lr_factor, set_epoch_lr
from app.engine.specs import EpochMetrics
from app.engine.state import (
    TrainState,
    capture_rng,
    load_module,
    load_optimizer,
    module_tensors,
    optimizer_tensors,
    restore_rng,
)


@dataclass(frozen=True)
class StepOutput:
    loss: torch.Tensor  # the batch's mean loss, with its graph
    size: int  # samples in the batch: its weight in the epoch's mean loss
    # Further per-epoch figures, each the batch's mean (detached) for this step: the trainer
    # averages them over the epoch's samples like the loss, into EpochMetrics.extra.
    extra: Mapping[str, torch.Tensor] = field(default_factory=dict)


class Batches(Protocol):
    """The training batches of one phase, epoch after epoch."""

    def generators(self) -> dict[str, torch.Generator]:
        """The generators that order an epoch, by name (saved with the state)."""
        ...

    def __len__(self) -> int: ...

    def epoch(self, skip: int = 0) -> Iterator[Any]:
        """The batches of the next epoch, after its first ``skip`` (a resumed epoch)."""
        ...


class LoaderBatches:
    """A DataLoader's batches. Its sampler must be a ``ResumableSampler`` to resume mid-epoch
    (``create_train_loader`` makes it so)."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    def generators(self) -> dict[str, torch.Generator]:
        sampler = self.loader.sampler
        return {"loader": sampler.generator} if isinstance(sampler, ResumableSampler) else {}

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, skip: int = 0) -> Iterator[Any]:
        if skip:
            sampler = self.loader.sampler
            if not isinstance(sampler, ResumableSampler):
                raise EngineError("internal: this loader cannot resume mid-epoch")
            sampler.skip = skip * (self.loader.batch_size or 1)
        return iter(self.loader)


class TrainingTask(abc.ABC):
    """What one phase of a strategy trains, and how one step computes its loss.

    Subclasses set ``phase``, ``optimizer``, ``batches`` and ``kept`` (the module whose best
    epoch early stopping keeps) in ``__init__`` and implement ``step`` and ``evaluate``.
    """

    phase: str
    optimizer: torch.optim.Optimizer
    batches: Batches
    kept: nn.Module
    # Whether the phase's state is saved. A probe's head phase is not: its epochs cost about a
    # second in all, and its cached features are recomputed on resume anyway.
    saved: bool = True
    # Where training is, from 0 at the first step of the phase to 1 after its last: the trainer
    # sets it before each step, for schedules inside the step (DANN's lambda).
    progress: float = 0.0

    def modules(self) -> Mapping[str, nn.Module]:
        """The modules whose weights the training state holds, by name (extra modules such as a
        domain discriminator go here)."""
        return {"model": self.kept}

    def start_epoch(self, index: int) -> None:
        """Before epoch ``index`` (1-based within the phase): train/eval modes, freezing."""
        self.kept.train()

    @abc.abstractmethod
    def step(self, batch: Any) -> StepOutput:
        """The forward pass and loss of one batch (the trainer does backward and the step)."""

    def after_step(self) -> None:
        """After each optimizer step (a penalty's proximal step)."""
        return None

    @abc.abstractmethod
    def evaluate(self) -> EvalStats:
        """Validation of the modules as they are now, leaving them in eval mode."""

    def score_eval(self) -> EvalStats | None:
        """The job's eval set (FitContext.evaluation) scored by the modules as they are now,
        leaving them in eval mode; None when there is none. It must draw from no RNG that
        training uses, so that a resumed run still equals an uninterrupted one."""
        return None

    def after_load(self) -> None:
        """After a saved state replaced the modules' and the optimizer's."""
        return None


@dataclass(frozen=True)
class PhaseResult:
    val: EvalStats  # validation of what the phase leaves (the kept epoch's, with early stopping)
    epochs_run: int
    kept_epoch: int  # the epoch whose weights it leaves
    eval: EvalStats | None = None  # the eval set scored by what the phase leaves (None: no set)


@dataclass
class _EpochProgress:
    """A partly trained epoch: what a mid-epoch state holds to continue it exactly."""

    steps: int = 0
    loss_sum: torch.Tensor | None = None
    extra_sums: dict[str, torch.Tensor] = field(default_factory=dict)
    seen: int = 0
    seconds: float = 0.0
    order_rng: dict[str, torch.Tensor] = field(default_factory=dict)  # generators at its start


class _Saver:
    """Writes the phase's state: at every epoch end, and after a step once ``interval_s`` has
    passed since the last write (None: epoch ends only)."""

    def __init__(self, checkpointer: Any, interval_s: float | None) -> None:
        self.checkpointer, self.interval_s = checkpointer, interval_s
        self.last = time.monotonic()

    def due(self) -> bool:
        return self.interval_s is not None and time.monotonic() - self.last >= self.interval_s

    def save(self, state: TrainState) -> None:
        self.checkpointer.save(state)
        self.last = time.monotonic()


class Trainer:
    """Runs one ``TrainingTask`` for a phase; see ``fit_phase``."""

    def __init__(self, ctx: Any, task: TrainingTask, *, first_epoch: int, epochs: int) -> None:
        self.ctx, self.task = ctx, task
        self.hp, self.callbacks = ctx.hparams, ctx.callbacks
        self.first_epoch, self.epochs = first_epoch, epochs
        self.stopper = EarlyStopping(task.kept, ctx.hparams)
        self.saver = (
            _Saver(ctx.checkpointer, ctx.checkpoint_interval_s)
            if task.saved and ctx.checkpointer is not None
            else None
        )
        self.history: list[EpochMetrics] = []

    def run(self, history: list[EpochMetrics]) -> PhaseResult:
        self.history = history
        first_index, partial = self._resume()
        val = None
        scored: EvalStats | None = None  # the eval set, scored after the last epoch run here
        for index in range(first_index, self.epochs + 1):
            epoch = self.first_epoch + index - 1
            start = time.perf_counter()
            self.task.start_epoch(index)
            lr = set_epoch_lr(self.task.optimizer, lr_factor(index, self.epochs, self.hp))
            stats, extra = self._train_epoch(index, epoch, partial)
            seconds = time.perf_counter() - start + (partial.seconds if partial else 0.0)
            partial = None
            val = self.task.evaluate()
            scored = self.task.score_eval()
            metrics = EpochMetrics(
                epoch=epoch,
                phase=self.task.phase,
                train_loss=stats.loss,
                val_loss=val.loss,
                val_accuracy=val.accuracy,
                learning_rate=lr,
                images_per_second=stats.images / stats.seconds if stats.seconds > 0 else 0.0,
                seconds=seconds,
                extra=extra,
                eval_loss=scored.loss if scored is not None else None,
                eval_accuracy=scored.accuracy if scored is not None else None,
            )
            history.append(metrics)
            self.callbacks.on_epoch_end(metrics)
            stop = self.stopper.update(metrics, val)
            if self.saver is not None and not stop and index < self.epochs:
                self.saver.save(self._state(epoch))
            if stop:
                break
        if val is None:  # resumed after the phase's last epoch: evaluate what the state holds
            val = self.task.evaluate()
        kept = self.stopper.restore(val)
        last = history[-1].epoch
        kept_epoch = self.stopper.best_epoch or last
        if scored is None or kept_epoch != last:
            # Another epoch's weights were restored, or none ran in this process: score what
            # the phase leaves (one pass over the eval set; None without one).
            scored = self.task.score_eval()
        return PhaseResult(
            val=kept,
            epochs_run=last - self.first_epoch + 1,
            kept_epoch=kept_epoch,
            eval=scored,
        )

    # --- one epoch ---------------------------------------------------------------------------

    def _train_epoch(
        self, index: int, epoch: int, partial: _EpochProgress | None
    ) -> tuple[TrainStats, dict[str, float]]:
        task, batches, callbacks = self.task, self.task.batches, self.callbacks
        optimizer = task.optimizer
        device = self.ctx.runtime.device
        clip = self.hp.grad_clip_norm
        # Unfreezing changes what trains, so the clipped set is read per epoch.
        clip_params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
        saver = self.saver
        generators = batches.generators()
        if partial is None:
            partial = _EpochProgress(
                loss_sum=torch.zeros((), device=device),
                order_rng={name: g.get_state() for name, g in generators.items()},
            )
        else:
            # The global RNGs are where the step left them; the order is drawn anew from the
            # generators as they were when the epoch began, and the trained batches are skipped.
            for name, g in generators.items():
                g.set_state(partial.order_rng[name])
        loss_sum, sums = partial.loss_sum, partial.extra_sums
        assert loss_sum is not None
        seen, done = partial.seen, partial.steps
        steps = len(batches)
        total_steps = steps * self.epochs
        start = time.perf_counter()
        try:
            for step, batch in enumerate(batches.epoch(skip=done), done + 1):
                task.progress = ((index - 1) * steps + step - 1) / total_steps
                out = task.step(batch)
                optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                if clip is not None:
                    # Scales by min(1, max_norm / norm) on the device: no host sync.
                    nn.utils.clip_grad_norm_(clip_params, clip, foreach=True)
                optimizer.step()
                task.after_step()
                loss_sum.add_(out.loss.detach(), alpha=out.size)
                for name, value in out.extra.items():
                    if name not in sums:
                        sums[name] = torch.zeros((), device=device)
                    sums[name].add_(value, alpha=out.size)
                seen += out.size
                callbacks.step(epoch, step, steps)
                if saver is not None and step < steps and saver.due():
                    progress = _EpochProgress(
                        steps=step,
                        loss_sum=loss_sum,
                        extra_sums=sums,
                        seen=seen,
                        seconds=partial.seconds + time.perf_counter() - start,
                        order_rng=partial.order_rng,
                    )
                    saver.save(self._state(epoch - 1, progress))
        except ValueError as exc:
            if "Expected more than 1 value per channel" in str(exc):
                raise EngineError(
                    "A training batch held a single image, which BatchNorm cannot normalise. "
                    "Use batch_size >= 2."
                ) from exc
            raise
        mean_loss = loss_sum.item() / max(seen, 1)  # the epoch's one host/device sync
        check_finite(mean_loss, epoch)
        extra = {name: value.item() / max(seen, 1) for name, value in sums.items()}
        stats = TrainStats(
            loss=mean_loss, images=seen, seconds=partial.seconds + time.perf_counter() - start
        )
        return stats, extra

    # --- training state ----------------------------------------------------------------------

    def _state(self, epoch: int, progress: _EpochProgress | None = None) -> TrainState:
        """Everything a resumed phase needs after ``epoch`` (and ``progress`` into the next).
        See app.engine.state for what is left out, and why."""
        task = self.task
        tensors: dict[str, torch.Tensor] = {}
        for name, module in task.modules().items():
            tensors |= module_tensors(name, module.state_dict())
        optim_tensors, optim_meta = optimizer_tensors(task.optimizer)
        best_tensors, best_meta = self.stopper.save()
        rng_tensors, rng_meta = capture_rng(task.batches.generators())
        tensors |= optim_tensors | best_tensors | rng_tensors
        meta: dict[str, Any] = {
            "optimizer": optim_meta,
            "early_stopping": best_meta,
            "rng": rng_meta,
        }
        step = 0
        if progress is not None:
            step = progress.steps
            assert progress.loss_sum is not None
            tensors["epoch.loss_sum"] = progress.loss_sum
            tensors |= {f"epoch.sum.{k}": v for k, v in progress.extra_sums.items()}
            tensors |= {f"epoch.order_rng.{k}": v for k, v in progress.order_rng.items()}
            meta["epoch_progress"] = {"seen": progress.seen, "seconds": progress.seconds}
        return TrainState(
            phase=task.phase,
            epoch=epoch,
            step=step,
            history=list(self.history),
            tensors=tensors,
            meta=meta,
        )

    def _resume(self) -> tuple[int, _EpochProgress | None]:
        """(first epoch index to run, the partly trained epoch) from the context's state, when
        it belongs to this phase; (1, None) otherwise."""
        state = self.ctx.resume
        if self.saver is None or state is None or state.phase != self.task.phase:
            return 1, None
        if state.epoch < self.first_epoch and state.step == 0:
            return 1, None
        # Everything was built as in the interrupted run (a penalty's anchors included); now its
        # saved state replaces what training changes.
        task = self.task
        for name, module in task.modules().items():
            load_module(module, name, state)
        load_optimizer(task.optimizer, state)
        task.after_load()
        self.stopper.load(state.tensors, state.meta["early_stopping"])
        restore_rng(state, task.batches.generators())
        self.history[:] = state.history
        partial = None
        if state.step:
            device = self.ctx.runtime.device
            done = state.meta["epoch_progress"]
            t = state.tensors
            partial = _EpochProgress(
                steps=state.step,
                loss_sum=t["epoch.loss_sum"].to(device),
                extra_sums={
                    k.removeprefix("epoch.sum."): v.to(device)
                    for k, v in t.items()
                    if k.startswith("epoch.sum.")
                },
                seen=int(done["seen"]),
                seconds=float(done["seconds"]),
                order_rng={
                    k.removeprefix("epoch.order_rng."): v
                    for k, v in t.items()
                    if k.startswith("epoch.order_rng.")
                },
            )
        return state.epoch - self.first_epoch + 2, partial


def fit_phase(
    ctx: Any,
    task: TrainingTask,
    *,
    first_epoch: int,
    epochs: int,
    history: list[EpochMetrics],
) -> PhaseResult:
    """Train ``task`` for ``epochs`` epochs numbered from ``first_epoch``; append each epoch's
    metrics to ``history`` and report them through ``ctx.callbacks``.

    Stops early and restores the best epoch when the job asks for it; saves the training state
    through ``ctx.checkpointer`` (when the task is ``saved``) and continues from ``ctx.resume``
    when that state belongs to this phase. ``ctx`` is the strategy's ``FitContext``.
    """
    result = Trainer(ctx, task, first_epoch=first_epoch, epochs=epochs).run(history)
    ctx.choices["kept_epoch"] = result.kept_epoch
    return result
