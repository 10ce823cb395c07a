"""The dataset report over HTTP: duplicates, dedupe, and the leakage warning on jobs."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from PIL import Image

from tests.api.conftest import error_code
from tests.storage._build import digit_image


def digit_png(i: int, size: int = 40) -> bytes:
    canvas = Image.new("L", (28, 28), 0)
    canvas.paste(digit_image(i, 8).resize((20, 20), Image.Resampling.BILINEAR), (4, 4))
    buf = io.BytesIO()
    canvas.resize((size, size), Image.Resampling.BICUBIC).save(buf, format="PNG")
    return buf.getvalue()


def leaky_zip(tmp_path: Path) -> Path:
    """train/val with one val image copied from train (resized) and one exact copy in train."""
    path = tmp_path / "leaky.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for k in range(4):
            zf.writestr(f"train/a/{k}.png", digit_png(k))
            zf.writestr(f"train/b/{k}.png", digit_png(20 + k))
        zf.writestr("train/a/0-again.png", digit_png(0))
        zf.writestr("val/a/v.png", digit_png(40))
        zf.writestr("val/b/from-train.png", digit_png(21, size=60))
    return path


def post(client, path: Path, **data):
    with path.open("rb") as fh:
        return client.post("/v1/datasets", files={"file": (path.name, fh)}, data=data)


def test_report_has_duplicates_leakage_and_statistics(client, tmp_path):
    r = post(client, leaky_zip(tmp_path))
    assert r.status_code == 201, r.text
    report = r.json()["report"]
    assert report["duplicates"]["exact"]["groups"] == 1
    assert report["duplicates"]["near"]["across_splits"] == 1
    assert report["leakage"]["val_images"] == 1 and report["leakage"]["fraction"] == 0.5
    assert report["leakage"]["examples"] == [
        {"val": "val/b/from-train.png", "train": ["train/b/1.png"]}
    ]
    assert report["statistics"]["modes"] == {"L": 11}
    assert {w["code"] for w in report["warnings"]} == {"val_leakage"}
    assert r.json()["num_images"] == 11


def test_dedupe_exact_over_http(client, tmp_path):
    r = post(client, leaky_zip(tmp_path), dedupe="exact")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["num_images"] == 10
    assert body["report"]["dedupe"]["removed"] == 1
    assert body["report"]["leakage"]["val_images"] == 1  # across splits: reported, never dropped


def test_unknown_dedupe_mode_is_a_422(client, tmp_path, settings):
    r = post(client, leaky_zip(tmp_path), dedupe="fuzzy")
    assert r.status_code == 422
    assert error_code(r) == "validation_error"
    assert list(settings.layout.datasets.iterdir()) == []


def test_a_job_on_a_leaky_dataset_warns_and_its_metrics_say_so(client, tmp_path, digits_zip):
    leaky = post(client, leaky_zip(tmp_path)).json()["id"]
    clean = post(client, digits_zip(per_class=4, name="clean.zip")).json()["id"]
    spec = {
        "strategy": "finetune",
        "base_model": "timm:test_resnet",
        "pretrained": False,
        "hyperparameters": {"epochs": 1, "image_size": 32},
    }
    job = client.post("/v1/jobs", json={**spec, "dataset_id": leaky}).json()
    (warning,) = job["warnings"]
    assert warning["code"] == "val_leakage"
    assert warning["val_images"] == 1 and warning["fraction"] == 0.5
    assert "1 of 2 validation images (50.0%)" in warning["message"]
    assert client.get(f"/v1/jobs/{job['id']}").json()["warnings"] == [warning]
    metrics = client.get(f"/v1/jobs/{job['id']}/metrics").json()
    assert metrics["warnings"] == [warning]
    other = client.post("/v1/jobs", json={**spec, "dataset_id": clean}).json()
    assert other["warnings"] == []
