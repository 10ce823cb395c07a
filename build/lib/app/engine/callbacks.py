"""Progress hooks for the caller (the worker reports progress and polls for cancellation).

Hooks run on the training thread between optimizer steps, so they must be cheap: a callback that
writes to a database should rate-limit itself. ``should_stop`` is polled at every step boundary
(and between evaluation batches) so a cancelled job stops within one step.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.engine.errors import TrainingCancelled
from app.engine.specs import EpochMetrics


class Callback:
    """Base class: every hook is a no-op. Subclass and override what you need.

    ``on_step(epoch, step, steps_per_epoch)``: ``step`` is 1-based; it runs after each optimizer
    step. ``linear_probe`` and ``lp_ft`` also report their one feature-extraction pass as
    ``epoch == 0`` whose ``steps_per_epoch`` is the number of feature batches (train and
    validation together). ``on_train_start`` runs once per job; ``lp_ft``'s phases differ in
    steps per epoch, which every ``on_step`` call carries.
    """

    def on_train_start(self, total_epochs: int, steps_per_epoch: int) -> None:
        pass

    def on_step(self, epoch: int, step: int, steps_per_epoch: int) -> None:
        pass

    def on_epoch_end(self, metrics: EpochMetrics) -> None:
        pass

    def should_stop(self) -> bool:
        return False


class CallbackList:
    """Fans hooks out to the caller's callbacks and turns ``should_stop`` into an exception."""

    def __init__(self, callbacks: Sequence[Callback] = ()) -> None:
        self.callbacks = tuple(callbacks)

    def on_train_start(self, total_epochs: int, steps_per_epoch: int) -> None:
        for cb in self.callbacks:
            cb.on_train_start(total_epochs, steps_per_epoch)
        self.check_stop("before training started")

    def step(self, epoch: int, step: int, steps_per_epoch: int) -> None:
        """After a step: report it, then honour a stop request."""
        for cb in self.callbacks:
            cb.on_step(epoch, step, steps_per_epoch)
        self.check_stop(f"at epoch {epoch}, step {step}/{steps_per_epoch}")

    def on_epoch_end(self, metrics: EpochMetrics) -> None:
        for cb in self.callbacks:
            cb.on_epoch_end(metrics)

    def check_stop(self, where: str = "") -> None:
        for cb in self.callbacks:
            if cb.should_stop():
                raise TrainingCancelled(f"Training was cancelled {where}".rstrip() + ".")
