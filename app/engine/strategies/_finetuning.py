"""What finetune, l2sp, l1sp and lp_ft share: their options for freezing and learning rates, and
the fine-tuning task (a loss over image batches) that ``app.engine.trainer`` runs for them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from app.engine.data import (
    ImageDataset,
    create_eval_transform,
    create_loader,
    create_train_loader,
    create_train_transform,
)
from app.engine.errors import EngineError
from app.engine.loop import EvalStats, create_criterion, evaluate
from app.engine.models import batchnorm_layers, freeze_stages, match_parameters
from app.engine.optim import create_optimizer, create_param_groups
from app.engine.regularization import OrthogonalPenalty, PenaltyTerm, ProximalPenalty
from app.engine.specs import Hyperparameters, _is_int, _is_number
from app.engine.strategies._base import FitContext, Strategy
from app.engine.trainer import LoaderBatches, StepOutput, TrainingTask


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

    def orthogonal_strength(self) -> float:
        """The weight of the orthogonal regularisation of the backbone's weights (0: none)."""
        return 0.0


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


def eval_loader(ctx: FitContext) -> DataLoader | None:
    """The job's eval set (None without one), read like validation. Its generator is its own:
    a DataLoader without one draws its base seed from torch's global RNG on every pass, which
    training draws from too (dropout, augmentation)."""
    if not ctx.evaluation:
        return None
    return create_loader(
        ImageDataset(ctx.evaluation, create_eval_transform(ctx.preprocessing)),
        ctx.hparams.batch_size,
        device=ctx.runtime.device,
        num_workers=ctx.num_workers,
        persistent_workers=True,  # scored every epoch
        generator=torch.Generator().manual_seed(0),
    )


class FinetuneTask(TrainingTask):
    """Fine-tuning on images: the model's loss on a batch, with the freezing schedule, the
    optimizer's parameter groups and the penalty's proximal step of ``opts``."""

    def __init__(
        self, ctx: FitContext, opts: FinetuneOptions, *, phase: str, lr_mult: float = 1.0
    ) -> None:
        hp, runtime, model = ctx.hparams, ctx.runtime, ctx.model
        self.phase, self.kept, self.runtime, self.callbacks = phase, model, runtime, ctx.callbacks
        self.freezing = Freezing(model, opts)
        self.freezing.apply(1)
        timm_model: Any = model  # get_classifier is timm API
        head_ids = {id(p) for p in timm_model.get_classifier().parameters()}
        trained = self.freezing.trained_parameters()
        groups = create_param_groups(
            model,
            trained,
            head=[p for p in trained if id(p) in head_ids],
            weight_decay=opts.optimizer_weight_decay(hp),
            backbone_lr_mult=opts.backbone_lr_mult,
            layer_decay=opts.layer_decay,
        )
        self.optimizer = create_optimizer(groups + self.extra_param_groups(), hp, lr_mult=lr_mult)
        self.penalty = ProximalPenalty(
            opts.penalty_terms(
                [p for p in trained if id(p) not in head_ids],
                [p for p in trained if id(p) in head_ids],
            ),
            self.optimizer,
        )
        self.orthogonal = OrthogonalPenalty(
            [p for p in trained if id(p) not in head_ids],
            opts.orthogonal_strength(),
            self.optimizer,
        )
        self.batches = LoaderBatches(
            create_train_loader(
                self.train_dataset(ctx),
                hp.batch_size,
                device=runtime.device,
                seed=hp.seed,
                num_workers=ctx.num_workers,
                sampler=hp.sampler,
            )
        )
        self.val_loader = create_loader(
            ImageDataset(ctx.val, create_eval_transform(ctx.preprocessing)),
            hp.batch_size,
            device=runtime.device,
            num_workers=ctx.num_workers,
            persistent_workers=True,  # evaluated every epoch
        )
        self.eval_loader = eval_loader(ctx)
        self.criterion = create_criterion(
            hp, [label for _, label in ctx.train], len(ctx.class_names), runtime.device
        )

    def train_dataset(self, ctx: FitContext) -> ImageDataset:
        """The training images, as the loader reads them (a subclass may add per-sample data)."""
        transform = create_train_transform(ctx.preprocessing, ctx.hparams.augmentation)
        return ImageDataset(ctx.train, transform)

    def extra_param_groups(self) -> list[dict[str, Any]]:
        """Groups of further modules the optimizer trains (a domain discriminator)."""
        return []

    def start_epoch(self, index: int) -> None:
        if self.freezing.apply(index):
            self.penalty.refresh()
            self.orthogonal.refresh()
        self.kept.train()
        for module in self.freezing.eval_modules:  # frozen stages, BatchNorm statistics
            module.eval()

    def step(self, batch: Any) -> StepOutput:
        images, targets = batch
        images, targets = self.runtime.to(images), self.runtime.to(targets)
        with self.runtime.autocast():
            loss = self.criterion(self.kept(images), targets)
        return StepOutput(loss, targets.shape[0])

    def after_step(self) -> None:
        if self.penalty:
            self.penalty.step()
        if self.orthogonal:
            self.orthogonal.step()

    def evaluate(self) -> EvalStats:
        return evaluate(self.kept, self.val_loader, runtime=self.runtime, callbacks=self.callbacks)

    def score_eval(self) -> EvalStats | None:
        if self.eval_loader is None:
            return None
        return evaluate(self.kept, self.eval_loader, runtime=self.runtime, callbacks=self.callbacks)

    def after_load(self) -> None:
        # load_state_dict made new param-group dicts: re-read their lr
        self.penalty.refresh()
        self.orthogonal.refresh()
