"""Unlabeled datasets (kind "unlabeled"): images in any folder layout, the same safety rules."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from app.storage.datasets import DatasetRejected, IngestLimits, ingest_archive, load_manifest

from ._build import digit_jpeg, digit_png, truncated_png, write_tar, write_zip

LIMITS = IngestLimits()
ZEROS = b"\0" * (20 * 2**20)


def nested() -> dict[str, bytes | None]:
    """Images at the root, one level and three levels down, with a copy and two bad files."""
    return {
        "a.png": digit_png(0, size=32),
        "photos/": None,
        "photos/b.jpg": digit_jpeg(1, size=32),
        "photos/2024/june/c.png": digit_png(2, size=32),
        "photos/2024/june/c-copy.png": digit_png(2, size=32),  # the same bytes as c.png
        "other/d.png": digit_png(3, size=32),
        "other/notes.txt": b"not an image",
        "other/broken.png": truncated_png(4),
        "__MACOSX/._a.png": b"resource fork",
        ".DS_Store": b"x",
    }


@pytest.mark.parametrize("fmt", ["zip", "tar"])
def test_nested_folders_are_images_not_classes(tmp_path: Path, dest: Path, fmt: str) -> None:
    writer = write_zip if fmt == "zip" else write_tar
    report = ingest_archive(writer(tmp_path / f"u.{fmt}", nested()), dest, LIMITS, kind="unlabeled")
    assert report.num_images == 5
    assert report.classes == [] and report.splits == {}
    assert {r["path"]: r["reason"] for r in report.rejected}.keys() == {
        "other/notes.txt", "other/broken.png", "__MACOSX/._a.png", ".DS_Store"
    }  # fmt: skip
    stored = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert stored == [
        "images/a.png", "images/other/d.png", "images/photos/2024/june/c-copy.png",
        "images/photos/2024/june/c.png", "images/photos/b.jpg", "manifest.json",
    ]  # fmt: skip
    out = report.to_dict()
    # No labels: no classes, splits or leakage; counts, rejections, statistics and duplicates.
    assert not {"classes", "splits", "leakage", "kind"} & set(out)
    assert out["num_images"] == 5 and out["duplicates"]["exact"]["groups"] == 1
    assert out["statistics"]["sizes"]["most_common"] == [{"size": "32x32", "count": 5}]
    manifest = load_manifest(dest)
    assert manifest.kind == "unlabeled" and manifest.classes == []
    assert manifest.train == [] and manifest.val == []
    assert manifest.all_paths() == [p for p in stored if p.startswith("images/")]
    assert json.loads((dest / "manifest.json").read_text())["kind"] == "unlabeled"


def test_dedupe_keeps_one_of_each_copy(tmp_path: Path, dest: Path) -> None:
    archive = write_zip(tmp_path / "u.zip", nested())
    report = ingest_archive(archive, dest, LIMITS, kind="unlabeled", dedupe="exact")
    assert report.num_images == 4
    assert report.dedupe["removed"] == 1
    assert len(load_manifest(dest).images) == 4


def test_a_class_layout_is_read_as_plain_images(tmp_path: Path, dest: Path) -> None:
    """A labelled archive uploaded as unlabeled: folder names are ignored, a lone folder too."""
    entries = {"only/x.png": digit_png(0), "only/y.png": digit_png(1)}
    report = ingest_archive(write_zip(tmp_path / "u.zip", entries), dest, LIMITS, kind="unlabeled")
    assert report.num_images == 2  # one class folder would be refused as a labelled dataset
    assert load_manifest(dest).images == ["images/only/x.png", "images/only/y.png"]


def test_no_usable_image_is_refused(tmp_path: Path, dest: Path) -> None:
    archive = write_zip(tmp_path / "u.zip", {"a/notes.txt": b"hello", "b.png": truncated_png()})
    with pytest.raises(DatasetRejected) as exc:
        ingest_archive(archive, dest, LIMITS, kind="unlabeled")
    assert exc.value.code == "dataset_no_images"
    assert not dest.exists()


@pytest.mark.parametrize(
    ("entries", "code"),
    [
        ({"a.png": digit_png(0), "../evil.png": digit_png(1)}, "archive_unsafe_path"),
        ({"a.png": digit_png(0), "bomb.png": ZEROS}, "archive_ratio_exceeded"),
    ],
)
def test_unsafe_archives_are_still_refused_whole(
    tmp_path: Path, dest: Path, entries: dict, code: str
) -> None:
    archive = write_zip(tmp_path / "u.zip", entries)
    with pytest.raises(DatasetRejected) as exc:
        ingest_archive(archive, dest, LIMITS, kind="unlabeled")
    assert exc.value.code == code
    assert not dest.exists()
    assert not (tmp_path / "evil.png").exists()


def test_a_truncated_zip_is_refused(tmp_path: Path, dest: Path) -> None:
    archive = write_zip(tmp_path / "u.zip", nested())
    archive.write_bytes(archive.read_bytes()[:-200])
    with pytest.raises(DatasetRejected) as exc:
        ingest_archive(archive, dest, LIMITS, kind="unlabeled")
    assert exc.value.code == "archive_corrupt"
    assert not dest.exists()
    assert zipfile.is_zipfile(archive) is False
