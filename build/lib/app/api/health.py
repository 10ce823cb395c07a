from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(tags=["operations"])


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
            "description": "a dependency is down; the body says which",
            "content": {
                "application/json": {
                    "example": {
                        "status": "not_ready",
                        "checks": {"database": "ok", "broker": "error: OperationalError: ..."},
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
        except Exception as exc:  # any failure means "not ready"; the message says why
            checks[name] = f"error: {type(exc).__name__}: {exc}"[:300]
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        status_code=200 if ready else 503,
        content={"status": "ready" if ready else "not_ready", "checks": checks},
    )
