"""Class folders that differ only in case are one class typed twice: refuse, do not split."""

from __future__ import annotations

from pathlib import Path

from app.storage.datasets import IngestLimits, ingest_archive

from ._build import digit_png, two_classes, write_tar, write_zip
from .test_archive_safety import assert_refused


def test_case_variants_of_a_class_folder_are_refused(tmp_path: Path, dest: Path) -> None:
    entries = {
        **two_classes(2),
        "cat/0.png": digit_png(10),
        "Cat/0.png": digit_png(11),
        "CAT/0.png": digit_png(12),
        "Dogs/9.png": digit_png(13),
    }
    err = assert_refused(
        write_zip(tmp_path / "a.zip", entries), dest, "dataset_class_case_conflict"
    )
    assert err.status_code == 422
    assert err.details == {"conflicts": [["CAT", "Cat", "cat"], ["Dogs", "dogs"]]}
    assert "'CAT', 'Cat', 'cat'" in err.message and "'Dogs', 'dogs'" in err.message
    assert "merge" in err.message and "rename" in err.message


def test_an_empty_case_variant_folder_counts_too(tmp_path: Path, dest: Path) -> None:
    entries: dict[str, bytes | None] = {**two_classes(2), "Cats/": None}
    err = assert_refused(
        write_tar(tmp_path / "a.tar", entries, "w"), dest, "dataset_class_case_conflict"
    )
    assert err.details == {"conflicts": [["Cats", "cats"]]}


def test_a_wrapped_train_val_archive_with_case_variants_in_val(tmp_path: Path, dest: Path) -> None:
    entries = {
        **two_classes(2, prefix="data/train/"),
        "data/val/Cats/v0.png": digit_png(20),  # would silently lose every val image it holds
        "data/val/dogs/v0.png": digit_png(21),
    }
    err = assert_refused(
        write_tar(tmp_path / "a.tar.gz", entries), dest, "dataset_class_case_conflict"
    )
    assert err.details == {"conflicts": [["Cats", "cats"]]}


def test_case_variants_inside_val_only(tmp_path: Path, dest: Path) -> None:
    entries = {
        **two_classes(2, prefix="train/"),
        "val/birds/v0.png": digit_png(20),
        "val/Birds/v0.png": digit_png(21),
    }
    err = assert_refused(
        write_zip(tmp_path / "a.zip", entries), dest, "dataset_class_case_conflict"
    )
    assert err.details == {"conflicts": [["Birds", "birds"]]}


def test_distinct_names_and_split_folder_spellings_are_fine(tmp_path: Path, dest: Path) -> None:
    # "Train"/"VAL" are split folders, not classes; "cat" and "cats" differ in more than case.
    entries = {
        "Train/cat/0.png": digit_png(0),
        "Train/cats/0.png": digit_png(1),
        "VAL/cat/0.png": digit_png(2),
    }
    report = ingest_archive(write_zip(tmp_path / "a.zip", entries), dest, IngestLimits())
    assert report.classes == ["cat", "cats"]
