from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.naming import SLUG_PATTERN  # noqa: F401  (re-exported for the schemas)

T = TypeVar("T")

# Deep pages are refused rather than sent to the database as a 64-bit overflow.
MAX_OFFSET = 1_000_000


def as_utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes even for timezone-aware columns; every timestamp is
    # stored in UTC, so say so, and clients always get an offset (…Z) whatever the database.
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


UTCDateTime = Annotated[datetime, AfterValidator(as_utc)]


class ORMModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int = Field(description="number of items across all pages")
    limit: int
    offset: int


class ErrorBody(BaseModel):
    code: str = Field(description="stable, machine-readable error code", examples=["not_found"])
    message: str = Field(description="what went wrong and what to do about it")
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorResponse(BaseModel):
    error: ErrorBody

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": {
                        "code": "dataset_not_found",
                        "message": "dataset 6f1c... does not exist",
                        "details": {},
                    }
                }
            ]
        }
    )


# A download: the zip's bytes (generated clients hand them back as a file, not as text).
ZIP_RESPONSE: dict[str, Any] = {
    "description": "a zip archive",
    "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
}


def error_responses(*codes: int, auth: bool = True) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses an endpoint can return (with ``auth``, also 401 and
    403, which every endpoint that needs a key can return)."""
    codes = tuple(sorted({*codes, *((401, 403) if auth else ())}))
    descriptions = {
        400: "Malformed request",
        401: "Missing or invalid API key",
        403: "The API key lacks the scope this endpoint needs",
        404: "Not found",
        409: "Conflict with the current state",
        413: "Too large",
        415: "Unsupported media type",
        422: "Invalid input",
        503: "A dependency is unavailable",
    }
    return {c: {"model": ErrorResponse, "description": descriptions.get(c, "Error")} for c in codes}
