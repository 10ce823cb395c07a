"""The OpenAPI document as client generators need it.

FastAPI's defaults generate poor clients (issue 11, tried with openapi-python-client):
- operationIds such as ``create_job_v1_jobs_post``: we use the route function's name
  (``create_job``), which is unique across the app (``check_operation_ids`` makes sure);
- file fields as ``{"type": "string", "contentMediaType": "application/octet-stream"}``, the
  OpenAPI 3.1 spelling that generators read as a plain string, so an upload sent the file's name
  and got 422 "Expected UploadFile, received str": we add ``format: binary``, which every
  generator types as a file;
- 422 documented as FastAPI's ``HTTPValidationError`` (``{"detail": [...]}``), a body this API
  never sends: every 422 is our error envelope (``app.api.errors``), so it says so.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

ERROR_REF = "#/components/schemas/ErrorResponse"
FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")


def operation_id(route: APIRoute) -> str:
    """``generate_unique_id_function`` for FastAPI: the route function's name."""
    return route.name


def check_operation_ids(app: FastAPI) -> None:
    """Two routes whose functions share a name would share an operationId; refuse at start."""
    names = Counter(
        op["operationId"] for ops in app.openapi().get("paths", {}).values() for op in ops.values()
    )
    duplicates = sorted(n for n, count in names.items() if count > 1)
    if duplicates:
        raise RuntimeError(f"route functions share a name (their operationId): {duplicates}")


def install_openapi(app: FastAPI) -> None:
    """Wrap ``app.openapi``: FastAPI's document, fixed once, then served from the cache."""

    build = app.openapi  # FastAPI's: builds the document once and caches it on the app
    fixed: list[dict[str, Any]] = []

    def openapi() -> dict[str, Any]:
        if not fixed:
            fixed.append(fix_schema(build()))
        return fixed[0]

    app.openapi = openapi  # type: ignore[method-assign]


def fix_schema(schema: dict[str, Any]) -> dict[str, Any]:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for component in components.values():
        _binary_files(component)
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            response = operation.get("responses", {}).get("422")
            if response is not None:
                response["description"] = "Invalid input"
                response["content"] = {"application/json": {"schema": {"$ref": ERROR_REF}}}
    for name in FASTAPI_VALIDATION_SCHEMAS:
        components.pop(name, None)
    return schema


def _binary_files(node: Any) -> None:
    """``contentMediaType: application/octet-stream`` (an UploadFile) -> ``format: binary``."""
    if isinstance(node, dict):
        if node.get("type") == "string" and node.get("contentMediaType"):
            node.pop("contentMediaType")
            node["format"] = "binary"
        for value in node.values():
            _binary_files(value)
    elif isinstance(node, list):
        for value in node:
            _binary_files(value)
