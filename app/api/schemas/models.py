from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from app.api.schemas.common import ORMModel


class ModelOut(ORMModel):
    id: uuid.UUID
    name: str
    version: int
    job_id: uuid.UUID | None
    dataset_id: uuid.UUID | None
    parent_id: uuid.UUID | None = Field(description="the model version this one started from")
    base_model: str
    strategy: str
    class_names: list[str]
    metrics: dict[str, Any] = Field(
        description="validation accuracy, per-class accuracy, confusion matrix"
    )
    lineage: dict[str, Any] = Field(
        description="base model, dataset sha256, job spec, library versions"
    )
    created_at: datetime


class ClassScore(BaseModel):
    label: str
    probability: float


class ImagePrediction(BaseModel):
    filename: str
    top_k: list[ClassScore]


class PredictionOut(BaseModel):
    model_id: uuid.UUID
    predictions: list[ImagePrediction]

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "model_id": "0b6f2d7e-1a7c-4b8e-8a39-7e2f4c1d9a00",
                    "predictions": [
                        {
                            "filename": "cat.jpg",
                            "top_k": [
                                {"label": "cat", "probability": 0.93},
                                {"label": "dog", "probability": 0.07},
                            ],
                        }
                    ],
                }
            ]
        }
    }
