"""Fine-tuning: train the network (all of it, or what the freezing options leave), optionally with
a penalty towards zero (finetune) or towards the source weights (l2sp, l1sp).

The penalties are proximal steps after each optimizer step; app.engine.regularization says why
and what they cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from app.engine.errors import EngineError
from app.engine.regularization import PenaltyTerm, source_term, zero_term
from app.engine.specs import EpochMetrics, Hyperparameters
from app.engine.strategies._base import FitContext, FitOutcome
from app.engine.strategies._finetuning import (
    FinetuneOptions,
    FinetuneTask,
    check_non_negative,
)
from app.engine.strategies._registry import register_strategy
from app.engine.trainer import fit_phase

PENALTIES = ("none", "l1", "l2")
DEFAULT_PENALTY_LAMBDA = 0.01  # the strength of AdamW's default weight decay


MAX_ORTHOGONAL = 1.0


@dataclass(frozen=True)
class _Finetuning(FinetuneOptions):
    """finetune, l2sp and l1sp: one fine-tuning phase, with their penalties."""

    # Orthogonal regularisation (the article's section 3.1): orthogonal * sum over the trained
    # backbone's weight matrices W (convolutions as out x in*k*k) of ||W W^T - I||_F^2 on the
    # smaller Gram side, applied as a decoupled gradient step after each optimizer step
    # (app.engine.regularization.OrthogonalPenalty). The new classifier is left out: its scale is
    # the logits' confidence. 0: off.
    orthogonal: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_non_negative("orthogonal", self.orthogonal, MAX_ORTHOGONAL)

    def orthogonal_strength(self) -> float:
        return float(self.orthogonal)

    def fit(self, ctx: FitContext) -> FitOutcome:
        hp, history = ctx.hparams, list[EpochMetrics]()
        task = FinetuneTask(ctx, self, phase="train")
        ctx.callbacks.on_train_start(hp.epochs, len(task.batches))
        result = fit_phase(ctx, task, first_epoch=1, epochs=hp.epochs, history=history)
        val = result.val
        return FitOutcome(history, val.predictions, val.targets, evaluation=result.eval)


@register_strategy(
    "finetune",
    summary=(
        "parameter-based transfer: start from the source weights and train all of them, or "
        "the part the freezing options leave"
    ),
)
@dataclass(frozen=True)
class Finetune(_Finetuning):
    # A plain penalty towards zero on the trained weights (tensors of 2+ dimensions, as weight
    # decay), for comparison with l2sp/l1sp: "l2" is lambda/2 * ||w||^2, "l1" lambda * ||w||_1.
    # Both are proximal steps like l2sp's, so "l2" is decoupled weight decay by another name.
    penalty: str = "none"  # "none" | "l1" | "l2"
    penalty_lambda: float | None = None  # default 0.01 when penalty is set

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.penalty not in PENALTIES:
            raise EngineError(
                f"penalty must be one of {', '.join(PENALTIES)} (got {self.penalty!r})."
            )
        if self.penalty_lambda is not None:
            check_non_negative("penalty_lambda", self.penalty_lambda)
            if self.penalty == "none":
                raise EngineError(
                    "penalty_lambda is set but penalty is 'none'; choose penalty 'l1' or 'l2'."
                )

    def penalty_terms(
        self, backbone: Sequence[nn.Parameter], head: Sequence[nn.Parameter]
    ) -> list[PenaltyTerm]:
        if self.penalty == "none":
            return []
        strength = DEFAULT_PENALTY_LAMBDA if self.penalty_lambda is None else self.penalty_lambda
        weights = [p for p in (*backbone, *head) if p.ndim > 1]
        return [zero_term(weights, float(strength), 1 if self.penalty == "l1" else 2)]


@dataclass(frozen=True)
class _StartingPoint(_Finetuning):
    """Li, Grandvalet & Davoine, "Explicit inductive bias for transfer learning with convolutional
    networks" (ICML 2018): ``alpha * Omega(w_S - w0_S) + beta/2 * ||w_head||^2``, w0 the weights
    at the start of the job (the pretrained or source model's), snapshotted once."""

    # Pull of every transferred (non-classifier) parameter towards its source value; biases and
    # normalisation parameters included, as nothing pulls them to zero. The paper's alpha/2 *
    # ||w - w0||^2 for l2sp, alpha * ||w - w0||_1 for l1sp.
    alpha: float = 0.1
    # beta/2 * ||w||^2 on the new classifier's weights (L2 towards zero, both strategies).
    beta: float = 0.01

    p: ClassVar[int] = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        check_non_negative("alpha", self.alpha)
        check_non_negative("beta", self.beta)

    def optimizer_weight_decay(self, hparams: Hyperparameters) -> float:
        # alpha and beta replace weight decay: the optimizer's own decay would pull the
        # transferred weights towards zero while alpha pulls them towards the source.
        return 0.0

    def check(self, hparams: Hyperparameters) -> None:
        super().check(hparams)
        if hparams.weight_decay > 0:
            raise EngineError(
                f"{self.name} regularises with alpha (towards the source weights) and beta (the "
                "new head, towards zero) instead of weight decay, which would pull the "
                "transferred weights towards zero; set weight_decay to 0 and tune alpha/beta."
            )

    def penalty_terms(
        self, backbone: Sequence[nn.Parameter], head: Sequence[nn.Parameter]
    ) -> list[PenaltyTerm]:
        terms = [zero_term([w for w in head if w.ndim > 1], float(self.beta), 2)]
        if self.alpha > 0:  # the snapshot costs a copy of the backbone; alpha 0 needs none
            terms.append(source_term(backbone, float(self.alpha), self.p))
        return terms


@register_strategy(
    "l2sp",
    summary=(
        "fine-tuning with alpha/2 ||theta - theta_s||^2 toward the source weights and beta/2 "
        "||theta_head||^2 on the new head (Li et al. 2018)"
    ),
)
@dataclass(frozen=True)
class L2SP(_StartingPoint):
    p: ClassVar[int] = 2


@register_strategy(
    "l1sp",
    summary=(
        "fine-tuning with alpha ||theta - theta_s||_1 toward the source weights (soft-"
        "thresholded: many weights stay the source's)"
    ),
)
@dataclass(frozen=True)
class L1SP(_StartingPoint):
    """Soft-thresholds differences to the source: many weights stay exactly the source's.

    The threshold per step is lr * alpha. Adam and AdamW move a weight by about lr per step
    whatever its gradient, so under them alpha >= 1 holds nearly every weight at the source
    (alpha=1 kept >99.99% of the weights that fine-tuning moves exactly there, test_resnet on
    digits) and the useful range is roughly 0.01-0.3; under SGD it is the textbook proximal
    gradient step of alpha * ||w - w0||_1.
    """

    p: ClassVar[int] = 1
