"""Kinds of job, as timm registers models: ``register_job_kind`` fills a dict, the rest reads it.

A job's ``strategy`` selects its kind: a training strategy (finetune, l2sp, ...) is a ``train``
job, ``extract_features`` its own kind; later ``sweep``. (ONNX export is not a kind: the worker
makes it with every version, worker.runner._export_onnx.) Each kind owns what is
checked when a job is submitted and what its progress counts; how it runs is the worker's
(``worker.runner.RUNNERS``, keyed by the same names: a test checks that they agree).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app import engine


@dataclass(frozen=True)
class JobKind:
    name: str
    description: str
    strategies: Callable[[], list[str]]  # the `strategy` values that select this kind
    options: Callable[[str], list[str]]  # option names of one of those strategies
    defaults: Callable[[str], dict[str, Any]]  # {option: default}, None where the job decides
    summary: Callable[[str], str]  # one line for users about one of those strategies
    # What the engine can check without a model or data: raises engine.EngineError.
    check: Callable[[str, dict[str, Any], engine.Hyperparameters], None]
    total_epochs: Callable[[engine.Hyperparameters], int]
    makes_model: bool  # a succeeded job registers a model version


_kinds: dict[str, JobKind] = {}


def register_job_kind(kind: JobKind) -> JobKind:
    if kind.name in _kinds:
        raise ValueError(f"job kind {kind.name!r} is registered twice")
    _kinds[kind.name] = kind
    return kind


def list_job_kinds() -> list[JobKind]:
    return list(_kinds.values())


def kind_of(strategy: str) -> JobKind | None:
    return next((k for k in _kinds.values() if strategy in k.strategies()), None)


def _check_training(strategy: str, options: dict[str, Any], hp: engine.Hyperparameters) -> None:
    engine.check_job(strategy, options, hp)


_FEATURES = re.compile(r"pre_logits|stage:[0-9]{1,3}")


def _check_features(_: str, options: dict[str, Any], __: engine.Hyperparameters) -> None:
    features = options.get("features")
    if features is not None and not _FEATURES.fullmatch(str(features)):
        raise engine.EngineError(
            f"options.features must be 'pre_logits' or 'stage:<i>' (got {features!r})"
        )


TRAIN = register_job_kind(
    JobKind(
        name="train",
        description="train a classifier with a transfer strategy; makes a model version",
        # Those that adapt to a target domain (dann, instance_weighting) too: their jobs name
        # it in target_dataset_id (app.services.jobs.check_job_datasets).
        strategies=lambda: engine.list_strategies(),
        options=engine.strategy_option_names,
        defaults=engine.strategy_defaults,
        summary=engine.strategy_summary,
        check=_check_training,
        total_epochs=lambda hp: hp.epochs,
        makes_model=True,
    )
)
EXTRACT_FEATURES = register_job_kind(
    JobKind(
        name="extract_features",
        description="embed every image of the dataset with the base model; a download, no model",
        strategies=lambda: [engine.FEATURE_JOB],
        options=lambda _: list(engine.FEATURE_JOB_OPTIONS),
        defaults=lambda _: {"features": "pre_logits"},
        summary=lambda _: (
            "not a training strategy: embed every image of the dataset with the base model "
            "(GET /v1/jobs/{id}/features); makes no model version"
        ),
        check=_check_features,
        total_epochs=lambda _: 1,  # one pass, whatever `epochs` says
        makes_model=False,
    )
)
