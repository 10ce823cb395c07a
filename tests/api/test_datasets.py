from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from app.db.models import Dataset
from tests.api.conftest import bearer, error_code, upload


def assert_nothing_left(settings, db) -> None:
    assert list(settings.layout.datasets.iterdir()) == []
    assert list(settings.layout.tmp.iterdir()) == []
    with db.session_scope() as s:
        assert s.query(Dataset).count() == 0


def test_upload_reports_classes_and_counts(client, digits_zip):
    r = upload(client, digits_zip(classes=(0, 1, 2), per_class=5), name="digits")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["name"] == "digits"
    assert body["num_classes"] == 3 and body["num_images"] == 15
    assert body["report"]["splits"]["train"] == {"digit_0": 5, "digit_1": 5, "digit_2": 5}
    assert len(body["sha256"]) == 64
    got = client.get(f"/v1/datasets/{body['id']}").json()
    assert got["sha256"] == body["sha256"]
    listed = client.get("/v1/datasets").json()
    assert listed["total"] == 1 and listed["items"][0]["id"] == body["id"]


def test_corrupt_images_are_skipped_and_reported(client, digits_zip):
    path = digits_zip(
        extra={"digit_0/broken.png": b"\x89PNG\r\n\x1a\n garbage", "digit_1/notes.txt": b"hi"},
        name="with_bad.zip",
    )
    r = upload(client, path)
    assert r.status_code == 201, r.text
    rejected = {item["path"] for item in r.json()["report"]["rejected"]}
    assert {"digit_0/broken.png", "digit_1/notes.txt"} <= rejected
    assert r.json()["num_images"] == 36


def _tar_with(tmp_path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    path = tmp_path / "bad.tar"
    with tarfile.open(path, "w") as tf:
        tf.addfile(member, io.BytesIO(data) if data else None)
    return path


def _zip_entries(tmp_path: Path, entries: dict[str, bytes], name: str = "bad.zip") -> Path:
    path = tmp_path / name
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for member, data in entries.items():
            zf.writestr(member, data)
    return path


def test_not_an_archive(client, settings, db, tmp_path):
    path = tmp_path / "photo.zip"
    path.write_bytes(b"this is not an archive at all" * 10)
    r = upload(client, path)
    assert r.status_code == 415
    assert error_code(r) == "archive_unsupported"
    assert_nothing_left(settings, db)


@pytest.mark.parametrize("member", ["../evil.png", "/etc/evil.png", "digit_0/../../evil.png"])
def test_unsafe_paths_are_refused(client, settings, db, tmp_path, digits_zip, member):
    good = zipfile.ZipFile(digits_zip(per_class=3, name="good.zip"))
    entries = {n: good.read(n) for n in good.namelist()}
    entries[member] = entries["digit_0/000.png"]
    r = upload(client, _zip_entries(tmp_path, entries))
    assert r.status_code == 422
    assert error_code(r) == "archive_unsafe_path"
    assert_nothing_left(settings, db)
    assert not (tmp_path / "evil.png").exists()


def test_symlink_entry_is_refused(client, settings, db, tmp_path):
    info = tarfile.TarInfo("digit_0/link.png")
    info.type = tarfile.SYMTYPE
    info.linkname = "/etc/passwd"
    r = upload(client, _tar_with(tmp_path, info))
    assert r.status_code == 422
    assert error_code(r) == "archive_link_entry"
    assert_nothing_left(settings, db)


def test_zip_symlink_entry_is_refused(client, settings, db, tmp_path):
    path = tmp_path / "link.zip"
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo("digit_0/link.png")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    r = upload(client, path)
    assert error_code(r) == "archive_link_entry"
    assert_nothing_left(settings, db)


def test_archive_bomb_by_ratio(client, settings, db, tmp_path):
    # 64 MiB of zeros deflate to ~64 KiB: a ratio of ~1000, far over the default limit of 100.
    r = upload(client, _zip_entries(tmp_path, {"a/zeros.png": bytes(64 << 20)}))
    assert r.status_code == 413
    assert error_code(r) == "archive_ratio_exceeded"
    assert_nothing_left(settings, db)


def test_archive_bomb_by_total_size(admin_key, settings, db, tmp_path, digits_zip):
    from fastapi.testclient import TestClient

    from app.main import create_app

    small = settings.model_copy(update={"max_extracted_bytes": 4096})
    with TestClient(create_app(small), headers=bearer(admin_key)) as c:
        r = upload(c, digits_zip(per_class=10, name="big.zip"))
    assert r.status_code == 413
    assert error_code(r) == "archive_too_large"
    assert_nothing_left(settings, db)


def test_upload_over_the_size_limit(admin_key, settings, db, digits_zip):
    from fastapi.testclient import TestClient

    from app.main import create_app

    small = settings.model_copy(update={"max_upload_bytes": 1000})
    with TestClient(create_app(small), headers=bearer(admin_key)) as c:
        r = upload(c, digits_zip(per_class=10, name="big2.zip"))
    assert r.status_code == 413
    assert error_code(r) == "upload_too_large"
    assert_nothing_left(settings, db)


def test_one_class_is_refused(client, settings, db, digits_zip):
    r = upload(client, digits_zip(classes=(7,), name="one.zip"))
    assert r.status_code == 422
    assert error_code(r) == "dataset_too_few_classes"
    assert_nothing_left(settings, db)


def test_class_without_valid_images_is_refused(client, settings, db, digits_zip):
    path = digits_zip(classes=(0, 1), extra={"empty_class/bad.png": b"not a png"}, name="e.zip")
    r = upload(client, path)
    assert r.status_code == 422
    assert error_code(r) == "dataset_empty_class"
    assert "empty_class" in r.json()["error"]["message"]
    assert_nothing_left(settings, db)


def test_missing_file_field_is_a_validation_error(client):
    r = client.post("/v1/datasets", data={"name": "x"})
    assert r.status_code == 422
    assert error_code(r) == "validation_error"
    assert r.json()["error"]["details"]["errors"][0]["field"] == "file"


def test_get_unknown_dataset_is_404(client):
    r = client.get("/v1/datasets/00000000-0000-0000-0000-000000000000")
    assert r.status_code == 404 and error_code(r) == "dataset_not_found"


def test_delete_dataset_removes_row_and_files(client, settings, digits_zip):
    ds = upload(client, digits_zip(per_class=3, name="del.zip")).json()
    assert (settings.layout.dataset_dir(ds["id"])).exists()
    assert client.delete(f"/v1/datasets/{ds['id']}").status_code == 204
    assert not settings.layout.dataset_dir(ds["id"]).exists()
    assert client.get(f"/v1/datasets/{ds['id']}").status_code == 404


def test_delete_dataset_in_use_is_409(client, settings, digits_zip):
    ds = upload(client, digits_zip(per_class=3, name="busy.zip")).json()
    spec = {"strategy": "finetune", "base_model": "timm:test_resnet", "pretrained": False,
            "dataset_id": ds["id"]}  # fmt: skip
    job = client.post("/v1/jobs", json=spec)
    assert job.status_code == 202, job.text
    r = client.delete(f"/v1/datasets/{ds['id']}")
    assert r.status_code == 409 and error_code(r) == "dataset_in_use"
    assert job.json()["id"] in r.json()["error"]["details"]["job_ids"]
    assert settings.layout.dataset_dir(ds["id"]).exists()


def test_chunked_upload_over_the_limit_is_cut_off(admin_key, settings, db):
    """No Content-Length to check up front: the body is counted as it arrives, and the app's own
    answer to the cut-off body (FastAPI's 400 about parsing) is replaced by the 413. (TestClient
    reads the whole generator anyway, so how early the server stops is not observable here.)"""
    from fastapi.testclient import TestClient

    from app.main import create_app

    small = settings.model_copy(update={"max_upload_bytes": 10_000})

    def body():
        yield (
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.zip"\r\n'
            b"Content-Type: application/zip\r\n\r\n"
        )
        for _ in range(100):  # 100 x 1 KiB of file content, ten times the limit
            yield b"x" * 1024
        yield b"\r\n--b--\r\n"

    with TestClient(create_app(small), headers=bearer(admin_key)) as c:
        r = c.post(
            "/v1/datasets",
            content=body(),
            headers={"content-type": "multipart/form-data; boundary=b"},
        )
    assert r.status_code == 413
    assert error_code(r) == "upload_too_large"
    assert_nothing_left(settings, db)
