"""Request ids, the access log and the HTTP metrics, as one pure ASGI middleware.

Pure ASGI (not Starlette's BaseHTTPMiddleware) so request bodies stream through untouched: a
multi-gigabyte dataset upload is never buffered here.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.observability.context import accept_request_id, request_id_var
from app.observability.metrics import HTTP_LATENCY, HTTP_REQUESTS
from app.operations import OperationTable

access_log = logging.getLogger("transferlab.access")

REQUEST_ID_HEADER = "X-Request-ID"
_HEADER_KEY = REQUEST_ID_HEADER.lower().encode("latin-1")


def route_template(scope: Scope, operations: OperationTable | None = None) -> str:
    """The matched route's path template (``/v1/jobs/{job_id}``), never the raw path: one
    time series per route, not one per id. Requests that match no route are "unmatched"."""
    route = scope.get("route")  # set by the router on a full or partial (405) match
    if route is not None:
        template = getattr(route, "path_format", None) or getattr(route, "path", None)
        if template:
            return str(template)
    # Requests refused before routing (no key, body too large) are named by the same table the
    # key check uses.
    if operations is not None:
        op = operations.match(scope.get("method", ""), scope.get("path", ""))
        return op.template if op is not None else "unmatched"
    return "unmatched"


class RequestObservability:
    """Give each HTTP request an id (``X-Request-ID``, in and out), count and time it by route
    template, and write one access log line when it is done."""

    def __init__(self, app: ASGIApp, fastapi_app: Any = None) -> None:
        self.app = app
        self.operations = OperationTable(fastapi_app) if fastapi_app is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for key, value in scope.get("headers", ()):
            if key == _HEADER_KEY:
                incoming = value.decode("latin-1")
                break
        request_id = accept_request_id(incoming)
        token = request_id_var.set(request_id)
        status = 500  # what the client gets if the app fails before it starts a response
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [
                    (k, v) for k, v in message.get("headers", ()) if k.lower() != _HEADER_KEY
                ]
                headers.append((_HEADER_KEY, request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - start
            self._record(scope, status, elapsed)
            request_id_var.reset(token)

    def _record(self, scope: Scope, status: int, elapsed: float) -> None:
        method = scope.get("method", "")
        # Methods are caller-chosen text: unknown ones share one label, or each new word sent
        # without a key would add a time series.
        method = method if method in _METHODS else "OTHER"
        route = route_template(scope, self.operations)
        HTTP_REQUESTS.labels(method=method, route=route, status=str(status)).inc()
        HTTP_LATENCY.labels(method=method, route=route).observe(elapsed)
        extra: dict[str, Any] = {
            "method": method,
            "route": route,
            "path": _printable(scope.get("path", "")),
            "status": status,
            "duration_ms": round(elapsed * 1000, 1),
        }
        access_log.info(
            "%s %s %s %.1f ms", method, extra["path"], status, extra["duration_ms"], extra=extra
        )


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _printable(path: str, limit: int = 1000) -> str:
    """The request path as it may appear in a log line: a decoded %0A would otherwise let a
    caller without a key write a forged line into the text log."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", path[:limit])
