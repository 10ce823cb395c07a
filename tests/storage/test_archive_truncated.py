"""Cut or damaged archives are 422 archive_corrupt (send it again), never 415 or a smaller
dataset: the uploader's fix for a cut file is to re-upload, not to change formats."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from app.storage.datasets import IngestLimits, ingest_archive

from ._build import two_classes, write_tar, write_zip
from .test_archive_safety import assert_refused

FORMATS = {
    "tar.gz": "w:gz",
    "tar.bz2": "w:bz2",
    "tar.xz": "w:xz",
    "tar": "w",
    "zip": None,
}


def _archive(tmp_path: Path, fmt: str, n: int = 3) -> bytes:
    path = tmp_path / f"full.{fmt}"
    mode = FORMATS[fmt]
    if mode is None:
        write_zip(path, two_classes(n))
    else:
        write_tar(path, two_classes(n), mode)
    return path.read_bytes()


# 95% of a plain tar lies inside its zero padding, where nothing is lost: not a cut archive.
CUTS = [(fmt, f) for fmt in FORMATS for f in (0.1, 0.3, 0.6, 0.95) if (fmt, f) != ("tar", 0.95)]


@pytest.mark.parametrize(("fmt", "fraction"), CUTS)
def test_a_cut_tiny_archive_is_corrupt(
    tmp_path: Path, dest: Path, fmt: str, fraction: float
) -> None:
    # A few 8x8 PNGs: the whole archive is smaller than tarfile's first 10 KiB read, which is
    # where a cut .tar.gz used to be reported as "not an archive" (415).
    full = _archive(tmp_path, fmt)
    cut = tmp_path / f"cut.{fmt}"
    cut.write_bytes(full[: int(len(full) * fraction)])
    err = assert_refused(cut, dest, "archive_corrupt")
    assert err.status_code == 422
    assert "truncated" in err.message


@pytest.mark.parametrize("fmt", ["tar.gz", "tar.bz2", "tar.xz"])
def test_a_compressed_tar_missing_only_its_trailer_is_corrupt(
    tmp_path: Path, dest: Path, fmt: str
) -> None:
    # Every member is there; only the CRC/length trailer is cut, so the bytes are unverified.
    full = _archive(tmp_path, fmt)
    cut = tmp_path / f"cut.{fmt}"
    cut.write_bytes(full[:-4])
    assert_refused(cut, dest, "archive_corrupt")


def test_a_plain_tar_cut_at_a_member_boundary_is_corrupt(tmp_path: Path, dest: Path) -> None:
    # tarfile stops quietly at end of file between members; without the end-of-archive block
    # this would be a smaller dataset with a class missing.
    full = _archive(tmp_path, "tar", n=3)
    with tarfile.open(fileobj=io.BytesIO(full)) as tf:
        members = tf.getmembers()
    boundary = members[4].offset  # after cats/0..2 and dogs/0
    cut = tmp_path / "cut.tar"
    cut.write_bytes(full[:boundary])
    assert_refused(cut, dest, "archive_corrupt")


def test_a_damaged_header_in_the_middle_of_a_tar_is_corrupt(tmp_path: Path, dest: Path) -> None:
    full = bytearray(_archive(tmp_path, "tar", n=3))
    with tarfile.open(fileobj=io.BytesIO(bytes(full))) as tf:
        offset = tf.getmembers()[3].offset
    full[offset + 10] ^= 0xFF  # the name changes, the checksum no longer matches
    damaged = tmp_path / "damaged.tar"
    damaged.write_bytes(bytes(full))
    assert_refused(damaged, dest, "archive_corrupt")


def test_a_plain_tar_cut_inside_its_end_padding_is_still_accepted(
    tmp_path: Path, dest: Path
) -> None:
    # Past the two zero blocks nothing is lost: tools that do not pad to 10 KiB records write
    # exactly this.
    full = _archive(tmp_path, "tar", n=3)
    with tarfile.open(fileobj=io.BytesIO(full)) as tf:
        last = tf.getmembers()[-1]
    end = last.offset_data + ((last.size + 511) // 512) * 512 + 2 * 512
    upload = tmp_path / "short.tar"
    upload.write_bytes(full[:end])
    report = ingest_archive(upload, dest, IngestLimits())
    assert report.num_images == 6
