"""L2-SP, L1-SP and plain penalties: their proximal steps, and what they do to a real training."""

from __future__ import annotations

import pytest
import torch

from app.engine import EngineError, Hyperparameters, run_training
from app.engine.loop import seed_everything
from app.engine.models import create_timm_model
from app.engine.regularization import ProximalPenalty, source_term, zero_term
from tests.engine._helpers import scratch

HP = Hyperparameters(epochs=2, batch_size=32, learning_rate=3e-3, image_size=32)


def _one_param(values: list[float]) -> tuple[torch.nn.Parameter, torch.optim.Optimizer]:
    param = torch.nn.Parameter(torch.tensor(values))
    optimizer = torch.optim.SGD([param], lr=0.5)
    return param, optimizer


def test_l2_proximal_step_shrinks_the_difference_to_the_source():
    param, optimizer = _one_param([1.0, -2.0, 3.0])
    term = source_term([param], strength=2.0, p=2)  # snapshot: w0 = [1, -2, 3]
    with torch.no_grad():
        param.add_(torch.tensor([0.4, -0.4, 4.0]))
    ProximalPenalty([term], optimizer).step()
    # d / (1 + lr * alpha) = d / 2
    assert torch.allclose(param.detach(), torch.tensor([1.2, -2.2, 5.0]))


def test_l1_proximal_step_puts_small_differences_exactly_on_the_source():
    source = [0.1234567, -2.7182817, 3.1415927]
    param, optimizer = _one_param(source)
    term = source_term([param], strength=0.2, p=1)  # threshold lr * alpha = 0.1
    with torch.no_grad():
        param.add_(torch.tensor([0.0999, -0.05, 0.5]))
    ProximalPenalty([term], optimizer).step()
    after = param.detach()
    # Bitwise the source where |d| <= 0.1, not merely close: w0 + 0, never w - (w - w0).
    assert after[0].item() == torch.tensor(source)[0].item()
    assert after[1].item() == torch.tensor(source)[1].item()
    assert after[2].item() == pytest.approx(source[2] + 0.4)


def test_plain_penalties_pull_towards_zero():
    param, optimizer = _one_param([0.05, -0.5, 2.0])
    ProximalPenalty([zero_term([param], 0.2, 1)], optimizer).step()
    assert param.detach().tolist() == pytest.approx([0.0, -0.4, 1.9])
    assert param.detach()[0].item() == 0.0
    param2, optimizer2 = _one_param([1.0, -2.0])
    ProximalPenalty([zero_term([param2], 2.0, 2)], optimizer2).step()
    assert param2.detach().tolist() == pytest.approx([0.5, -1.0])


def test_frozen_parameters_are_skipped_until_unfrozen():
    param, optimizer = _one_param([1.0])
    penalty = ProximalPenalty([zero_term([param], 2.0, 2)], optimizer)
    param.requires_grad_(False)
    penalty.refresh()
    penalty.step()
    assert param.item() == 1.0
    param.requires_grad_(True)
    penalty.refresh()
    penalty.step()
    assert param.item() == 0.5


# --- real training --------------------------------------------------------------------------


def _source_and_backbone_diffs(data, strategy: str, **options) -> list[torch.Tensor]:
    seed_everything(HP.seed)  # run_training's exact starting weights
    source = dict(create_timm_model("test_resnet", 10, pretrained=False).named_parameters())
    result = run_training(
        source=scratch(),
        strategy=strategy,
        data=data,
        hparams=HP,
        strategy_options=options,
        device="cpu",
    )
    trained = dict(result.model.named_parameters())
    return [
        (trained[name] - source[name]).detach().flatten()
        for name in source
        if not name.startswith("fc.")
    ]


def _distance(diffs: list[torch.Tensor]) -> float:
    return float(torch.cat(diffs).norm())


def test_l2sp_with_a_large_alpha_stays_near_the_source(small_digits):
    free = _distance(_source_and_backbone_diffs(small_digits, "l2sp", alpha=0.0, beta=0.0))
    held = _distance(_source_and_backbone_diffs(small_digits, "l2sp", alpha=1e4))
    # lr * alpha = 30: every step keeps 1/31 of the move away from the source.
    assert held < 0.1 * free, (held, free)


def test_l1sp_leaves_many_weights_exactly_at_the_source_and_l2sp_does_not(small_digits):
    # Only weights that training moves at all count: at 32 px most of layer4's 3x3 kernels see
    # only padding and get no gradient, whatever the penalty.
    moved = torch.cat(_source_and_backbone_diffs(small_digits, "l2sp", alpha=0.0, beta=0.0)) != 0
    l1 = torch.cat(_source_and_backbone_diffs(small_digits, "l1sp", alpha=1.0))[moved]
    l2 = torch.cat(_source_and_backbone_diffs(small_digits, "l2sp", alpha=1.0))[moved]
    l1_zeros = float((l1 == 0).float().mean())
    l2_zeros = float((l2 == 0).float().mean())
    # Adam moves each weight by about lr per step, and L1-SP's threshold is lr * alpha = lr:
    # most differences are soft-thresholded to exactly zero. L2-SP only shrinks them.
    assert l1_zeros > 0.5, l1_zeros
    assert l2_zeros < 0.01, l2_zeros
    assert l1.abs().max() > 0  # it still learns


def test_finetune_l1_penalty_zeroes_weights(small_digits):
    seed_everything(HP.seed)
    result = run_training(
        source=scratch(),
        strategy="finetune",
        data=small_digits,
        hparams=HP,
        strategy_options={"penalty": "l1", "penalty_lambda": 5.0},
        device="cpu",
    )
    weights = torch.cat([p.detach().flatten() for p in result.model.parameters() if p.ndim > 1])
    assert float((weights == 0).float().mean()) > 0.3


def test_sp_strategies_refuse_weight_decay(small_digits):
    with pytest.raises(EngineError, match=r"l2sp regularises with alpha .* set weight_decay to 0"):
        run_training(
            source=scratch(),
            strategy="l2sp",
            data=small_digits,
            hparams=Hyperparameters(epochs=1, image_size=32, weight_decay=1e-4),
            device="cpu",
        )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"alpha": -1}, "alpha must be a number from 0 to"),
        ({"beta": "0.1"}, "beta must be a number from 0 to"),
        ({"alpha": float("inf")}, "alpha must be a number from 0 to"),
    ],
)
def test_bad_sp_options(options, message):
    from app.engine.strategies import create_strategy

    for name in ("l2sp", "l1sp"):
        with pytest.raises(EngineError, match=message):
            create_strategy(name, **options)
