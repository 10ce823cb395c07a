"""Fine-tuning: train the whole network, optionally with its first stages frozen."""

from __future__ import annotations

import time
from dataclasses import dataclass

from app.engine.data import (
    ImageDataset,
    create_eval_transform,
    create_loader,
    create_train_loader,
    create_train_transform,
)
from app.engine.errors import EngineError
from app.engine.loop import create_optimizer, current_lr, evaluate, train_one_epoch
from app.engine.models import freeze_stages
from app.engine.specs import EpochMetrics, _is_int
from app.engine.strategies._base import FitContext, FitOutcome, Strategy
from app.engine.strategies._registry import register_strategy


@register_strategy("finetune")
@dataclass(frozen=True)
class Finetune(Strategy):
    # Freeze the stem and the first N stages of timm's feature_info: early features are generic,
    # and freezing them trains faster and overfits small datasets less.
    freeze_stages: int = 0

    def __post_init__(self) -> None:
        if not _is_int(self.freeze_stages) or self.freeze_stages < 0:
            raise EngineError(
                f"freeze_stages must be an integer >= 0 (got {self.freeze_stages!r})."
            )

    def fit(self, ctx: FitContext) -> FitOutcome:
        hp, runtime = ctx.hparams, ctx.runtime
        model = ctx.model
        frozen = freeze_stages(model, self.freeze_stages)
        optimizer = create_optimizer(model.parameters(), hp)

        train_loader = create_train_loader(
            ImageDataset(ctx.train, create_train_transform(ctx.preprocessing)),
            hp.batch_size,
            device=runtime.device,
            seed=hp.seed,
            num_workers=ctx.num_workers,
        )
        val_loader = create_loader(
            ImageDataset(ctx.val, create_eval_transform(ctx.preprocessing)),
            hp.batch_size,
            device=runtime.device,
            num_workers=ctx.num_workers,
            persistent_workers=True,  # evaluated every epoch
        )

        ctx.callbacks.on_train_start(hp.epochs, len(train_loader))
        history: list[EpochMetrics] = []
        val = None
        for epoch in range(1, hp.epochs + 1):
            start = time.perf_counter()
            stats = train_one_epoch(
                model,
                train_loader,
                optimizer,
                epoch=epoch,
                runtime=runtime,
                callbacks=ctx.callbacks,
                frozen=frozen,
            )
            val = evaluate(model, val_loader, runtime=runtime, callbacks=ctx.callbacks)
            metrics = EpochMetrics(
                epoch=epoch,
                phase="train",
                train_loss=stats.loss,
                val_loss=val.loss,
                val_accuracy=val.accuracy,
                learning_rate=current_lr(optimizer),
                images_per_second=stats.images / stats.seconds if stats.seconds > 0 else 0.0,
                seconds=time.perf_counter() - start,
            )
            history.append(metrics)
            ctx.callbacks.on_epoch_end(metrics)
        assert val is not None  # epochs >= 1 is validated by Hyperparameters
        model.eval()
        return FitOutcome(history, val.predictions, val.targets)
