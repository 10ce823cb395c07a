"""Bomb limits: enforced on bytes actually decompressed, stopping within one chunk."""

from __future__ import annotations

import io
import tarfile
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from app.storage.archive import CHUNK
from app.storage.datasets import DatasetRejected, IngestLimits, ingest_archive

from ._build import digit_png, two_classes, write_tar, write_zip

ZEROS = bytes(20 * 2**20)  # 20 MiB that deflate squeezes ~1000x
STRICT_RATIO = IngestLimits(max_ratio=10, ratio_floor_bytes=0)


def refused(archive: Path, dest: Path, limits: IngestLimits, code: str) -> DatasetRejected:
    with pytest.raises(DatasetRejected) as exc:
        ingest_archive(archive, dest, limits)
    assert exc.value.code == code, exc.value.message
    assert exc.value.status_code == 413
    assert not dest.exists()
    return exc.value


def test_zip_bomb_stops_after_ratio_times_size(tmp_path: Path, dest: Path) -> None:
    upload = write_zip(tmp_path / "bomb.zip", {**two_classes(), "cats/bomb.png": ZEROS})
    size = upload.stat().st_size
    assert size < 100_000  # really a bomb: >200x
    err = refused(upload, dest, STRICT_RATIO, "archive_ratio_exceeded")
    assert err.details["limit"] == 10 * size
    # Stopped at the first chunk past the budget, nowhere near the 20 MiB it would become.
    assert err.details["limit"] < err.details["observed"] <= err.details["limit"] + CHUNK
    assert err.details["observed"] < len(ZEROS) // 4


def test_default_limits_refuse_a_plain_zip_bomb(tmp_path: Path, dest: Path) -> None:
    upload = write_zip(tmp_path / "bomb.zip", {**two_classes(), "cats/bomb.png": ZEROS})
    err = refused(upload, dest, IngestLimits(), "archive_ratio_exceeded")
    assert err.details["observed"] <= err.details["limit"] + CHUNK < len(ZEROS)


@pytest.mark.parametrize("mode", ["w:gz", "w:bz2", "w:xz"])
def test_tar_bomb_in_a_skipped_file_is_still_counted(tmp_path: Path, dest: Path, mode: str) -> None:
    # The hidden file is never written, but tarfile must decompress it to move past it.
    entries = {**two_classes(), ".hidden/zeros.bin": ZEROS}
    upload = write_tar(tmp_path / "bomb.tar", entries, mode=mode)
    err = refused(upload, dest, STRICT_RATIO, "archive_ratio_exceeded")
    assert err.details["observed"] <= err.details["limit"] + CHUNK
    assert err.details["observed"] < len(ZEROS) // 4


def test_ratio_floor_lets_small_compressible_uploads_through(tmp_path: Path, dest: Path) -> None:
    # A tar.gz of a few 8x8 PNGs is mostly tar padding: it expands far more than 10x ...
    upload = write_tar(tmp_path / "small.tar.gz", two_classes())
    refused(upload, tmp_path / "strict", STRICT_RATIO, "archive_ratio_exceeded")
    # ... which the floor (ratio x at least 64 KiB) allows, because a few hundred KiB is no bomb.
    report = ingest_archive(upload, dest, replace(STRICT_RATIO, ratio_floor_bytes=64 * 2**10))
    assert report.num_images == 6


@pytest.mark.parametrize("fmt", ["zip", "tar"])
def test_total_written_bytes_limit(tmp_path: Path, dest: Path, fmt: str) -> None:
    entries = two_classes(5)
    total = sum(len(v) for v in entries.values() if v)
    writer = write_zip if fmt == "zip" else write_tar
    limits = IngestLimits(max_total_bytes=total // 2)
    err = refused(writer(tmp_path / f"a.{fmt}", entries), dest, limits, "archive_too_large")
    assert err.details["limit"] == total // 2
    assert err.details["observed"] > total // 2


def test_header_sizes_are_not_trusted(tmp_path: Path, dest: Path) -> None:
    # The central directory claims a 1.5 GiB member; only the bytes that really come out count,
    # so this small honest archive passes a 1 MiB limit (and a lie the other way is capped by
    # zipfile at the claimed size and then fails its CRC).
    upload = write_zip(tmp_path / "a.zip", {**two_classes(), "cats/big.png": digit_png(8)})
    data = bytearray(upload.read_bytes())
    at = data.find(b"PK\x01\x02")  # first central directory entry...
    while data[at + 46 : at + 46 + len(b"cats/big.png")] != b"cats/big.png":
        at = data.find(b"PK\x01\x02", at + 4)  # ...until the one for cats/big.png
    data[at + 24 : at + 28] = (3 * 2**29).to_bytes(4, "little")  # uncompressed size
    upload.write_bytes(bytes(data))
    with zipfile.ZipFile(upload) as zf:
        assert zf.getinfo("cats/big.png").file_size == 3 * 2**29
    report = ingest_archive(upload, dest, IngestLimits(max_total_bytes=2**20))
    assert report.num_images == 7


@pytest.mark.parametrize("fmt", ["zip", "tar"])
def test_too_many_entries(tmp_path: Path, dest: Path, fmt: str) -> None:
    entries = {"cats/": None, **two_classes(3)}  # 7 entries
    writer = write_zip if fmt == "zip" else write_tar
    err = refused(
        writer(tmp_path / f"a.{fmt}", entries),
        dest,
        IngestLimits(max_entries=5),
        "archive_too_many_entries",
    )
    assert err.details["limit"] == 5
    assert err.details["observed"] > 5


def test_entry_limit_counts_tar_directories_too(tmp_path: Path, dest: Path) -> None:
    entries = {f"cats/d{i}/": None for i in range(10)} | two_classes(1)
    refused(
        write_tar(tmp_path / "a.tgz", entries),
        dest,
        IngestLimits(max_entries=5),
        "archive_too_many_entries",
    )


def test_exotic_zip_compression_is_skipped_not_decompressed(tmp_path: Path, dest: Path) -> None:
    # zipfile inflates bzip2/lzma members without an output bound; we do not read them.
    upload = write_zip(tmp_path / "a.zip", two_classes())
    with zipfile.ZipFile(upload, "a") as zf:
        zf.writestr("cats/bz.png", digit_png(7), compress_type=zipfile.ZIP_BZIP2)
    report = ingest_archive(upload, dest, IngestLimits())
    [rej] = report.rejected
    assert rej["path"] == "cats/bz.png" and "bzip2" in rej["reason"]
    assert report.num_images == 6


def test_sparse_tar_member_is_not_expanded(tmp_path: Path, dest: Path) -> None:
    # 10 bytes in the stream, 100 MB out of tarfile.extractfile(): holes bypass the metered
    # stream, so sparse members are skipped rather than written.
    upload = write_tar(tmp_path / "a.tar", two_classes(), mode="w")
    with tarfile.open(upload, "a", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("cats/sparse.png")
        info.size = 10
        info.pax_headers = {"GNU.sparse.map": "0,10", "GNU.sparse.size": str(100_000_000)}
        tf.addfile(info, io.BytesIO(b"x" * 10))
    report = ingest_archive(upload, dest, STRICT_RATIO)
    [rej] = report.rejected
    assert rej["path"] == "cats/sparse.png" and "sparse" in rej["reason"]
    assert report.total_bytes < 10_000
