"""What finetune, l2sp, l1sp and lp_ft share: their options for freezing and learning rates, and
the fine-tuning phase (an epoch loop over images) that runs them."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from app.engine.data import (
    ImageDataset,
    create_eval_transform,
    create_loader,
    create_train_loader,
    create_train_transform,
)
from app.engine.early_stopping import EarlyStopping
from app.engine.errors import EngineError
from app.engine.loop import EvalStats, create_criterion, evaluate, train_one_epoch
from app.engine.models import batchnorm_layers, freeze_stages, match_parameters
from app.engine.optim import create_optimizer, create_param_groups, lr_factor, set_epoch_lr
from app.engine.regularization import PenaltyTerm, ProximalPenalty
from app.engine.specs import EpochMetrics, Hyperparameters, _is_int, _is_number
from app.engine.state import (
    TrainState,
    capture_rng,
    load_module,
    load_optimizer,
    module_tensors,
    optimizer_tensors,
    restore_rng,
)
from app.engine.strategies._base import FitContext, Strategy


def check_fraction(name: str, value: object, *, optional: bool = False) -> None:
    """A multiplier in (0, 1]: scales <= 1 keep the head's lr the largest, the one reported."""
    if optional and value is None:
        return
    if not _is_number(value) or not 0 < value <= 1:  # type: ignore[operator]
        null = " or null" if optional else ""
        raise EngineError(f"{name} must be a number in (0, 1]{null} (got {value!r}).")


# The proximal steps are stable for any strength; beyond this one the weights are pinned to
# their anchor and the number is a typo, not a choice.
MAX_PENALTY = 1e6
MAX_FREEZE_PATTERNS = 64


def check_non_negative(name: str, value: object, maximum: float = MAX_PENALTY) -> None:
    if not _is_number(value) or not 0 <= value <= maximum:  # type: ignore[operator]
        raise EngineError(f"{name} must be a number from 0 to {maximum:g} (got {value!r}).")


@dataclass(frozen=True)
class FinetuneOptions(Strategy):
    """Options of every strategy that trains the backbone (not registered itself)."""

    # Freeze every parameter up to the N-th entry of timm's feature_info (on ResNets the first
    # entry is the stem: 3 = stem, layer1, layer2; on ViTs, patch embedding and blocks 0..N-1):
    # early features are generic,
    # and freezing them trains faster and overfits small datasets less.
    freeze_stages: int = 0
    # Also freeze parameters whose names match any of these fnmatch patterns ("layer1.*",
    # "*.bn*", "blocks.[0-3].*"), for the whole job. A pattern that matches nothing is an error.
    freeze_patterns: tuple[str, ...] = ()
    # Keep every BatchNorm layer in eval mode: running statistics stay the source's (small
    # batches give noisy statistics); their scale and shift still train unless frozen. BatchNorm
    # layers whose parameters are all frozen (stages, patterns) are in eval mode regardless.
    freeze_bn: bool = False
    # Gradual unfreezing: start with freeze_stages frozen and unfreeze one stage, deepest first,
    # every k epochs: epoch e (1-based, within the fine-tuning phase) trains with
    # max(0, freeze_stages - (e - 1) // k) stages frozen, so stage freeze_stages trains from
    # epoch k + 1, and the stem with stage 1 from epoch freeze_stages * k + 1.
    unfreeze_every: int | None = None
    # Learning-rate multiplier of every parameter but the classifier's (tllib uses 0.1).
    backbone_lr_mult: float = 1.0
    # Layer-wise lr decay, as BEiT and timm: the head keeps the lr, each layer below gets
    # layer_decay times its upper neighbour's (timm's group_matcher defines the layers).
    # Multiplies with backbone_lr_mult.
    layer_decay: float | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.freeze_stages) or not 0 <= self.freeze_stages <= 100:
            raise EngineError(
                f"freeze_stages must be an integer from 0 to 100 (got {self.freeze_stages!r})."
            )
        patterns = self.freeze_patterns
        if isinstance(patterns, str) or not isinstance(patterns, (list, tuple)):
            raise EngineError(
                f"freeze_patterns must be a list of name patterns such as ['layer1.*'] "
                f"(got {patterns!r})."
            )
        if not all(isinstance(p, str) and 0 < len(p) <= 200 for p in patterns):
            raise EngineError(
                f"freeze_patterns must hold strings of 1-200 characters (got {patterns!r})."
            )
        if len(patterns) > MAX_FREEZE_PATTERNS:
            raise EngineError(
                f"freeze_patterns takes at most {MAX_FREEZE_PATTERNS} patterns "
                f"(got {len(patterns)})."
            )
        object.__setattr__(self, "freeze_patterns", tuple(patterns))  # JSON gives lists
        if not isinstance(self.freeze_bn, bool):
            raise EngineError(f"freeze_bn must be true or false (got {self.freeze_bn!r}).")
        every = self.unfreeze_every
        if every is not None:
            if not _is_int(every) or not 1 <= every <= 1000:
                raise EngineError(
                    f"unfreeze_every must be an integer from 1 to 1000 or null (got {every!r})."
                )
            if self.freeze_stages < 1:
                raise EngineError(
                    "unfreeze_every needs freeze_stages >= 1: it unfreezes the frozen stages one "
                    "at a time."
                )
        check_fraction("backbone_lr_mult", self.backbone_lr_mult)
        check_fraction("layer_decay", self.layer_decay, optional=True)

    # --- what subclasses change ---------------------------------------------------------------

    def optimizer_weight_decay(self, hparams: Hyperparameters) -> float:
        return hparams.weight_decay

    def penalty_terms(
        self, backbone: Sequence[nn.Parameter], head: Sequence[nn.Parameter]
    ) -> list[PenaltyTerm]:
        """Penalties over the parameters this phase trains (snapshot taken now, before step 1)."""
        return []


class Freezing:
    """Which parameters train in each epoch of a phase, and which modules run in eval mode."""

    def __init__(self, model: nn.Module, opts: FinetuneOptions) -> None:
        self.model, self.opts = model, opts
        self.always_frozen = {id(p) for p in match_parameters(model, opts.freeze_patterns)}
        self.stages: int | None = None  # frozen now; None before the first apply
        self.eval_modules: list[nn.Module] = []

    def stages_at(self, epoch: int) -> int:
        every = self.opts.unfreeze_every
        if every is None:
            return self.opts.freeze_stages
        return max(0, self.opts.freeze_stages - (epoch - 1) // every)

    def apply(self, epoch: int) -> bool:
        """Set requires_grad for ``epoch`` of the phase; True when it changed."""
        stages = self.stages_at(epoch)
        if stages == self.stages:
            return False
        for param in self.model.parameters():
            param.requires_grad_(id(param) not in self.always_frozen)
        frozen = freeze_stages(self.model, stages)
        self.eval_modules = frozen + batchnorm_layers(self.model, all_layers=self.opts.freeze_bn)
        self.stages = stages
        return True

    def trained_parameters(self) -> list[nn.Parameter]:
        """Everything the phase will train at some epoch (now frozen or not)."""
        if self.opts.unfreeze_every is not None:
            return [p for p in self.model.parameters() if id(p) not in self.always_frozen]
        return [p for p in self.model.parameters() if p.requires_grad]


def run_finetune_phase(
    ctx: FitContext,
    opts: FinetuneOptions,
    *,
    phase: str,
    first_epoch: int,
    epochs: int,
    history: list[EpochMetrics],
    lr_mult: float = 1.0,
    announce: bool = True,
) -> EvalStats:
    """Train ``ctx.model`` on images for ``epochs`` epochs numbered from ``first_epoch``.

    Appends to ``history`` and reports each epoch; stops early and restores the best epoch when
    the job asks for it. Returns the validation result of the model it leaves in ``ctx.model``.
    """
    hp, runtime, model = ctx.hparams, ctx.runtime, ctx.model
    freezing = Freezing(model, opts)
    freezing.apply(1)
    timm_model: Any = model  # get_classifier is timm API
    head_ids = {id(p) for p in timm_model.get_classifier().parameters()}
    trained = freezing.trained_parameters()
    groups = create_param_groups(
        model,
        trained,
        head=[p for p in trained if id(p) in head_ids],
        weight_decay=opts.optimizer_weight_decay(hp),
        backbone_lr_mult=opts.backbone_lr_mult,
        layer_decay=opts.layer_decay,
    )
    optimizer = create_optimizer(groups, hp, lr_mult=lr_mult)
    penalty = ProximalPenalty(
        opts.penalty_terms(
            [p for p in trained if id(p) not in head_ids],
            [p for p in trained if id(p) in head_ids],
        ),
        optimizer,
    )

    train_loader = create_train_loader(
        ImageDataset(ctx.train, create_train_transform(ctx.preprocessing, hp.augmentation)),
        hp.batch_size,
        device=runtime.device,
        seed=hp.seed,
        num_workers=ctx.num_workers,
        sampler=hp.sampler,
    )
    val_loader = create_loader(
        ImageDataset(ctx.val, create_eval_transform(ctx.preprocessing)),
        hp.batch_size,
        device=runtime.device,
        num_workers=ctx.num_workers,
        persistent_workers=True,  # evaluated every epoch
    )
    criterion = create_criterion(
        hp, [label for _, label in ctx.train], len(ctx.class_names), runtime.device
    )
    stopper = EarlyStopping(model, hp)
    generator = train_loader.generator
    first_index = 1
    resume = ctx.resume
    if resume is not None and resume.phase == phase and resume.epoch >= first_epoch:
        # Everything above was built as in the interrupted run (the penalty's anchors included);
        # now its state at the end of its last saved epoch replaces what training changes.
        load_module(model, "model", resume)
        load_optimizer(optimizer, resume)
        penalty.refresh()  # load_state_dict made new param-group dicts: re-read them (their lr)
        stopper.load(resume.tensors, resume.meta["early_stopping"])
        restore_rng(resume, generator)
        history[:] = resume.history
        first_index = resume.epoch - first_epoch + 2

    if announce:
        ctx.callbacks.on_train_start(hp.epochs, len(train_loader))
    val = None
    for index in range(first_index, epochs + 1):
        epoch = first_epoch + index - 1
        start = time.perf_counter()
        if freezing.apply(index):
            penalty.refresh()
        lr = set_epoch_lr(optimizer, lr_factor(index, epochs, hp))
        stats = train_one_epoch(
            model,
            train_loader,
            optimizer,
            epoch=epoch,
            runtime=runtime,
            callbacks=ctx.callbacks,
            frozen=freezing.eval_modules,
            criterion=criterion,
            grad_clip_norm=hp.grad_clip_norm,
            after_step=penalty.step if penalty else None,
        )
        val = evaluate(model, val_loader, runtime=runtime, callbacks=ctx.callbacks)
        metrics = EpochMetrics(
            epoch=epoch,
            phase=phase,
            train_loss=stats.loss,
            val_loss=val.loss,
            val_accuracy=val.accuracy,
            learning_rate=lr,
            images_per_second=stats.images / stats.seconds if stats.seconds > 0 else 0.0,
            seconds=time.perf_counter() - start,
        )
        history.append(metrics)
        ctx.callbacks.on_epoch_end(metrics)
        stop = stopper.update(metrics, val)
        if ctx.checkpointer is not None and not stop and index < epochs:
            ctx.checkpointer.save(
                _state(phase, epoch, history, model, optimizer, stopper, generator)
            )
        if stop:
            break
    if val is None:  # resumed after its last epoch: evaluate what the checkpoint holds
        val = evaluate(model, val_loader, runtime=runtime, callbacks=ctx.callbacks)
    model.eval()
    kept = stopper.restore(val)
    ctx.choices["kept_epoch"] = stopper.best_epoch or history[-1].epoch
    return kept


def _state(
    phase: str,
    epoch: int,
    history: list[EpochMetrics],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    stopper: EarlyStopping,
    generator: torch.Generator | None,
) -> TrainState:
    """Everything a resumed phase needs (see app.engine.state for what is left out, and why)."""
    optim_tensors, optim_meta = optimizer_tensors(optimizer)
    best_tensors, best_meta = stopper.save()
    rng_tensors, rng_meta = capture_rng(generator)
    return TrainState(
        phase=phase,
        epoch=epoch,
        history=list(history),
        tensors={
            **module_tensors("model", model.state_dict()),
            **optim_tensors,
            **best_tensors,
            **rng_tensors,
        },
        meta={"optimizer": optim_meta, "early_stopping": best_meta, "rng": rng_meta},
    )
