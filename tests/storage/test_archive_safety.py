"""Archives that must be refused as a whole, leaving nothing behind."""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from app.errors import ServiceError
from app.storage.archive import safe_parts
from app.storage.datasets import DatasetRejected, IngestLimits, ingest_archive

from ._build import add_tar_member, digit_png, two_classes, write_tar, write_zip

LIMITS = IngestLimits()


def assert_refused(archive: Path, dest: Path, code: str, limits: IngestLimits = LIMITS):
    with pytest.raises(DatasetRejected) as exc:
        ingest_archive(archive, dest, limits)
    assert exc.value.code == code, exc.value.message
    assert isinstance(exc.value, ServiceError)
    assert not dest.exists()
    return exc.value


# -- not an archive ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [digit_png(0), os.urandom(4096), b"", b"\x1f\x8b" + os.urandom(200)],
    ids=["png", "random", "empty", "gzip-magic-garbage"],
)
def test_not_an_archive_is_unsupported(tmp_path: Path, dest: Path, content: bytes) -> None:
    upload = tmp_path / "upload.zip"  # the name lies; only content counts
    upload.write_bytes(content)
    err = assert_refused(upload, dest, "archive_unsupported")
    assert err.status_code == 415
    assert ".zip, .tar or .tar.gz" in err.message


def test_gzip_of_something_that_is_not_a_tar_is_unsupported(tmp_path: Path, dest: Path) -> None:
    import gzip

    upload = tmp_path / "data.tar.gz"
    upload.write_bytes(gzip.compress(b"name,label\n" * 1000))
    assert_refused(upload, dest, "archive_unsupported")


def test_truncated_zip_and_tar_are_corrupt(tmp_path: Path, dest: Path) -> None:
    for name, writer in (("a.zip", write_zip), ("a.tar.gz", write_tar)):
        full = writer(tmp_path / name, two_classes(20)).read_bytes()
        upload = tmp_path / f"cut-{name}"
        upload.write_bytes(full[: len(full) * 2 // 3])
        assert_refused(upload, dest, "archive_corrupt")


# -- unsafe names --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "../evil.png",
        "cats/../../evil.png",
        "/abs/x.png",
        "C:\\x.png",
        "c:x.png",
        "\\\\server\\x.png",
        "cats\\..\\..\\evil.png",
        "a/b\x00.png",
    ],
)
def test_safe_parts_refuses_escaping_names(name: str) -> None:
    with pytest.raises(DatasetRejected) as exc:
        safe_parts(name)
    assert exc.value.code == "archive_unsafe_path"
    assert exc.value.details == {"entry": name}


def test_safe_parts_normalises_harmless_names() -> None:
    assert safe_parts("./cats//1.png") == ("cats", "1.png")
    assert safe_parts("cats\\sub\\1.png") == ("cats", "sub", "1.png")
    assert safe_parts("cafe\u0301/1.png") == ("caf\u00e9", "1.png")  # NFD -> NFC
    assert safe_parts("cats/..hidden.png") == ("cats", "..hidden.png")  # not a '..' component


@pytest.mark.parametrize("bad_name", ["../evil.png", "/etc/evil.png", "C:\\evil.png"])
@pytest.mark.parametrize("fmt", ["zip", "tar"])
def test_escaping_entry_refuses_the_archive(
    tmp_path: Path, dest: Path, fmt: str, bad_name: str
) -> None:
    entries = two_classes()
    entries[bad_name] = digit_png(9)  # last, so good files were already written (tar)
    writer = write_zip if fmt == "zip" else write_tar
    err = assert_refused(writer(tmp_path / f"a.{fmt}", entries), dest, "archive_unsafe_path")
    assert err.details == {"entry": bad_name}
    assert repr(bad_name) in err.message
    assert not (tmp_path / "evil.png").exists()
    assert not (tmp_path / "datasets" / "evil.png").exists()


def test_nul_byte_in_zip_name_refuses_the_archive(tmp_path: Path, dest: Path) -> None:
    upload = write_zip(tmp_path / "a.zip", {**two_classes(), "cats/aXb.png": digit_png(5)})
    # zipfile cannot write a NUL; patch it into the local and central headers.
    upload.write_bytes(upload.read_bytes().replace(b"cats/aXb.png", b"cats/a\x00b.png"))
    err = assert_refused(upload, dest, "archive_unsafe_path")
    assert "NUL" in err.message


# -- links and special files ---------------------------------------------------------------


def test_zip_symlink_entry_refuses_the_archive(tmp_path: Path, dest: Path) -> None:
    upload = write_zip(tmp_path / "a.zip", two_classes())
    with zipfile.ZipFile(upload, "a") as zf:
        info = zipfile.ZipInfo("cats/passwd.png")
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    err = assert_refused(upload, dest, "archive_link_entry")
    assert err.details == {"entry": "cats/passwd.png"}


def test_zip_fifo_entry_refuses_the_archive(tmp_path: Path, dest: Path) -> None:
    upload = write_zip(tmp_path / "a.zip", two_classes())
    with zipfile.ZipFile(upload, "a") as zf:
        info = zipfile.ZipInfo("cats/pipe")
        info.external_attr = (stat.S_IFIFO | 0o644) << 16
        zf.writestr(info, b"")
    assert_refused(upload, dest, "archive_special_entry")


def _tar_with(tmp_path: Path, info: tarfile.TarInfo) -> Path:
    upload = write_tar(tmp_path / "a.tar", two_classes(), mode="w")
    add_tar_member(upload, info)
    return upload


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_tar_links_refuse_the_archive(tmp_path: Path, dest: Path, kind: bytes) -> None:
    info = tarfile.TarInfo("dogs/link.png")
    info.type = kind
    info.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else "cats/0.png"
    err = assert_refused(_tar_with(tmp_path, info), dest, "archive_link_entry")
    assert err.details == {"entry": "dogs/link.png"}


def test_tar_link_in_a_hidden_folder_still_refuses(tmp_path: Path, dest: Path) -> None:
    info = tarfile.TarInfo("__MACOSX/link")
    info.type = tarfile.SYMTYPE
    info.linkname = "/"
    assert_refused(_tar_with(tmp_path, info), dest, "archive_link_entry")


@pytest.mark.parametrize(
    "kind",
    [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE, b"V"],
    ids=["chr", "blk", "fifo", "volume"],
)
def test_tar_special_entries_refuse_the_archive(tmp_path: Path, dest: Path, kind: bytes) -> None:
    info = tarfile.TarInfo("cats/dev")
    info.type = kind
    info.devmajor, info.devminor = 1, 3
    err = assert_refused(_tar_with(tmp_path, info), dest, "archive_special_entry")
    assert err.details == {"entry": "cats/dev"}


def test_existing_destination_is_never_touched(tmp_path: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    (dest / "keep.txt").write_text("someone else's")
    with pytest.raises(FileExistsError):
        ingest_archive(write_zip(tmp_path / "a.zip", two_classes()), dest, LIMITS)
    assert (dest / "keep.txt").read_text() == "someone else's"
