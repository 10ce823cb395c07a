"""Findings of the second attack (on this branch, before it landed), one test each."""

from __future__ import annotations

import io
import logging
import uuid

from PIL import Image

from app.api.limits import HostAllowList
from app.errors import PayloadTooLarge
from app.serving.predict import _check_total_pixels
from worker.features import _cell
from worker.liveness import touch


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, format="PNG")
    return buf.getvalue()


def test_a_request_of_many_large_images_is_refused_before_decoding():
    big = _png(3000, 3000)  # 9 M pixels in a few KB
    _check_total_pixels([("a.png", big)] * 4, budget=40_000_000)  # 36 M: fits
    try:
        _check_total_pixels([("a.png", big)] * 5, budget=40_000_000)
    except PayloadTooLarge as exc:
        assert exc.code == "predict_too_large"
        assert exc.details == {"limit_pixels": 40_000_000, "pixels": 45_000_000}
    else:
        raise AssertionError("45 M pixels passed a 40 M budget")


def test_the_host_allow_list_takes_the_whole_header():
    hosts = HostAllowList(None, allowed=["127.0.0.1", "*.internal", "[::1]"])  # type: ignore[arg-type]
    for good in ("127.0.0.1", "127.0.0.1:8000", "a.internal:1", "[::1]:80"):
        assert hosts.allows(good), good
    for bad in ("127.0.0.1:evil.com", "127.0.0.1:8765@evil.com", "evil.com", "", "127.0.0.1 "):
        assert not hosts.allows(bad), bad


def test_the_access_log_escapes_control_characters(client, caplog):
    with caplog.at_level(logging.INFO, logger="transferlab.access"):
        client.get("/v1/x%0A2026-11-29 INFO transferlab.access POST /v1/keys 201")
    lines = [r.getMessage() for r in caplog.records if r.name == "transferlab.access"]
    assert lines and all("\n" not in line for line in lines)
    assert any("\\x0a2026-11-29" in line for line in lines)


def test_feature_index_cells_cannot_be_formulas():
    assert _cell('=HYPERLINK("http://x")') == '\'=HYPERLINK("http://x")'
    assert _cell("@SUM(1+1)").startswith("'") and _cell("-1").startswith("'")
    assert _cell("cat/001.png") == "cat/001.png"


def test_the_liveness_file_replaces_a_planted_symlink(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    alive = tmp_path / f"alive-{uuid.uuid4().hex}"
    alive.symlink_to(victim)
    touch(alive)
    assert victim.read_text() == "precious"
    assert not alive.is_symlink() and alive.read_text().strip().isdigit()
