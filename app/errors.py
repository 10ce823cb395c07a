"""The one error type that crosses the service's edge.

Every failure a client can act on is a ``ServiceError`` (or a subclass) with an HTTP status and a
stable machine-readable ``code``. ``app.api.errors`` turns it into
``{"error": {"code", "message", "details"}}``; nothing else in the project raises HTTPException.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    status_code: int = 400
    code: str = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status_code: int | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code
        self.details = details or {}
        self.headers = headers or {}  # e.g. Retry-After on 503 overloaded


class NotFound(ServiceError):
    status_code = 404
    code = "not_found"


class Conflict(ServiceError):
    status_code = 409
    code = "conflict"


class InvalidInput(ServiceError):
    status_code = 422
    code = "invalid_input"


class PayloadTooLarge(ServiceError):
    status_code = 413
    code = "payload_too_large"
