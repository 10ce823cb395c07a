"""LP-FT: a linear probe, then fine-tuning of the whole network from there, in one job.

Kumar et al., "Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution"
(ICLR 2022): fine-tuning with a random head sends large, arbitrary gradients into the pretrained
features while the head catches up. Probing first (cheap: cached features, as linear_probe) gives
the fine-tuning phase a head that already fits, so the features move less.

History: epochs 1..P are phase "probe", the rest "finetune", numbered continuously. The job's
schedule runs within each phase; early stopping ends a phase (the probe's best head is kept and
fine-tuning starts at the next epoch number; a stop in fine-tuning ends the job with its best
epoch restored).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.engine.errors import EngineError
from app.engine.specs import EpochMetrics, Hyperparameters, _is_int
from app.engine.strategies._base import FitContext, FitOutcome
from app.engine.strategies._finetuning import (
    FinetuneOptions,
    FinetuneTask,
    Freezing,
    check_fraction,
)
from app.engine.strategies._probing import (
    extract_all,
    fit_probe,
    head_steps_per_epoch,
    own_classifier,
    pre_logits,
)
from app.engine.strategies._registry import register_strategy
from app.engine.trainer import fit_phase


@register_strategy(
    "lp_ft",
    summary=(
        "a linear probe on cached features, then fine-tuning of the whole network from there,"
        " in one job (Kumar et al. 2022)"
    ),
)
@dataclass(frozen=True)
class LinearProbeThenFinetune(FinetuneOptions):
    # Epochs of the probe phase; the other epochs fine-tune. Default: half of them, rounded down.
    probe_epochs: int | None = None
    # The fine-tuning phase's learning rate is learning_rate * finetune_lr_mult: the head no
    # longer needs a large step, and the pretrained features should move gently.
    finetune_lr_mult: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        n = self.probe_epochs
        if n is not None and (not _is_int(n) or n < 1):
            raise EngineError(f"probe_epochs must be an integer >= 1 or null (got {n!r}).")
        check_fraction("finetune_lr_mult", self.finetune_lr_mult)

    def check(self, hparams: Hyperparameters) -> None:
        super().check(hparams)
        if hparams.epochs < 2:
            raise EngineError(
                "lp_ft needs epochs >= 2: at least one to probe and one to fine-tune."
            )
        probe_epochs = self._probe_epochs(hparams)
        if probe_epochs >= hparams.epochs:
            raise EngineError(
                f"probe_epochs={probe_epochs} leaves no fine-tuning epoch of "
                f"epochs={hparams.epochs}; use probe_epochs from 1 to {hparams.epochs - 1}."
            )

    def _probe_epochs(self, hparams: Hyperparameters) -> int:
        return self.probe_epochs if self.probe_epochs is not None else hparams.epochs // 2

    def fit(self, ctx: FitContext) -> FitOutcome:
        hp = ctx.hparams
        probe_epochs = self._probe_epochs(hp)  # check() ran in run_training
        model: Any = ctx.model
        classifier = own_classifier(model)
        Freezing(model, self).apply(1)  # bad freezing options fail now, not after the probe

        model.requires_grad_(False)
        model.eval()
        ctx.callbacks.on_train_start(hp.epochs, head_steps_per_epoch(ctx))
        feats = extract_all(ctx, pre_logits(model))
        classifier.requires_grad_(True)
        history: list[EpochMetrics] = []
        probe = fit_probe(
            ctx,
            classifier,
            feats,
            phase="probe",
            first_epoch=1,
            epochs=probe_epochs,
            history=history,
        )
        del feats  # the fine-tuning phase needs the memory more
        result = fit_phase(
            ctx,
            FinetuneTask(ctx, self, phase="finetune", lr_mult=self.finetune_lr_mult),
            first_epoch=probe.epochs_run + 1,
            epochs=hp.epochs - probe_epochs,
            history=history,
        )
        val = result.val
        return FitOutcome(history, val.predictions, val.targets, evaluation=result.eval)
