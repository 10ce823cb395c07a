"""Transfer-learning strategies. Importing this package registers the built-in ones."""

from app.engine.strategies import (  # noqa: F401  (registers them)
    dann,
    finetune,
    instance_weighting,
    linear_probe,
    lp_ft,
)
from app.engine.strategies._base import FitContext, FitOutcome, Strategy
from app.engine.strategies._registry import (
    create_strategy,
    list_strategies,
    register_strategy,
    strategy_defaults,
    strategy_option_names,
    strategy_summary,
)

__all__ = [
    "FitContext",
    "FitOutcome",
    "Strategy",
    "create_strategy",
    "list_strategies",
    "register_strategy",
    "strategy_defaults",
    "strategy_option_names",
    "strategy_summary",
]
