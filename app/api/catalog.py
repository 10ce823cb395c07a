"""What a job spec may name: strategies and backbones."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from app.api.auth import require_scope
from app.api.schemas.common import error_responses
from app.engine import list_backbones as list_timm_backbones
from app.services.job_kinds import list_job_kinds
from app.services.jobs import strategies_using_labeled_target, strategies_using_target

router = APIRouter(
    prefix="/v1",
    tags=["catalog"],
    dependencies=[require_scope("read")],
    responses=error_responses(),
)


class StrategyOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"name": "finetune", "kind": "train",
                 "summary": "parameter-based transfer: start from the source weights and ...",
                 "options": ["freeze_stages"], "defaults": {"freeze_stages": 0},
                 "needs_target": False, "takes_labeled_target": False},
                {"name": "dann", "kind": "train",
                 "summary": "domain-adversarial fine-tuning: ...",
                 "options": ["freeze_stages", "trade_off", "discriminator_hidden",
                             "lambda_schedule"],
                 "defaults": {"freeze_stages": 0, "trade_off": 1.0,
                              "discriminator_hidden": 1024, "lambda_schedule": "ganin"},
                 "needs_target": True, "takes_labeled_target": True},
            ]
        }
    )  # fmt: skip

    name: str
    kind: str = Field(description="the kind of job this strategy makes: train, extract_features")
    summary: str = Field("", description="what the strategy does, in one line")
    options: list[str]
    defaults: dict[str, Any] = Field(
        default_factory=dict,
        description="each option's default; null where the engine decides from the job (e.g. "
        "lp_ft's probe_epochs: half of epochs)",
    )
    needs_target: bool = Field(
        False,
        description="adapts to a target domain: a job needs target_dataset_id (and may not "
        "have one otherwise)",
    )
    takes_labeled_target: bool = Field(
        False, description="also takes labeled_target_dataset_id (semi-supervised adaptation)"
    )


class BackbonesOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"source": "timm", "names": ["resnet18", "resnet34"]}]}
    )

    source: str
    names: list[str]


@router.get(
    "/strategies",
    response_model=list[StrategyOut],
    summary="Transfer strategies (and extract_features, the feature-extraction job)",
)
def list_strategies() -> list[StrategyOut]:
    adapting = set(strategies_using_target())
    labeled_takers = set(strategies_using_labeled_target())
    return [
        StrategyOut(
            name=name,
            kind=kind.name,
            summary=kind.summary(name),
            options=kind.options(name),
            defaults=kind.defaults(name),
            needs_target=name in adapting,
            takes_labeled_target=name in labeled_takers,
        )
        for kind in list_job_kinds()
        for name in kind.strategies()
    ]


@router.get(
    "/backbones",
    response_model=BackbonesOut,
    summary="timm backbone names usable as base_model 'timm:<name>'",
)
def list_backbones(
    pattern: str | None = Query(None, description="shell-style filter, e.g. 'resnet*'"),
) -> BackbonesOut:
    return BackbonesOut(source="timm", names=list_timm_backbones(pattern))
