"""What a job spec may name: strategies and backbones."""

from __future__ import annotations

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict

from app.api.auth import require_scope
from app.api.schemas.common import error_responses
from app.engine import list_backbones as list_timm_backbones
from app.services.jobs import job_kinds, option_names

router = APIRouter(
    prefix="/v1",
    tags=["catalog"],
    dependencies=[require_scope("read")],
    responses=error_responses(),
)


class StrategyOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"name": "finetune", "options": ["freeze_stages"]}]}
    )

    name: str
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
    return [StrategyOut(name=n, options=option_names(n)) for n in job_kinds()]


@router.get(
    "/backbones",
    response_model=BackbonesOut,
    summary="timm backbone names usable as base_model 'timm:<name>'",
)
def list_backbones(
    pattern: str | None = Query(None, description="shell-style filter, e.g. 'resnet*'"),
) -> BackbonesOut:
    return BackbonesOut(source="timm", names=list_timm_backbones(pattern))
