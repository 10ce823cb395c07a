"""DANN: domain-adversarial fine-tuning on a labelled source and unlabeled target images.

Ganin et al., "Domain-Adversarial Training of Neural Networks" (JMLR 2016), the article's
adversarial transfer (sections 3.3 and 4.3): the classifier's loss on source images plus a domain
discriminator's loss on the pre-logit features of source and target images, reached through a
gradient reversal layer. One backward pass trains the discriminator to tell the domains apart and
the features to make them indistinguishable, while staying good for the labelled classes. The
reversal's strength follows Ganin's schedule, ``trade_off * (2 / (1 + exp(-10 p)) - 1)`` over
training progress p (``lambda_schedule="constant"``: ``trade_off`` throughout).

Semi-supervised (labelled target images, DatasetSplits.target_labeled): the article's formula
4.3.1, the classification loss of the labelled target images joins the source's (weighted by
``labeled_target_weight``) and the reversed domain loss is subtracted as before; the labelled
images also join the target pool of the domain loss.

An epoch is one pass over the source; each step also draws a target batch (and a batch of the
labelled target images), uniformly with replacement, each from its own seeded generator, so a
resumed run draws the same batches. Each epoch reports ``domain_accuracy`` (the
discriminator's, on source and target; near 0.5 when the features no longer tell the domains
apart), ``domain_loss``, ``classification_loss`` and, semi-supervised,
``target_classification_loss`` in ``EpochMetrics.extra``; ``train_loss`` is their (weighted) sum.
The proxy A-distance between the source and target features of the starting and of the returned
model is in ``TrainResult.choices["proxy_a_distance"]`` (see strategies/_adaptation.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Sampler

from app.engine.data import ImageDataset, Sample, create_loader, create_train_transform
from app.engine.domain import DomainDiscriminator, ganin_strength, reverse_gradient
from app.engine.errors import EngineError
from app.engine.specs import EpochMetrics, _is_int, _is_number
from app.engine.strategies._adaptation import measure_pad, pad_samples
from app.engine.strategies._base import FitContext, FitOutcome
from app.engine.strategies._finetuning import FinetuneOptions, FinetuneTask
from app.engine.strategies._registry import register_strategy
from app.engine.trainer import LoaderBatches, StepOutput, fit_phase

SCHEDULES = ("ganin", "constant")
MAX_DISCRIMINATOR_HIDDEN = 16384


class RandomBatches(Sampler[list[int]]):
    """``batches`` batches of ``batch_size`` indices below ``n``, drawn with replacement from
    ``generator``; the first ``skip`` of the next epoch are drawn and dropped (a resumed epoch)."""

    def __init__(self, n: int, batch_size: int, batches: int, generator: torch.Generator) -> None:
        self.n, self.batch_size, self.batches, self.generator = n, batch_size, batches, generator
        self.skip = 0

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[list[int]]:
        skip, self.skip = self.skip, 0
        for i in range(self.batches):
            batch = torch.randint(self.n, (self.batch_size,), generator=self.generator)
            if i >= skip:
                yield batch.tolist()


class PairedBatches:
    """Each source batch with a batch of each further loader (the target pool's; the labelled
    target images' in a semi-supervised job), each drawn by a ``RandomBatches`` of its own."""

    def __init__(
        self, source: LoaderBatches, others: Mapping[str, tuple[Any, RandomBatches]]
    ) -> None:
        self.source, self.others = source, dict(others)

    def generators(self) -> dict[str, torch.Generator]:
        return self.source.generators() | {
            name: order.generator for name, (_, order) in self.others.items()
        }

    def __len__(self) -> int:
        return len(self.source)

    def epoch(self, skip: int = 0) -> Iterator[Any]:
        for _, order in self.others.values():
            order.skip = skip
        loaders = [loader for loader, _ in self.others.values()]
        return zip(self.source.epoch(skip), *loaders, strict=True)


class DannTask(FinetuneTask):
    def __init__(self, ctx: FitContext, opts: Dann) -> None:
        model: Any = ctx.model  # timm API: num_features, forward_features, forward_head
        self.opts, self.hp = opts, ctx.hparams
        self.discriminator = DomainDiscriminator(model.num_features, opts.discriminator_hidden)
        self.discriminator.to(ctx.runtime.device)
        super().__init__(ctx, opts, phase="train")
        hp = ctx.hparams
        source = self.batches
        assert isinstance(source, LoaderBatches)
        transform = create_train_transform(ctx.preprocessing, hp.augmentation)

        def loader(samples: list[Sample], batch_size: int, seed: int) -> tuple[Any, RandomBatches]:
            order = RandomBatches(
                len(samples), batch_size, len(source), torch.Generator().manual_seed(seed)
            )
            return create_loader(
                ImageDataset(samples, transform),
                batch_size,
                device=ctx.runtime.device,
                num_workers=ctx.num_workers,
                persistent_workers=True,
                batch_sampler=order,
                # Worker seeds from a generator of their own: see create_train_loader.
                generator=torch.Generator().manual_seed(seed + 1),
            ), order

        # The domain loss's target pool: the unlabeled images and the labelled ones (their
        # labels unused there: 0 stands in).
        pool = [(path, 0) for path in target_pool(ctx)]
        others = {"target": loader(pool, hp.batch_size, hp.seed + 1)}
        if ctx.target_labeled:
            # Drawn with replacement like the pool; a batch holds at most as many images as
            # there are (10 labelled images: 10 a step, duplicates and all).
            size = min(hp.batch_size, len(ctx.target_labeled))
            others["target_labeled"] = loader(list(ctx.target_labeled), size, hp.seed + 3)
        self.batches = PairedBatches(source, others)
        self.classifier = model.get_classifier()

    def extra_param_groups(self) -> list[dict[str, Any]]:
        # The discriminator learns at the head's rate; weight decay as the job's, on weights.
        params = list(self.discriminator.parameters())
        decay = self.opts.optimizer_weight_decay(self.hp)
        return [
            {"params": [p for p in params if p.ndim > 1], "weight_decay": decay, "lr_scale": 1.0},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, "lr_scale": 1.0},
        ]

    def modules(self) -> Mapping[str, nn.Module]:
        return {"model": self.kept, "discriminator": self.discriminator}

    def start_epoch(self, index: int) -> None:
        super().start_epoch(index)
        self.discriminator.train()

    def strength(self) -> float:
        if self.opts.lambda_schedule == "constant":
            return float(self.opts.trade_off)
        return ganin_strength(self.progress, float(self.opts.trade_off))

    def step(self, batch: Any) -> StepOutput:
        (source, labels), (target, _), *labeled = batch
        runtime, model = self.runtime, self.kept
        timm_model: Any = model  # forward_features, forward_head: timm API
        n, m = labels.shape[0], target.shape[0]
        parts = [source, target] + ([labeled[0][0]] if labeled else [])
        images = runtime.to(torch.cat(parts))
        labels = runtime.to(labels)
        with runtime.autocast():
            features = timm_model.forward_head(timm_model.forward_features(images), pre_logits=True)
            cls_loss = self.criterion(self.classifier(features[:n]), labels)
            if labeled:
                target_labels = runtime.to(labeled[0][1])
                target_loss = self.criterion(self.classifier(features[n + m :]), target_labels)
            domain_logits = self.discriminator(reverse_gradient(features[: n + m], self.strength()))
        domains = torch.zeros_like(domain_logits, dtype=torch.float32)
        domains[:n] = 1.0  # source 1, target 0
        domain_loss = F.binary_cross_entropy_with_logits(domain_logits.float(), domains)
        correct = ((domain_logits.detach() > 0) == (domains > 0.5)).float().mean()
        extra = {
            "classification_loss": cls_loss.detach(),
            "domain_loss": domain_loss.detach(),
            "domain_accuracy": correct,
        }
        loss = cls_loss + domain_loss
        if labeled:
            extra["target_classification_loss"] = target_loss.detach()
            loss = loss + float(self.opts.labeled_target_weight) * target_loss
        return StepOutput(loss, n, extra=extra)


def target_pool(ctx: FitContext) -> list[str]:
    """The target images of the domain loss: the unlabeled ones, then the labelled ones."""
    return [*ctx.target, *(path for path, _ in ctx.target_labeled)]


@register_strategy(
    "dann",
    summary=(
        "domain-adversarial fine-tuning: the source's classification loss, and a domain "
        "discriminator reached through a gradient reversal layer that makes source and target"
        " features alike (Ganin et al. 2016); needs target_dataset_id"
    ),
)
@dataclass(frozen=True)
class Dann(FinetuneOptions):
    needs_target: ClassVar[bool] = True
    uses_target_labeled: ClassVar[bool] = True

    # The largest strength of the gradient reversal (Ganin's lambda); 1.0 in the paper.
    trade_off: float = 1.0
    # Width of the discriminator's two hidden layers (1024 in the paper).
    discriminator_hidden: int = 1024
    # "ganin": the strength rises from 0 to trade_off over training; "constant": trade_off.
    lambda_schedule: str = "ganin"
    # Semi-supervised jobs (labelled target images): the weight of their classification loss
    # beside the source's.
    labeled_target_weight: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not _is_number(self.trade_off) or not 0 <= self.trade_off <= 10:
            raise EngineError(f"trade_off must be a number from 0 to 10 (got {self.trade_off!r}).")
        hidden = self.discriminator_hidden
        if not _is_int(hidden) or not 1 <= hidden <= MAX_DISCRIMINATOR_HIDDEN:
            raise EngineError(
                f"discriminator_hidden must be an integer from 1 to {MAX_DISCRIMINATOR_HIDDEN} "
                f"(got {hidden!r})."
            )
        weight = self.labeled_target_weight
        if not _is_number(weight) or not 0 <= weight <= 100:
            raise EngineError(
                f"labeled_target_weight must be a number from 0 to 100 (got {weight!r})."
            )
        if self.lambda_schedule not in SCHEDULES:
            raise EngineError(
                f"lambda_schedule must be one of {', '.join(SCHEDULES)} "
                f"(got {self.lambda_schedule!r})."
            )

    def fit(self, ctx: FitContext) -> FitOutcome:
        if not ctx.target and not ctx.target_labeled:
            raise EngineError(
                "dann needs target-domain images: give the job a target dataset "
                "(target_dataset_id), labelled target images (labeled_target_dataset_id), or both."
            )
        hp, history = ctx.hparams, list[EpochMetrics]()
        task = DannTask(ctx, self)
        ctx.callbacks.on_train_start(hp.epochs, len(task.batches))
        source, target = pad_samples(ctx.train, target_pool(ctx))
        before = measure_pad(ctx, source, target)
        result = fit_phase(ctx, task, first_epoch=1, epochs=hp.epochs, history=history)
        ctx.choices["proxy_a_distance"] = {
            "before": before,
            "after": measure_pad(ctx, source, target),
        }
        val = result.val
        return FitOutcome(history, val.predictions, val.targets, evaluation=result.eval)
