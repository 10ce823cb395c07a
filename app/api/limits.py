"""Refuse oversized request bodies before their bytes are parsed or spooled to disk, and requests
for hosts the service does not serve."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send


@dataclass(frozen=True)
class BodyRule:
    """Bodies of requests whose path matches ``pattern`` may hold at most ``max_bytes``."""

    pattern: re.Pattern[str]
    max_bytes: int
    code: str
    hint: str


class BodySizeLimit:
    """413 in the error envelope for a request body over its limit.

    The first rule whose pattern matches the path applies; other requests get ``default``. A
    declared Content-Length is checked up front; a chunked body is counted as it arrives, so a
    client cannot stream an unbounded body onto the server's disk or into its memory.
    """

    def __init__(self, app: ASGIApp, *, rules: list[BodyRule], default: BodyRule) -> None:
        self.app, self.rules, self.default = app, rules, default

    def _rule(self, path: str) -> BodyRule:
        return next((r for r in self.rules if r.pattern.fullmatch(path)), self.default)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        rule = self._rule(scope["path"])
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > rule.max_bytes:
            await _reject(send, rule)
            return
        seen = 0
        too_large = False
        replied = False

        async def counting_receive() -> Message:
            nonlocal seen, too_large
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > rule.max_bytes:
                    # Stop reading: to the app the client went away. Whatever it answers to that
                    # (FastAPI: a 400 about the body) is replaced by the 413 below.
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal replied
            if too_large:
                if not replied:
                    replied = True
                    await _reject(send, rule)
                return
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not too_large:
                raise
        if too_large and not replied:
            await _reject(send, rule)


async def _reject(send: Send, rule: BodyRule) -> None:
    await send_error(
        send,
        413,
        rule.code,
        f"the request body is larger than the limit of {rule.max_bytes} bytes; {rule.hint}",
        {"limit_bytes": rule.max_bytes},
    )


async def send_error(
    send: Send,
    status: int,
    code: str,
    message: str,
    details: dict | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """An error-envelope response from ASGI middleware, closing the connection (the request body
    may be left unread)."""
    body = json.dumps({"error": {"code": code, "message": message, "details": details or {}}})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body.encode()})


_HOST = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(?::[0-9]{1,5})?")


class HostAllowList:
    """400 ``host_not_allowed`` for a Host header outside the list (DNS rebinding).

    Entries are host names, optionally ``*.example.com``; the port is ignored.
    """

    def __init__(self, app: ASGIApp, *, allowed: list[str]) -> None:
        self.app = app
        self.exact = {h.lower() for h in allowed if not h.startswith("*.")}
        self.suffixes = tuple(h[1:].lower() for h in allowed if h.startswith("*."))

    def allows(self, host: str) -> bool:
        # host, host:port or [v6]:port, and nothing else ("127.0.0.1:x@evil.com" is refused).
        match = _HOST.fullmatch(host.lower())
        if match is None:
            return False
        name = match.group(1)
        return name in self.exact or (bool(self.suffixes) and name.endswith(self.suffixes))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
        if not self.allows(host):
            await send_error(
                send,
                400,
                "host_not_allowed",
                f"the Host header {host[:100]!r} is not one this service answers to; add it to "
                "TRANSFERLAB_ALLOWED_HOSTS",
            )
            return
        await self.app(scope, receive, send)
