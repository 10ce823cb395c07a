"""API keys at the edge: an ASGI middleware that authenticates before any body is read.

FastAPI reads a form body before it resolves dependencies, so a dependency alone would spool a
2 GiB unauthenticated upload to disk before refusing it. The middleware therefore decides from the
route and the Authorization header alone. Each route declares the scope it needs with
``dependencies=[require_scope("train")]``; the same object is the middleware's source of truth
(read once from the routes) and, as a dependency, documents the bearer scheme in OpenAPI and checks
the scope again inside the request (defence in depth). A /v1 route without a scope makes
``create_app`` fail: nothing under /v1 is open by accident.
"""

from __future__ import annotations

import logging
import threading
import time

import anyio
from fastapi import FastAPI, Request, Security
from fastapi.params import Depends as DependsParam
from fastapi.security import HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.limits import send_error
from app.db.session import Database
from app.errors import ServiceError
from app.operations import OperationTable
from app.services import keys as key_service
from app.services.keys import Principal

log = logging.getLogger(__name__)

# How often a key's last_used_at is written at most: not on every request.
TOUCH_EVERY_S = 60.0


class Unauthenticated(ServiceError):
    status_code = 401
    code = "unauthenticated"


class InsufficientScope(ServiceError):
    status_code = 403
    code = "insufficient_scope"


class _ScopeCheck(HTTPBearer):
    """The dependency behind ``require_scope``: the bearer scheme itself (so OpenAPI documents
    it), with the scope it needs as an attribute.

    NOTE the scheme itself rather than a dependency on an ``HTTPBearer``: FastAPI solves every
    dependency on every request, and the sub-dependency cost each request about 25 us of the
    event loop's time (a prediction's route costs about 0.6 ms)."""

    def __init__(self, scope: str) -> None:
        super().__init__(
            auto_error=False,
            scheme_name="ApiKey",
            description="An API key: `Authorization: Bearer tl_...` (`transferlab keys create`)",
        )
        self.scope = scope

    # async: it only reads request.state, and FastAPI would run a plain def in its threadpool
    # (a hand-off there and back on every request; see app/api/deps.py).
    async def __call__(self, request: Request) -> Principal:  # type: ignore[override]
        principal: Principal | None = getattr(request.state, "principal", None)
        if principal is None:  # the middleware lets no such request through; never trust that
            raise Unauthenticated("this endpoint needs an API key")
        if not principal.allows(self.scope):
            raise _insufficient(principal, self.scope)
        return principal


def require_scope(scope: str) -> DependsParam:
    if scope not in key_service.SCOPES:
        raise ValueError(f"unknown scope {scope!r}")
    # Security(..., scopes=) puts the scope into the operation's OpenAPI security requirement,
    # {"ApiKey": ["train"]}: clients see it, and the middleware reads it from there.
    return Security(_ScopeCheck(scope), scopes=[scope])


def current_principal(request: Request) -> Principal:
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:
        raise Unauthenticated("this endpoint needs an API key")
    return principal


def _insufficient(principal: Principal, scope: str) -> InsufficientScope:
    return InsufficientScope(
        f"the API key {principal.name!r} lacks the {scope!r} scope this endpoint needs; use a key "
        f"with it (`transferlab keys create --scopes {scope}`)",
        details={"required": scope, "granted": sorted(principal.scopes)},
    )


def check_route_scopes(app: FastAPI) -> None:
    """Every operation under /v1 declares exactly one scope: nothing there is open by accident."""
    for op in OperationTable(app).operations:
        if len(op.scopes) > 1:
            raise RuntimeError(f"{op.method} {op.template} declares several scopes: {op.scopes}")
        if not op.scopes and op.template.startswith("/v1"):
            raise RuntimeError(f"{op.method} {op.template} declares no scope: add require_scope")


class KeyCache:
    """Keys checked recently, by hash, so that a prediction costs no database round trip."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._items: dict[str, tuple[Principal | None, float]] = {}
        self._touched: dict[str, float] = {}
        self._lock = threading.Lock()

    def get(self, digest: str) -> tuple[bool, Principal | None]:
        with self._lock:
            hit = self._items.get(digest)
            if hit is None or hit[1] < time.monotonic():
                return False, None
            return True, hit[0]

    def put(self, digest: str, principal: Principal | None) -> None:
        with self._lock:
            if len(self._items) > 10_000:  # a flood of random keys must not grow it forever
                self._items.clear()
            self._items[digest] = (principal, time.monotonic() + self.ttl_s)

    def due_for_touch(self, digest: str) -> bool:
        now = time.monotonic()
        with self._lock:
            if now - self._touched.get(digest, -TOUCH_EVERY_S) < TOUCH_EVERY_S:
                return False
            self._touched[digest] = now
            return True

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class ApiKeyAuth:
    """401/403 in the error envelope before the app (and its body parsing) runs."""

    def __init__(
        self, app: ASGIApp, *, fastapi_app: FastAPI, db: Database, cache: KeyCache
    ) -> None:
        self.app = app
        self.fastapi_app = fastapi_app
        self.db = db
        self.cache = cache
        self.operations = OperationTable(fastapi_app)

    def _required_scope(self, scope: Scope) -> str | None:
        # A known path with another method (the router answers 405) needs that path's key; any
        # unknown path under /v1 needs one too, so probing tells nothing to a caller without one.
        op = self.operations.match(scope["method"], scope["path"])
        if op is not None and op.scopes:
            return next(iter(op.scopes))
        return "read" if op is None and scope["path"].startswith("/v1/") else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        needed = self._required_scope(scope)
        if needed is None:
            await self.app(scope, receive, send)
            return
        presented = _bearer_token(scope)
        if presented is None:
            await _reject(
                send,
                Unauthenticated(
                    "this endpoint needs an API key: send `Authorization: Bearer <key>` (create "
                    "one with `transferlab keys create`)"
                ),
            )
            return
        principal = await self._authenticate(presented)
        if principal is None:
            await _reject(
                send,
                Unauthenticated(
                    "the API key is not valid (unknown, malformed or revoked)",
                    code="invalid_api_key",
                ),
            )
            return
        if not principal.allows(needed):
            await _reject(send, _insufficient(principal, needed))
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    async def _authenticate(self, presented: str) -> Principal | None:
        digest = key_service.hash_key(presented)
        cached, principal = self.cache.get(digest)
        if not cached:
            principal = await anyio.to_thread.run_sync(self._lookup, presented)
            self.cache.put(digest, principal)
        if principal is not None and self.cache.due_for_touch(digest):
            await anyio.to_thread.run_sync(self._touch, principal)
        return principal

    def _lookup(self, presented: str) -> Principal | None:
        with self.db.session_scope() as session:
            return key_service.authenticate(session, presented)

    def _touch(self, principal: Principal) -> None:
        # Best effort: a busy or briefly unreachable database must not fail a good request.
        try:
            with self.db.session_scope() as session:
                key_service.touch(session, principal.key_id)
        except Exception:
            log.warning("could not record the last use of key %s", principal.name, exc_info=True)


def _bearer_token(scope: Scope) -> str | None:
    for name, value in scope.get("headers") or []:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            token = token.strip()
            if scheme.lower() == "bearer" and token and len(token) <= 200:
                return token
            return None
    return None


async def _reject(send: Send, error: ServiceError) -> None:
    headers = (
        [(b"www-authenticate", b'Bearer realm="transferlab"')] if error.status_code == 401 else []
    )
    await send_error(send, error.status_code, error.code, error.message, error.details, headers)
