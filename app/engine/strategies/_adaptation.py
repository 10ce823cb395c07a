"""What dann and instance_weighting share: the proxy A-distance between the source and target
features of the model they start from and of the model they return (``ctx.choices``).

NOTE the cost is two pre-logit feature passes (before and after training), each over at most
``PAD_MAX_IMAGES`` images per domain with the eval transform, plus four small logistic fits on
CPU (``proxy_a_distance``). Measured on the shared 2-core machine under load (load average
~6), one torch thread, test_resnet at 32 px: forward passes at ~340 images/s, so ~9 s for a
pass over 2,000 + 900 images, and ~3 s for the fits on 2,000 + 900 rows of its 96 features. A
training step costs about 3x a forward pass, so each measure should cost about a third of a
training epoch over the same number of images (an estimate, not measured). Subsets are evenly
spaced over the samples, not drawn: no RNG is touched, so training is the same with or without
the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from app.engine.callbacks import CallbackList
from app.engine.data import ImageDataset, Sample, create_eval_transform, create_loader
from app.engine.domain import proxy_a_distance
from app.engine.strategies._base import FitContext
from app.engine.strategies._probing import FeatureProgress, extract_features, pre_logits

# Images per domain the proxy A-distance is measured on (the features of at most twice this many
# images are computed per measure).
PAD_MAX_IMAGES = 2000


def spread(n: int, limit: int = PAD_MAX_IMAGES) -> list[int]:
    """At most ``limit`` indices below ``n``, evenly spaced (all of them when n <= limit)."""
    if n <= limit:
        return list(range(n))
    return [i * n // limit for i in range(limit)]


def features_of(ctx: FitContext, samples: Sequence[Sample], model: Any = None) -> torch.Tensor:
    """Pre-logit features of ``samples`` under ``model`` (default ctx.model) in eval mode, the
    eval transform; the model's train/eval mode is restored after."""
    model = ctx.model if model is None else model
    hp, runtime = ctx.hparams, ctx.runtime
    loader = create_loader(
        ImageDataset(samples, create_eval_transform(ctx.preprocessing)),
        hp.batch_size,
        device=runtime.device,
        num_workers=ctx.num_workers,
        generator=torch.Generator().manual_seed(0),  # not torch's global RNG: see eval_loader
    )
    was_training = model.training
    model.eval()
    features, _ = extract_features(
        pre_logits(model), loader, runtime, FeatureProgress(CallbackList(), len(loader))
    )
    model.train(was_training)
    return features


def pad_samples(
    source: Sequence[Sample], target: Sequence[str]
) -> tuple[list[Sample], list[Sample]]:
    """The (evenly spaced) source and target images the proxy A-distance is measured on."""
    return (
        [source[i] for i in spread(len(source))],
        [(target[i], 0) for i in spread(len(target))],
    )


# Fewer images of a domain than this leave no held-out half to score a domain classifier on.
PAD_MIN_IMAGES = 4


def pad_of_features(source: torch.Tensor, target: torch.Tensor, seed: int) -> float | None:
    """proxy_a_distance, or None when a domain has fewer than PAD_MIN_IMAGES rows (a job with
    a tiny target trains; only this figure cannot be estimated)."""
    if min(len(source), len(target)) < PAD_MIN_IMAGES:
        return None
    return proxy_a_distance(source, target, seed=seed)


def measure_pad(
    ctx: FitContext, source: Sequence[Sample], target: Sequence[Sample]
) -> float | None:
    """The proxy A-distance between ctx.model's features of ``source`` and ``target`` (None:
    too few images, see pad_of_features)."""
    if min(len(source), len(target)) < PAD_MIN_IMAGES:
        return None
    return pad_of_features(
        features_of(ctx, source), features_of(ctx, target), seed=ctx.hparams.seed
    )
