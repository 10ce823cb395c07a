"""Size and mode histograms, class balance and the warnings of the dataset report."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from app.storage.datasets import IngestLimits, ingest_archive

from ._build import write_zip


def image(size: tuple[int, int], mode: str = "RGB", shade: int = 0, fmt: str = "PNG") -> bytes:
    """A distinct picture per shade: a bright rectangle whose place depends on the shade."""
    img = Image.new(mode, size, 0)
    w, h = size
    box = (shade % 5 * w // 8, shade // 5 * h // 8, w // 2 + shade % 5 * w // 8, h - 1)
    img.paste(255 if mode in ("L", "1") else (255, 200, 100), box)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def ingest(tmp_path: Path, dest: Path, entries: dict):
    return ingest_archive(write_zip(tmp_path / "s.zip", entries), dest, IngestLimits())


def test_histograms_balance_and_warnings(tmp_path: Path, dest: Path) -> None:
    entries = {f"big/{k}.png": image((64, 48), "RGB", shade=k) for k in range(12)}
    entries["small/tiny.png"] = image((16, 20), "L", shade=3)
    entries["small/strip.png"] = image((300, 50), "RGB", shade=4)
    report = ingest(tmp_path, dest, entries)
    stats = report.statistics
    assert stats["sizes"]["shorter_side_histogram"] == {"<32": 1, "32-63": 13}
    assert stats["sizes"]["most_common"][0] == {"size": "64x48", "count": 12}
    assert stats["sizes"]["width"] == {"min": 16, "median": 64, "max": 300}
    assert stats["modes"] == {"L": 1, "RGB": 13}
    balance = stats["class_balance"]["train"]
    assert balance == {
        "largest": {"class": "big", "images": 12},
        "smallest": {"class": "small", "images": 2},
        "imbalance_ratio": 6.0,
    }
    warnings = {w["code"]: w for w in report.warnings}
    assert warnings["tiny_images"]["count"] == 1
    assert warnings["tiny_images"]["examples"] == ["train/small/tiny.png"]
    assert warnings["extreme_aspect"]["examples"] == ["train/small/strip.png"]
    assert "class_imbalance" not in warnings  # 6x is under the 10x warning


def test_class_imbalance_warns_per_split(tmp_path: Path, dest: Path) -> None:
    entries = {f"train/many/{k}.png": image((40, 40), shade=k) for k in range(22)}
    entries["train/few/0.png"] = image((40, 40), "L", shade=1)
    entries["train/few/1.png"] = image((40, 40), "L", shade=2)
    entries["val/many/0.png"] = image((40, 40), shade=23)
    entries["val/few/0.png"] = image((40, 40), "L", shade=24)
    report = ingest(tmp_path, dest, entries)
    imbalance = [w for w in report.warnings if w["code"] == "class_imbalance"]
    assert len(imbalance) == 1
    assert (
        "in train, class 'many' has 22 images and 'few' only 2 (11.0x)" in imbalance[0]["message"]
    )
    assert report.statistics["class_balance"]["val"]["imbalance_ratio"] == 1.0
    assert report.statistics["modes"] == {"L": 3, "RGB": 23}
