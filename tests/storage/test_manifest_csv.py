"""labels.csv instead of class folders: the layout it makes, and its row-numbered errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.storage.datasets import DatasetRejected, IngestLimits, ingest_archive, load_manifest

from ._build import digit_png, write_tar, write_zip

LIMITS = IngestLimits()


def images(n: int = 4) -> dict[str, bytes | None]:
    return {f"images/{k:03d}.png": digit_png(k) for k in range(n)}


def refused(tmp_path: Path, dest: Path, entries: dict) -> DatasetRejected:
    with pytest.raises(DatasetRejected) as info:
        ingest_archive(write_zip(tmp_path / "m.zip", entries), dest, LIMITS)
    assert info.value.code == "manifest_invalid"
    assert not dest.exists()
    return info.value


def test_manifest_places_images_by_label_and_split(tmp_path: Path, dest: Path) -> None:
    csv = (
        "\ufeffpath,label,split\n"  # Excel's BOM
        "images/000.png,cat,train\n"
        "images/001.png,dog,\n"
        "images\\002.png,cat,validation\n"  # Windows separators
        "\n"
        "./images/003.png,dog,train\n"
    )
    entries = {"labels.csv": csv.encode(), **images(4), "images/unlisted.png": digit_png(9)}
    report = ingest_archive(write_zip(tmp_path / "m.zip", entries), dest, LIMITS)
    assert report.classes == ["cat", "dog"]
    assert report.splits == {"train": {"cat": 1, "dog": 2}, "val": {"cat": 1, "dog": 0}}
    assert report.rejected == [
        {"path": "images/unlisted.png", "reason": "not listed in labels.csv"}
    ]
    manifest = load_manifest(dest)
    assert manifest.val == [("val/cat/images/002.png", "cat")]
    assert (dest / "train/dog/images/001.png").is_file()
    assert not (dest / "labels.csv").exists()


def test_manifest_in_a_wrapping_folder_of_a_tar(tmp_path: Path, dest: Path) -> None:
    entries = {
        "export/labels.csv": b"label,path\nA,images/000.png\nB,images/001.png\n",
        **{f"export/{k}": v for k, v in images(2).items()},
    }
    report = ingest_archive(write_tar(tmp_path / "m.tar.gz", entries), dest, LIMITS)
    assert report.splits == {"train": {"A": 1, "B": 1}}  # no split column: all train


def test_bad_header(tmp_path: Path, dest: Path) -> None:
    err = refused(tmp_path, dest, {"labels.csv": b"file,class\nimages/000.png,cat\n", **images(1)})
    assert "row 1 (the header)" in err.message
    assert err.details["errors"] == [{"row": 1, "message": "bad header"}]


def test_row_errors_are_numbered_and_all_listed(tmp_path: Path, dest: Path) -> None:
    csv = (
        "path,label,split\n"
        "images/000.png,cat,train\n"  # row 2: fine
        "images/001.png,,train\n"  # row 3: empty label
        "../etc/passwd,cat,train\n"  # row 4: escapes
        "images/002.png,cat,test\n"  # row 5: unknown split
        "images/000.png,dog,train\n"  # row 6: duplicate path
        "images/003.png,a/b,train\n"  # row 7: label with a slash
        "images/003.png\n"  # row 8: too few cells
    )
    err = refused(tmp_path, dest, {"labels.csv": csv.encode(), **images(4)})
    rows = [(e["row"], e["message"]) for e in err.details["errors"]]
    assert [r for r, _ in rows] == [3, 4, 5, 6, 7, 8]
    assert "label '' is empty" in rows[0][1]
    assert "must be relative and stay inside the archive" in rows[1][1]
    assert "split 'test' must be train or val" in rows[2][1]
    assert "already on row 2" in rows[3][1]
    assert "must not contain '/'" in rows[4][1]
    assert "has 1 cells, the header 3" in rows[5][1]
    assert err.details["error_count"] == 6
    assert err.message.startswith("labels.csv is not a valid manifest: row 3: label '' is empty")
    assert "(and 3 more)" in err.message


def test_rows_naming_missing_files_and_val_only_labels(tmp_path: Path, dest: Path) -> None:
    csv = "path,label,split\nimages/000.png,cat,\nimages/404.png,cat,\nimages/001.png,owl,val\n"
    err = refused(tmp_path, dest, {"labels.csv": csv.encode(), **images(2)})
    assert err.details["errors"] == [
        {"row": 3, "message": "'images/404.png' is not in the archive"},
        {"row": 4, "message": "label 'owl' is in val but on no train row"},
    ]


def test_not_utf8_and_empty(tmp_path: Path, dest: Path) -> None:
    err = refused(
        tmp_path, dest, {"labels.csv": b"path,label\nimages/000.png,caf\xe9\n", **images(1)}
    )
    assert "not UTF-8" in err.message
    err = refused(tmp_path, dest / "2", {"labels.csv": b"path,label\n", **images(1)})
    assert "no rows" in err.message


def test_labels_that_differ_only_in_case_are_refused(tmp_path: Path, dest: Path) -> None:
    csv = b"path,label\nimages/000.png,Cat\nimages/001.png,cat\nimages/002.png,dog\n"
    with pytest.raises(DatasetRejected) as info:
        ingest_archive(
            write_zip(tmp_path / "m.zip", {"labels.csv": csv, **images(3)}), dest, LIMITS
        )
    assert info.value.code == "dataset_class_case_conflict"
