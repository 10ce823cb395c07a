from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(tags=["operations"])

log = logging.getLogger(__name__)


@router.get(
    "/healthz",
    summary="Liveness: the process answers",
    responses={200: {"content": {"application/json": {"example": {"status": "ok"}}}}},
)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: the database and the broker are reachable",
    responses={
        200: {
            "content": {
                "application/json": {
                    "example": {"status": "ready", "checks": {"database": "ok", "broker": "ok"}}
                }
            }
        },
        503: {
            "description": "a dependency is down; the body says which (the cause is in the "
            "server's log, never in the response: it can hold host names and URLs)",
            "content": {
                "application/json": {
                    "example": {
                        "status": "not_ready",
                        "checks": {"database": "ok", "broker": "unreachable"},
                    }
                }
            },
        },
    },
)
def readyz(request: Request) -> JSONResponse:
    checks: dict[str, str] = {}
    for name, probe in (
        ("database", request.app.state.db.ping),
        ("broker", request.app.state.queue.ping),
    ):
        try:
            probe()
            checks[name] = "ok"
        except Exception:  # any failure means "not ready"
            # The exception text can name the database URL, hosts and users: log it, do not
            # hand it to whoever asks (readiness probes are often reachable without a key).
            log.warning("readiness check %r failed", name, exc_info=True)
            checks[name] = "unreachable"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        status_code=200 if ready else 503,
        content={"status": "ready" if ready else "not_ready", "checks": checks},
    )
