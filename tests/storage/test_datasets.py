"""Layout, per-file rejections, dataset-level checks and the manifest."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from app.storage.datasets import (
    DatasetCorrupt,
    DatasetRejected,
    IngestLimits,
    ingest_archive,
    load_manifest,
)

from ._build import (
    add_tar_member,
    digit_jpeg,
    digit_png,
    truncated_png,
    two_classes,
    write_tar,
    write_zip,
)

LIMITS = IngestLimits()


def files_on_disk(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def reasons(report) -> dict[str, str]:
    return {r["path"]: r["reason"] for r in report.rejected}


def refused(archive: Path, dest: Path, code: str, limits: IngestLimits = LIMITS):
    with pytest.raises(DatasetRejected) as exc:
        ingest_archive(archive, dest, limits)
    assert exc.value.code == code, exc.value.message
    assert exc.value.status_code == 422
    assert not dest.exists()
    return exc.value


def test_flat_layout_with_pngs_and_jpegs(tmp_path: Path, dest: Path) -> None:
    entries = {"cats/": None, "dogs/": None, **two_classes(2), "dogs/x.jpg": digit_jpeg(7)}
    report = ingest_archive(write_zip(tmp_path / "a.zip", entries), dest, LIMITS)
    assert report.format == "zip"
    assert report.classes == ["cats", "dogs"]
    assert report.splits == {"train": {"cats": 2, "dogs": 3}}
    assert report.num_images == 5
    assert report.rejected == []  # directory entries are never reported
    expected = {
        "train/cats/0.png",
        "train/cats/1.png",
        "train/dogs/0.png",
        "train/dogs/1.png",
        "train/dogs/x.jpg",
    }
    assert files_on_disk(dest) == expected | {"manifest.json"}
    assert report.total_bytes == sum((dest / p).stat().st_size for p in expected)


def test_wrapper_folder_and_mac_junk_are_stripped(tmp_path: Path, dest: Path) -> None:
    entries = {
        "mydata/": None,
        **two_classes(2, prefix="mydata/"),
        "mydata/cats/sub/deeper.png": digit_png(50),  # class = first level
        "mydata/.DS_Store": b"\x00\x00\x00\x01Bud1",
        "mydata/cats/.DS_Store": b"\x00\x00\x00\x01Bud1",
        "mydata/notes.txt": b"taken with my phone",
        "__MACOSX/mydata/cats/._0.png": b"\x00\x05\x16\x07",
        "README.md": b"# my dataset",
    }
    report = ingest_archive(write_zip(tmp_path / "a.zip", entries), dest, LIMITS)
    assert report.classes == ["cats", "dogs"]
    assert report.splits["train"] == {"cats": 3, "dogs": 2}
    assert (dest / "train/cats/sub/deeper.png").is_file()
    why = reasons(report)
    assert set(why) == {
        "mydata/.DS_Store",
        "mydata/cats/.DS_Store",
        "__MACOSX/mydata/cats/._0.png",
        "mydata/notes.txt",
        "README.md",
    }
    assert why["__MACOSX/mydata/cats/._0.png"] == "hidden or system file"
    assert "not inside a class folder" in why["mydata/notes.txt"]
    assert "not inside a class folder" in why["README.md"]


def test_train_val_layout(tmp_path: Path, dest: Path) -> None:
    entries = {
        **two_classes(3, prefix="train/"),
        "valid/cats/v0.png": digit_png(200),  # "valid" is an accepted spelling of val
        "valid/dogs/v0.jpg": digit_jpeg(201),
        "valid/birds/v0.png": digit_png(202),  # not a train class
        "test/cats/t0.png": digit_png(203),  # neither train nor val
        "train/stray.png": digit_png(204),  # not in a class folder
    }
    report = ingest_archive(write_tar(tmp_path / "a.tar.gz", entries), dest, LIMITS)
    assert report.classes == ["cats", "dogs"]
    assert report.splits == {"train": {"cats": 3, "dogs": 3}, "val": {"cats": 1, "dogs": 1}}
    why = reasons(report)
    assert "'birds' is in val/ but not in train/" in why["valid/birds/v0.png"]
    assert "outside train/ and val/" in why["test/cats/t0.png"]
    assert "not inside a class folder" in why["train/stray.png"]
    manifest = load_manifest(dest)
    assert manifest.val == [("val/cats/v0.png", "cats"), ("val/dogs/v0.jpg", "dogs")]
    assert len(manifest.train) == 6


def test_bad_files_are_reported_deleted_and_the_rest_kept(tmp_path: Path, dest: Path) -> None:
    entries = {
        **two_classes(3),
        "cats/broken.png": truncated_png(),
        "cats/notes.txt": b"not an image",
        "dogs/empty.jpg": b"",
        "dogs/fake.png": b"GIF89a but not really",
    }
    report = ingest_archive(write_zip(tmp_path / "a.zip", entries), dest, LIMITS)
    assert report.num_images == 6
    why = reasons(report)
    assert "truncated or corrupt" in why["cats/broken.png"]
    assert "not an image in an accepted format" in why["cats/notes.txt"]
    assert "empty" in why["dogs/empty.jpg"]
    assert "dogs/fake.png" in why
    assert files_on_disk(dest) == {
        f"train/{c}/{k}.png" for c in ("cats", "dogs") for k in range(3)
    } | {"manifest.json"}


def test_oversized_image_is_rejected_with_a_reason(tmp_path: Path, dest: Path) -> None:
    entries = {**two_classes(2), "cats/huge.png": digit_png(9, size=64)}
    report = ingest_archive(
        write_zip(tmp_path / "a.zip", entries), dest, IngestLimits(max_image_pixels=1000)
    )
    assert "4096 pixels, over the limit of 1000" in reasons(report)["cats/huge.png"]
    assert report.num_images == 4


def test_duplicate_entries_keep_the_first(tmp_path: Path, dest: Path) -> None:
    upload = write_tar(tmp_path / "a.tar", two_classes(2), mode="w")
    add_tar_member(upload, tarfile.TarInfo("cats/0.png"), digit_png(42))  # tar "update"
    report = ingest_archive(upload, dest, LIMITS)
    assert (dest / "train/cats/0.png").read_bytes() == digit_png(0)
    assert "same path came earlier" in reasons(report)["cats/0.png"]


def test_decomposed_unicode_names_become_one_class(tmp_path: Path, dest: Path) -> None:
    entries = {
        "caf\u00e9/a.png": digit_png(1),  # NFC, as Linux/Windows write it
        "cafe\u0301/b.png": digit_png(2),  # NFD, as macOS writes it
        **{k: v for k, v in two_classes(1).items() if k.startswith("dogs")},
    }
    report = ingest_archive(write_zip(tmp_path / "a.zip", entries), dest, LIMITS)
    assert report.classes == ["caf\u00e9", "dogs"]
    assert report.splits["train"]["caf\u00e9"] == 2


# -- dataset-level refusals ----------------------------------------------------------------


def test_one_class_is_too_few(tmp_path: Path, dest: Path) -> None:
    entries = {k: v for k, v in two_classes(3).items() if k.startswith("cats/")}
    err = refused(write_zip(tmp_path / "a.zip", entries), dest, "dataset_too_few_classes")
    assert "found 1 class" in err.message and "cats" in err.message
    assert err.details == {"classes": ["cats"]}


def test_class_folder_with_only_a_corrupt_file_is_empty(tmp_path: Path, dest: Path) -> None:
    entries = {**two_classes(2), "birds/broken.png": truncated_png(3)}
    err = refused(write_tar(tmp_path / "a.tgz", entries), dest, "dataset_empty_class")
    assert err.details["classes"] == ["birds"]
    assert "truncated" in err.details["reasons"]["birds"][0]
    assert "'birds'" in err.message and "truncated" in err.message


def test_empty_class_folder_entry_is_an_empty_class(tmp_path: Path, dest: Path) -> None:
    entries = {**two_classes(2), "birds/": None}
    err = refused(write_zip(tmp_path / "a.zip", entries), dest, "dataset_empty_class")
    assert err.details == {"classes": ["birds"], "reasons": {"birds": []}}
    assert "no files" in err.message


def test_no_images_at_all(tmp_path: Path, dest: Path) -> None:
    entries = {"cats/a.txt": b"meow", "dogs/b.txt": b"woof", "c.png": digit_png(1)}
    err = refused(write_zip(tmp_path / "a.zip", entries), dest, "dataset_no_images")
    assert err.details["class_folders"] == ["cats", "dogs"]


# -- identity and the manifest -------------------------------------------------------------


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_same_images_same_hash_whatever_the_container(
    tmp_path: Path, dest: Path, mode: str
) -> None:
    entries = {**two_classes(3), "dogs/j.jpg": digit_jpeg(11)}
    zipped = ingest_archive(write_zip(tmp_path / "a.zip", entries), tmp_path / "z", LIMITS)
    wrapped = {f"wrap/{k}": v for k, v in reversed(entries.items())}  # other order, wrapped
    tarred = ingest_archive(write_tar(tmp_path / "a.tar", wrapped, mode=mode), dest, LIMITS)
    assert (zipped.format, tarred.format) == ("zip", "tar")
    assert zipped.sha256 == tarred.sha256
    changed = {**entries, "dogs/j.jpg": digit_jpeg(12)}
    other = ingest_archive(write_zip(tmp_path / "b.zip", changed), tmp_path / "o", LIMITS)
    assert other.sha256 != zipped.sha256


def test_manifest_round_trip(tmp_path: Path, dest: Path) -> None:
    entries = {**two_classes(2, prefix="train/"), "val/cats/v.png": digit_png(300)}
    report = ingest_archive(write_zip(tmp_path / "a.zip", entries), dest, LIMITS)
    manifest = load_manifest(dest)
    assert manifest.classes == report.classes == ["cats", "dogs"]
    assert manifest.train == [
        ("train/cats/0.png", "cats"),
        ("train/cats/1.png", "cats"),
        ("train/dogs/0.png", "dogs"),
        ("train/dogs/1.png", "dogs"),
    ]
    assert manifest.val == [("val/cats/v.png", "cats")]
    for rel, _ in manifest.train + manifest.val:
        assert (dest / rel).is_file()
    stored = json.loads((dest / "manifest.json").read_text())
    assert stored["report"] == report.to_dict()
    assert json.loads(json.dumps(report.to_dict())) == report.to_dict()
    assert not (dest / ".staging").exists()


@pytest.mark.parametrize(
    "content",
    [
        None,
        "{not json",
        '{"classes": ["a"], "train": [["../../etc/passwd", "a"]], "val": []}',
        '{"classes": ["a"], "train": [["train/b/x.png", "b"]], "val": []}',
    ],
    ids=["missing", "garbage", "escaping-path", "unknown-class"],
)
def test_load_manifest_refuses_a_broken_one(tmp_path: Path, content: str | None) -> None:
    if content is not None:
        (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(DatasetCorrupt) as exc:
        load_manifest(tmp_path)
    assert exc.value.code == "dataset_corrupt"
