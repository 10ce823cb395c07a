"""``install_observability``: request ids, access log, HTTP metrics, ``/metrics`` and ``/docs``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.params import Depends
from fastapi.responses import Response
from prometheus_client.exposition import choose_encoder
from starlette.types import ASGIApp

from app.observability.docs import install_local_docs
from app.observability.metrics import create_registry
from app.observability.middleware import RequestObservability
from app.settings import Settings

METRICS_EXAMPLE = """\
# HELP transferlab_http_requests_total HTTP requests by route template, method and status code
# TYPE transferlab_http_requests_total counter
transferlab_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="200"} 42.0
# HELP transferlab_jobs jobs by status
# TYPE transferlab_jobs gauge
transferlab_jobs{status="queued"} 3.0
transferlab_jobs{status="running"} 1.0
# HELP transferlab_queue_depth messages waiting in the broker queue
# TYPE transferlab_queue_depth gauge
transferlab_queue_depth{queue="training"} 2.0
"""


def install_observability(
    app: FastAPI,
    settings: Settings,
    *,
    dependencies: Sequence[Depends] | None = None,
    responses: dict[int | str, dict[str, Any]] | None = None,
) -> None:
    """Add request ids, the access log and request metrics to ``app``, and the ``/metrics`` and
    ``/docs`` routes. ``dependencies`` guard ``/metrics`` (e.g. an API key with a scope);
    ``responses`` documents the errors they can answer with (OpenAPI ``responses`` entries).

    Needs ``app.state.db``, ``app.state.queue`` and ``app.state.settings`` at scrape time.
    """
    _wrap_outermost(app, RequestObservability)
    registry = create_registry(app.state)
    router = APIRouter(tags=["operations"], dependencies=list(dependencies or []))

    @router.get(
        "/metrics",
        summary="Prometheus metrics: requests, jobs, queue depth, predictions, model cache",
        # Plain `Response` (no media type of its own), so the error entries in `responses` are
        # documented as the JSON they are, not as text/plain.
        response_class=Response,
        responses={
            200: {
                "description": "Prometheus text exposition format (OpenMetrics on request)",
                "content": {
                    "text/plain": {"schema": {"type": "string"}, "example": METRICS_EXAMPLE}
                },
            },
            **(responses or {}),
        },
    )
    def metrics(request: Request) -> Response:
        # sync: the scrape-time collector queries the database, so it runs in a thread.
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(content=encode(registry), media_type=content_type)

    app.include_router(router)
    install_local_docs(app)


def _wrap_outermost(app: FastAPI, middleware: Any) -> None:
    """Put ``middleware`` outside every other one, ServerErrorMiddleware included.

    ``app.add_middleware`` would place it wherever create_app happens to call this, and always
    inside Starlette's ServerErrorMiddleware: a 500 response, a request refused by a size or
    host check added later, would then get no request id, no metric and no access line.
    """
    build = app.build_middleware_stack

    def build_with_observability() -> ASGIApp:
        return middleware(build(), app)

    app.build_middleware_stack = build_with_observability  # type: ignore[method-assign]
