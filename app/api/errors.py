"""Turn every error into one envelope: ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app.errors import ServiceError

log = logging.getLogger(__name__)

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _envelope(
    status: int,
    code: str,
    message: str,
    details: dict | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details or {}}}
    return JSONResponse(status_code=status, content=body, headers=headers)


def _field(loc: tuple) -> str:
    # ("body", "hyperparameters", "epochs") -> "hyperparameters.epochs"
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "form", "header")]
    return ".".join(parts) or ".".join(str(p) for p in loc)


def _allowed_methods(request: Request) -> list[str]:
    # Ask the routes themselves (included routers are nested, so no flat list to read).
    routes = request.app.router.routes
    return [
        method
        for method in METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes
        )
    ]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return _envelope(exc.status_code, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": _field(tuple(e["loc"])), "message": e["msg"], "type": e["type"]}
            for e in exc.errors()
        ]
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return _envelope(422, "validation_error", summary, {"errors": errors})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = str(exc.detail)
        if exc.status_code == 400 and detail.startswith("Too many files"):
            # The multipart parser's own cap (1,000 parts) is hit before our handler runs.
            limit = request.app.state.settings.max_predict_files
            return _envelope(
                413,
                "too_many_files",
                f"too many files in one request; the limit is {limit}",
                {"limit": limit},
            )
        if exc.status_code == 400:
            # FastAPI and Starlette raise these for a body they cannot parse (broken multipart
            # framing, too many form fields): the client's bytes, not our bug.
            return _envelope(
                400,
                "malformed_body",
                f"the request body could not be parsed ({detail}); send valid JSON or "
                "multipart/form-data as the endpoint documents",
            )
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # A 405 must list the methods the resource has. Starlette's router names only those
            # of the first route on the path, and each method is its own route here.
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return _envelope(exc.status_code, code, detail, headers=headers or None)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return _envelope(500, "internal_error", "an unexpected error occurred; see the server log")
