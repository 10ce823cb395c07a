"""Linear probing: a frozen backbone, and a classifier trained on features computed once.

Options choose the features (the pre-logits, or an intermediate stage pooled globally) and the
head (linear, or an MLP with one hidden layer). The default pair trains the timm model's own
classifier in place; any other is returned as an ``app.engine.heads.ProbedModel`` whose card
records the choice, so the saved model predicts end to end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from app.engine.errors import EngineError
from app.engine.heads import (
    HEADS,
    PRE_LOGITS,
    ProbedModel,
    check_stage,
    create_head,
    parse_features,
    probe_architecture,
)
from app.engine.specs import EpochMetrics, _is_int, _is_number
from app.engine.strategies._base import FitContext, FitOutcome, Strategy
from app.engine.strategies._probing import (
    extract_all,
    fit_probe,
    head_steps_per_epoch,
    own_classifier,
    pre_logits,
)
from app.engine.strategies._registry import register_strategy

DEFAULT_MLP_HIDDEN = 256
# The MLP head's first layer is features x mlp_hidden: with 4,096-d features (the widest common
# pre-logits) 16,384 hidden units are 67 M weights, ~1 GB with AdamW's two moments. Wider heads
# only eat the worker's memory (1e9 asked for 384 GB).
MAX_MLP_HIDDEN = 16_384


@register_strategy(
    "linear_probe",
    summary=(
        "feature-based transfer: a frozen backbone, its features computed once and cached, "
        "only a new head trained"
    ),
)
@dataclass(frozen=True)
class LinearProbe(Strategy):
    # "linear", or "mlp": Linear(C, mlp_hidden) -> ReLU -> Dropout(mlp_dropout) -> Linear.
    head: str = "linear"
    # "pre_logits" (what the model's classifier sees) or "stage:<i>": the output of stage i
    # (0-based, as timm's feature_info and forward_intermediates count), globally average-pooled.
    features: str = PRE_LOGITS
    mlp_hidden: int | None = None  # head="mlp" only; default 256
    mlp_dropout: float | None = None  # head="mlp" only; default 0

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise EngineError(f"head must be one of {', '.join(HEADS)} (got {self.head!r}).")
        try:
            parse_features(self.features)
        except ValueError as exc:
            raise EngineError(f"{exc}.") from None
        if self.head != "mlp":
            for name in ("mlp_hidden", "mlp_dropout"):
                if getattr(self, name) is not None:
                    raise EngineError(f"{name} applies only to head='mlp' (head is {self.head!r}).")
        hidden, dropout = self.mlp_hidden, self.mlp_dropout
        if hidden is not None and (not _is_int(hidden) or not 1 <= hidden <= MAX_MLP_HIDDEN):
            raise EngineError(
                f"mlp_hidden must be an integer from 1 to {MAX_MLP_HIDDEN} (got {hidden!r})."
            )
        if dropout is not None and (not _is_number(dropout) or not 0 <= dropout < 1):
            raise EngineError(f"mlp_dropout must be a number in [0, 1) (got {dropout!r}).")

    def fit(self, ctx: FitContext) -> FitOutcome:
        hp = ctx.hparams
        model: Any = ctx.model  # timm API (get_classifier, forward_head) beyond nn.Module
        stage = parse_features(self.features)
        classifier = own_classifier(model)
        if stage is not None:
            check_stage(model, stage)
        model.requires_grad_(False)
        model.eval()

        plain = self.head == "linear" and stage is None
        # The feature function is the wrapper's, with a placeholder head: the real one is sized
        # by the features, known only after the pass.
        probe = None if plain else ProbedModel(model, nn.Identity(), stage)
        features = probe.forward_features if probe is not None else pre_logits(model)

        ctx.callbacks.on_train_start(hp.epochs, head_steps_per_epoch(ctx))
        feats = extract_all(ctx, features)

        extra: dict[str, Any] = {}
        if probe is None:
            head = classifier
        else:
            model.reset_classifier(0)  # the new head replaces it
            hidden = self.mlp_hidden or DEFAULT_MLP_HIDDEN
            dropout = float(self.mlp_dropout or 0.0)
            in_features = int(feats.train_x.shape[1])
            head = create_head(self.head, in_features, len(ctx.class_names), hidden, dropout)
            probe.head = head.to(ctx.runtime.device)
            extra = probe_architecture(self.head, in_features, hidden, dropout, stage)
        head.requires_grad_(True)

        history: list[EpochMetrics] = []
        result = fit_probe(
            ctx, head, feats, phase="probe", first_epoch=1, epochs=hp.epochs, history=history
        )
        val = result.val
        model.eval()
        if probe is not None:
            probe.eval()
        return FitOutcome(
            history,
            val.predictions,
            val.targets,
            model=probe,
            architecture=extra,
            evaluation=result.eval,
        )
