"""Pieces of adversarial domain adaptation (Ganin et al., "Domain-Adversarial Training of Neural
Networks", JMLR 2016; the article's sections 3.3 and 4.3): the gradient reversal layer, the
domain discriminator, and the schedule of the reversal's strength."""

from __future__ import annotations

import math
from typing import Any

import torch
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
