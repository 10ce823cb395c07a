from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.api.schemas.common import SLUG_PATTERN, ORMModel, UTCDateTime

Scope = Literal["read", "train", "predict", "admin"]

KEY_EXAMPLE: dict[str, Any] = {
    "id": "0b9f3c1e-3c55-4c1e-9a1d-2e5b7f0a9c44",
    "name": "ci",
    "prefix": "4f1a9c2b7d3e",
    "scopes": ["read", "train"],
    "created_at": "2026-11-29T10:00:00Z",
    "last_used_at": "2026-11-29T10:05:00Z",
    "revoked_at": None,
}


class KeyCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"name": "ci", "scopes": ["read", "train"]}]},
    )

    name: str = Field(pattern=SLUG_PATTERN, max_length=100, description="who or what uses it")
    scopes: list[Scope] = Field(min_length=1, max_length=4)


class KeyOut(ORMModel):
    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [KEY_EXAMPLE]})

    id: uuid.UUID
    name: str
    prefix: str = Field(description="the key's public part, as in tl_<prefix>_...")
    scopes: list[str]
    created_at: UTCDateTime
    last_used_at: UTCDateTime | None = Field(description="updated at most once a minute")
    revoked_at: UTCDateTime | None


class KeyCreated(KeyOut):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{**KEY_EXAMPLE, "key": "tl_4f1a9c2b7d3e_Zm9vYmFy..."}]}
    )

    key: str = Field(description="the key itself: shown only in this response, store it now")
