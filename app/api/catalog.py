"""What a job spec may name: strategies and backbones."""

from __future__ import annotations

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from app.api.auth import require_scope
from app.api.schemas.common import error_responses
from app.engine import list_backbones as list_timm_backbones
from app.services.job_kinds import list_job_kinds

router = APIRouter(
    prefix="/v1",
    tags=["catalog"],
    dependencies=[require_scope("read")],
    responses=error_responses(),
)


class StrategyOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"name": "finetune", "kind": "train", "options": ["freeze_stages"]}]
        }
    )

    name: str
    kind: str = Field(description="the kind of job this strategy makes: train, extract_features")
    options: list[str]


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
    return [
        StrategyOut(name=name, kind=kind.name, options=kind.options(name))
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
