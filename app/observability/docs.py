"""``/docs`` from assets shipped in the package (swagger-ui-bundle), not from a CDN: the docs
work on a machine without internet access, and the page loads no third-party script."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

ASSETS_PATH = "/docs-assets"


def install_local_docs(app: FastAPI, docs_url: str = "/docs") -> None:
    if app.docs_url is not None or app.redoc_url is not None:
        # Created with FastAPI's default docs, which load Swagger UI and ReDoc from a CDN:
        # take those routes out (create_app should pass docs_url=None, redoc_url=None).
        cdn_pages = {app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url}
        app.router.routes[:] = [
            r for r in app.router.routes if getattr(r, "path", None) not in cdn_pages
        ]
        app.docs_url = app.redoc_url = None
    # The API is called with API keys in a header; no OAuth2 flow needs Swagger's redirect page.
    app.swagger_ui_oauth2_redirect_url = None
    app.mount(ASSETS_PATH, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")
    title = f"{app.title} - API docs"

    @app.get(docs_url, include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=title,
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/favicon-32x32.png",
        )
