"""What a strategy receives and returns. Strategies are frozen dataclasses whose fields are their
options, so the option names a job may pass are exactly ``dataclasses.fields(cls)``."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from app.engine.callbacks import CallbackList
from app.engine.data import Sample
from app.engine.loop import EvalStats, Runtime
from app.engine.specs import EpochMetrics, Hyperparameters
from app.engine.state import Checkpointer, TrainState


@dataclass(frozen=True)
class FitContext:
    model: nn.Module  # already on runtime.device, classifier sized for class_names
    class_names: tuple[str, ...]
    train: tuple[Sample, ...]
    val: tuple[Sample, ...]
    preprocessing: dict[str, Any]  # eval data config, input size applied
    hparams: Hyperparameters
    runtime: Runtime
    callbacks: CallbackList
    num_workers: int
    # Where each finished epoch's TrainState goes (None: not saved), and the one to resume from.
    checkpointer: Checkpointer | None = None
    resume: TrainState | None = None
    # Inside an epoch, the state is also saved once this many seconds have passed since the last
    # save (None: at epoch ends only).
    checkpoint_interval_s: float | None = None
    # Target-domain images without labels (DatasetSplits.target), for domain adaptation.
    target: tuple[str, ...] = ()
    # Labelled target-domain images (DatasetSplits.target_labeled): dann's semi-supervised loss.
    target_labeled: tuple[Sample, ...] = ()
    # A labelled set scored after every epoch and with the final model (DatasetSplits.evaluation;
    # empty: none). Scoring it never changes what is trained: eval mode, no gradient, and a
    # loader with a generator of its own (a plain DataLoader draws its seed from torch's RNG).
    evaluation: tuple[Sample, ...] = ()
    # What the run chose where the job left it open (augmentation, the epoch it kept): reported
    # in TrainResult.choices. Mutable on purpose; phases write into it.
    choices: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FitOutcome:
    history: list[EpochMetrics]
    # Validation predictions of the final model, so the job's Evaluation costs no extra pass.
    val_predictions: torch.Tensor
    val_targets: torch.Tensor
    # The trained model when it is not ctx.model itself (a linear_probe with an MLP head or
    # stage features wraps it), and the entries its card's architecture needs to rebuild it.
    model: nn.Module | None = None
    architecture: dict[str, Any] = field(default_factory=dict)
    # The final model's predictions on ctx.evaluation (None when the job has no eval set).
    evaluation: EvalStats | None = None


class Strategy(abc.ABC):
    """A way to adapt a backbone to a new task. Subclasses are ``@dataclass(frozen=True)``."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # one line for users, given to register_strategy
    # Whether the strategy trains with target-domain images (DatasetSplits.target).
    needs_target: ClassVar[bool] = False
    # Whether it trains on labelled target images (DatasetSplits.target_labeled): dann only.
    uses_target_labeled: ClassVar[bool] = False

    def check(self, hparams: Hyperparameters) -> None:
        """Checks of the options against the job's hyperparameters that need no model or data:
        ``run_training`` runs them before building anything, and the API before accepting a
        job. Raise EngineError with a user-facing message. By default there is nothing to
        check."""
        return None

    @abc.abstractmethod
    def fit(self, ctx: FitContext) -> FitOutcome:
        """Train ``ctx.model`` in place and report every epoch through ``ctx.callbacks``."""
