"""/docs is served from the package's own Swagger UI files: no CDN, works offline."""

from __future__ import annotations

import re


def test_docs_use_only_local_assets(client):
    r = client.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert "cdn" not in html.lower() and "http://" not in html and "https://" not in html
    urls = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert len(urls) == 3  # script, stylesheet, icon
    for url in urls:
        assert url.startswith("/docs-assets/"), url
        asset = client.get(url)
        assert asset.status_code == 200 and asset.content, url
    assert "url: '/openapi.json'" in html
    assert client.get("/openapi.json").status_code == 200


def test_no_cdn_pages_and_docs_not_in_the_schema(client):
    assert client.get("/redoc").status_code == 404
    paths = client.get("/openapi.json").json()["paths"]
    assert "/docs" not in paths and not any(p.startswith("/docs-assets") for p in paths)
