"""Pieces of domain adaptation: the gradient reversal layer, the domain discriminator and the
schedule of the reversal's strength (Ganin et al., "Domain-Adversarial Training of Neural
Networks", JMLR 2016; the article's sections 3.3 and 4.3), the density ratio of instance
weighting (2.2.1), and the proxy A-distance that measures how far apart two domains' features
are."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, strength: float) -> torch.Tensor:
        ctx.strength = strength
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad.neg() * ctx.strength, None


def reverse_gradient(x: torch.Tensor, strength: float) -> torch.Tensor:
    """The identity forward; backward multiplies the gradient by ``-strength``. Placed between
    the features and the discriminator, one backward pass trains the discriminator to tell the
    domains apart and the feature extractor to make them indistinguishable."""
    return _GradientReversal.apply(x, strength)


def ganin_strength(progress: float, trade_off: float) -> float:
    """``trade_off * (2 / (1 + exp(-10 p)) - 1)`` for training progress p in [0, 1]: near 0 while
    the discriminator is still random (its gradients are noise), rising to ``trade_off``."""
    return trade_off * (2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0)


class DomainDiscriminator(nn.Module):
    """Features -> one logit, "source" vs "target": two hidden layers with ReLU and dropout, as
    in Ganin et al. (1024 wide there)."""

    def __init__(self, in_features: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(hidden, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features).squeeze(1)


def _domain_classifier(
    source: torch.Tensor, target: torch.Tensor, *, steps: int, seed: int
) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    """A logistic classifier, target 1 vs source 0, on features standardised with the source's
    statistics: one linear layer trained full-batch with Adam on a loss where each domain weighs
    the same. Returns (layer, mean, std); classify ``(x - mean) / std``. On CPU: a few thousand
    rows of a few hundred features train in well under a second."""
    generator = torch.Generator().manual_seed(seed)
    mean, std = source.mean(0), source.std(0).clamp(min=1e-6)
    x = (torch.cat([source, target]) - mean) / std
    y = torch.cat([torch.zeros(len(source)), torch.ones(len(target))])
    ns, nt = len(source), len(target)
    balance = torch.where(y > 0, torch.tensor(ns / (2 * nt)), torch.tensor(ns / (2 * ns)))
    layer = nn.Linear(x.shape[1], 1)
    with torch.no_grad():
        layer.weight.normal_(0, 0.01, generator=generator)
        layer.bias.zero_()
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.05, weight_decay=1e-4)
    for _ in range(steps):
        optimizer.zero_grad()
        logits = layer(x).squeeze(1)
        loss = F.binary_cross_entropy_with_logits(logits, y, weight=balance)
        loss.backward()
        optimizer.step()
    return layer, mean, std


def estimate_density_ratio(
    source: torch.Tensor,
    target: torch.Tensor,
    *,
    clip: float,
    steps: int = 500,
    seed: int = 0,
) -> torch.Tensor:
    """Weights ``p_t(x) / p_s(x)`` of the ``source`` rows, from a logistic domain classifier
    trained on the features of both (the article's 2.2.1; Bickel et al., ICML 2007). Trained with
    each domain weighing the same in its loss, the classifier's odds ``P(t|x) / P(s|x)`` are the
    density ratio itself (unbalanced, they would carry a factor ``n_t / n_s``). The weights are
    clipped at ``clip`` times their mean (a few target-like source images would otherwise carry
    the loss) and normalised to mean 1.

    The classifier is ``_domain_classifier``'s (standardised features, balanced loss, on CPU).
    """
    source, target = source.float().cpu(), target.float().cpu()
    layer, mean, std = _domain_classifier(source, target, steps=steps, seed=seed)
    with torch.no_grad():
        # The classifier was trained balanced (as if n_s = n_t), so its odds are the ratio itself.
        ratio = layer((source - mean) / std).squeeze(1).clamp(-30, 30).exp()
    # Clip and renormalise until both hold: renormalising after one clip lifts every weight, the
    # clipped ones above the clip again (a clip of 5 left a largest weight of 14 on a strong shift).
    for _ in range(100):
        ratio = ratio / ratio.mean()
        if ratio.max() <= clip * (1 + 1e-4):
            break
        ratio = ratio.clamp(max=clip)
    return ratio


def proxy_a_distance(
    source: torch.Tensor, target: torch.Tensor, *, steps: int = 500, seed: int = 0
) -> float:
    """Ben-David et al.'s proxy A-distance ``2 (1 - 2 err)`` between two feature samples (rows):
    0 when a domain classifier cannot tell them apart, 2 when it always can.

    ``err`` is the balanced error (the mean of the two domains' error rates, so unequal sample
    sizes do not matter) of ``_domain_classifier`` on held-out data: each sample is split in
    halves (a seeded permutation of its own, no global RNG), a classifier trained on one half of
    each domain is scored on the other, and the two ways are averaged. A linear classifier on
    frozen features, as in Ganin et al.'s report of it (they used a linear SVM). Clamped to
    [0, 2]: an error above 0.5 on held-out data is chance, not a negative distance.
    """
    source, target = source.float().cpu(), target.float().cpu()
    if len(source) < 4 or len(target) < 4:
        raise ValueError("proxy_a_distance needs at least 4 rows of each domain")
    generator = torch.Generator().manual_seed(seed)
    s_order = torch.randperm(len(source), generator=generator)
    t_order = torch.randperm(len(target), generator=generator)
    s_halves = (source[s_order[: len(source) // 2]], source[s_order[len(source) // 2 :]])
    t_halves = (target[t_order[: len(target) // 2]], target[t_order[len(target) // 2 :]])
    errors = []
    for fit, held in ((0, 1), (1, 0)):
        layer, mean, std = _domain_classifier(s_halves[fit], t_halves[fit], steps=steps, seed=seed)
        with torch.no_grad():
            s_wrong = (layer((s_halves[held] - mean) / std).squeeze(1) > 0).float().mean()
            t_wrong = (layer((t_halves[held] - mean) / std).squeeze(1) <= 0).float().mean()
        errors.append(float(s_wrong + t_wrong) / 2)
    err = sum(errors) / len(errors)
    return min(2.0, max(0.0, 2.0 * (1.0 - 2.0 * err)))


def weight_summary(weights: torch.Tensor) -> dict[str, float]:
    """What a user needs to judge instance weights: their spread, and the effective sample size
    ``(sum w)^2 / sum w^2`` as a fraction of the images (1: uniform; small: a few images carry
    the training)."""
    w = weights.double()
    ess = float(w.sum() ** 2 / (w * w).sum())
    q = torch.quantile(w, torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64))
    return {
        "min": float(q[0]),
        "p10": float(q[1]),
        "median": float(q[2]),
        "p90": float(q[3]),
        "max": float(q[4]),
        "effective_sample_size": ess,
        "effective_fraction": ess / len(w),
    }
