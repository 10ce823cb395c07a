"""Findings of the second attack (on this branch, before it landed), one test each."""

from __future__ import annotations

import io
import logging
import uuid

from PIL import Image

from app.api.limits import HostAllowList
from app.engine.inference import create_preprocessor
from app.errors import PayloadTooLarge
from app.serving.decode import open_all
from tests.serving.conftest import PREPROCESSING
from worker.features import _cell
from worker.liveness import touch


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, format="PNG")
    return buf.getvalue()


def test_a_request_of_many_large_images_is_refused_before_decoding():
    big = _png(3000, 3000)  # 9 M pixels in a few KB
    pre = create_preprocessor(PREPROCESSING)
    opened = open_all([("a.png", big)] * 4, pre, max_pixels=40_000_000)  # 36 M: fits
    assert [img.size for img in opened] == [(3000, 3000)] * 4
    for img in opened:
        img.close()
    try:
        open_all([("a.png", big)] * 5, pre, max_pixels=40_000_000)
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


def test_a_huge_integer_option_is_a_422_not_a_500(client, digits_zip):
    from tests.api.conftest import error_code, upload

    dataset_id = upload(client, digits_zip(per_class=3, name="h.zip")).json()["id"]
    for options in ({"alpha": 10**400}, {"freeze_patterns": [10**400]}):
        r = client.post(
            "/v1/jobs",
            json={"strategy": "l2sp", "base_model": "timm:test_resnet", "dataset_id": dataset_id,
                  "options": options},
        )  # fmt: skip
        assert r.status_code == 422, r.text
        assert error_code(r) == "validation_error"


def test_invented_methods_share_one_metrics_label(client):
    from prometheus_client import REGISTRY

    def other() -> float:
        labels = {"method": "OTHER", "route": "/healthz", "status": "405"}
        return REGISTRY.get_sample_value("transferlab_http_requests_total", labels) or 0.0

    before = other()
    for word in ("X0", "X1", "PROPFIND"):
        client.request(word, "/healthz")
    assert other() == before + 3
    assert (
        REGISTRY.get_sample_value(
            "transferlab_http_requests_total",
            {"method": "X1", "route": "/healthz", "status": "405"},
        )
        is None
    )


def test_uploads_racing_with_one_key_leave_one_dataset(client, settings, digits_zip):
    # Different archives under one key, sent at once: most pass the replay check together and
    # meet at the unique constraint; the losers answer 409 and must remove what they extracted.
    import threading

    from tests.api.conftest import error_code

    paths = [digits_zip(per_class=3 + i, name=f"race{i}.zip") for i in range(4)]
    results: list = []

    def send(path) -> None:
        with path.open("rb") as fh:
            files = {"file": ("r.zip", fh)}
            results.append(
                client.post("/v1/datasets", files=files, headers={"Idempotency-Key": "race"})
            )

    threads = [threading.Thread(target=send, args=(p,)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.status_code for r in results) == [201, 409, 409, 409]
    assert all(error_code(r) == "idempotency_key_reused" for r in results if r.status_code == 409)
    assert client.get("/v1/datasets").json()["total"] == 1
    assert len(list(settings.layout.datasets.iterdir())) == 1
