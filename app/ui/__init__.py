"""The web dashboard at ``/ui``: static files, no build step (plain ES modules, SVG charts).

The pages are open; every ``/v1`` call they make sends the API key the user signed in with (kept
in sessionStorage, so it goes when the tab closes, and sent as ``Authorization: Bearer``). The
live job stream is read with ``fetch()``, which can send that header, rather than EventSource,
which cannot: the long-lived key never goes into a URL (logs, history, Referer).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

STATIC = Path(__file__).parent / "static"
# Only our own scripts, styles and API; images from blob: URLs (previews of files dropped for
# prediction); no framing (clickjacking). An injected script could read the key from
# sessionStorage, so no inline script runs either.
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
        b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    # The files are small and change with each release: revalidate rather than cache stale.
    (b"cache-control", b"no-cache"),
]


class _Secured(StaticFiles):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await super().__call__(scope, receive, send_with_headers)


def install_ui(app: FastAPI, path: str = "/ui") -> None:
    @app.get(path, include_in_schema=False)
    def ui_root() -> RedirectResponse:
        return RedirectResponse(f"{path}/")

    app.mount(path, _Secured(directory=str(STATIC), html=True), name="ui")
