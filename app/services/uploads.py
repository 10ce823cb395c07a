"""Resumable dataset uploads: create, send parts (each checksummed), ask what is stored,
complete into the same safe ingest as a one-shot upload, or abort. Idle uploads expire.

Parts live on disk (``app.storage.parts``), the upload's terms in its row. A part is stored whole
or not at all, so a client whose connection dropped asks which parts are stored and sends only
the others: an upload interrupted at 60% costs at most one part more than the archive.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import Dataset, Upload
from app.db.repositories import datasets as datasets_repo
from app.db.repositories import uploads as repo
from app.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from app.services.datasets import check_kind, ingest_dataset
from app.settings import Settings
from app.storage import parts as store
from app.storage.datasets import Dedupe

log = logging.getLogger(__name__)

MIN_PART_BYTES = 64 * 2**10  # except the last part; smaller parts are mostly request overhead
MAX_PART_BYTES = 64 * 2**20  # one request; also the API's body limit for a part
DEFAULT_PART_BYTES = 8 * 2**20


class UploadNotFound(NotFound):
    code = "upload_not_found"


class UploadIncomplete(Conflict):
    code = "upload_incomplete"


def parts_total(upload: Upload) -> int:
    return max(1, math.ceil(upload.size / upload.part_size))


def part_bytes(upload: Upload, number: int) -> int:
    """How many bytes part ``number`` (1-based) must hold."""
    total = parts_total(upload)
    if not 1 <= number <= total:
        raise InvalidInput(
            f"part number {number} is outside 1..{total} for an upload of {upload.size} bytes in "
            f"parts of {upload.part_size}",
            code="part_out_of_range",
            details={"parts_total": total},
        )
    return upload.part_size if number < total else upload.size - upload.part_size * (total - 1)


def create_upload(
    session: Session,
    settings: Settings,
    *,
    api_key_id: uuid.UUID | None,
    size: int,
    part_size: int | None,
    filename: str,
    name: str | None,
    dedupe: Dedupe,
    kind: str = "labelled",
) -> Upload:
    kind = check_kind(kind)
    if size > settings.max_upload_bytes:
        raise PayloadTooLarge(
            f"the upload would be {size} bytes, over the limit of {settings.max_upload_bytes}; "
            "split the dataset or raise TRANSFERLAB_MAX_UPLOAD_BYTES",
            code="upload_too_large",
            details={"limit_bytes": settings.max_upload_bytes},
        )
    part_size = part_size or min(DEFAULT_PART_BYTES, max(size, MIN_PART_BYTES))
    sweep_expired(session, settings)
    return repo.add(
        session,
        Upload(
            api_key_id=api_key_id,
            filename=filename,
            name=name,
            dedupe=dedupe,
            kind=kind,
            size=size,
            part_size=part_size,
            status="open",
            expires_at=utcnow() + timedelta(seconds=settings.upload_ttl_s),
        ),
    )


def get_upload(session: Session, upload_id: uuid.UUID, api_key_id: uuid.UUID | None) -> Upload:
    upload = repo.get(session, upload_id)
    if upload is None or (upload.api_key_id is not None and upload.api_key_id != api_key_id):
        raise UploadNotFound(f"upload {upload_id} does not exist (or expired and was swept)")
    return upload


def progress(settings: Settings, upload: Upload) -> dict[str, Any]:
    stored = store.stored_parts(settings.layout.upload_parts_dir(upload.id))
    total = parts_total(upload)
    return {
        "parts_total": total,
        "parts": [
            {"number": p.number, "size": p.size, "sha256": p.sha256}
            for p in sorted(stored.values(), key=lambda p: p.number)
        ],
        "missing": [n for n in range(1, total + 1) if n not in stored],
        "bytes_received": sum(p.size for p in stored.values()),
    }


async def put_part(
    settings: Settings,
    upload: Upload,
    number: int,
    body: AsyncIterator[bytes],
    *,
    sha256: str | None,
    md5: str | None,
) -> store.StoredPart:
    if upload.status != "open":
        raise Conflict(
            f"upload {upload.id} is {upload.status}; it takes no more parts",
            code="upload_completed",
            details={"dataset_id": str(upload.dataset_id) if upload.dataset_id else None},
        )
    if sha256 is None and md5 is None:
        raise InvalidInput(
            "every part needs a checksum: a Content-SHA256 header (hex) or Content-MD5 (base64)",
            code="part_checksum_required",
        )
    try:
        return await store.receive_part(
            settings.layout.upload_parts_dir(upload.id),
            number,
            body,
            expected_size=part_bytes(upload, number),
            sha256=sha256,
            md5_b64=md5,
        )
    except FileNotFoundError:
        # The sweep removed the upload's folder while this part was arriving.
        raise _swept(upload.id) from None


def touch(session: Session, settings: Settings, upload: Upload) -> None:
    """A stored part keeps the upload alive for another ``upload_ttl_s``."""
    expires_at = utcnow() + timedelta(seconds=settings.upload_ttl_s)
    if not repo.extend(session, upload.id, expires_at):
        row = repo.get(session, upload.id)
        if row is None:  # swept between the part's arrival and now, its folder with it
            raise _swept(upload.id)
        session.refresh(row)
        raise Conflict(  # completed meanwhile: the part came too late to count
            f"upload {upload.id} was completed while this part arrived; it takes no more parts",
            code="upload_completed",
            details={"dataset_id": str(row.dataset_id) if row.dataset_id else None},
        )


def _swept(upload_id: uuid.UUID) -> UploadNotFound:
    return UploadNotFound(
        f"upload {upload_id} expired and was swept while this part arrived; create a new upload",
        details={"id": str(upload_id)},
    )


@contextmanager
def complete_upload(
    session: Session, settings: Settings, upload: Upload
) -> Iterator[tuple[Dataset, bool]]:
    """Ingest the assembled parts and yield (dataset, created); the caller commits inside the
    block (if it raises, the dataset is removed again). Completing twice yields the same
    dataset. The parts are removed once the block has committed."""
    if upload.status == "completed" and upload.dataset_id is not None:
        dataset = datasets_repo.get(session, upload.dataset_id)
        if dataset is not None:
            yield dataset, False
            return
    folder = settings.layout.upload_parts_dir(upload.id)
    missing = progress(settings, upload)["missing"]
    if missing:
        raise UploadIncomplete(
            f"upload {upload.id} still misses {len(missing)} part(s) (first: {missing[0]}); "
            "send them, then complete",
            details={"missing": missing[:1000]},
        )
    assembled = folder / f".assembled-{uuid.uuid4().hex}"
    try:
        store.assemble(folder, parts_total(upload), assembled)
        with ingest_dataset(
            session, settings, assembled, filename=upload.filename, name=upload.name,
            dedupe=upload.dedupe,  # type: ignore[arg-type]
            kind=check_kind(upload.kind),
        ) as ingest:  # fmt: skip
            upload.status = "completed"
            upload.dataset_id = ingest.dataset.id
            session.flush()
            yield ingest.dataset, True
    finally:
        assembled.unlink(missing_ok=True)
    store.remove(folder)  # after the commit: the dataset now stands on its own


def abort_upload(session: Session, settings: Settings, upload: Upload) -> Path:
    """Delete the row; return the parts folder, which the caller removes after the commit."""
    repo.delete_ids(session, [upload.id])
    return settings.layout.upload_parts_dir(upload.id)


def sweep_expired(session: Session, settings: Settings) -> list[uuid.UUID]:
    """Delete uploads idle past their expiry with their parts, and part folders with no row
    (an upload deleted while a part was arriving). Returns the ids removed."""
    expired = list(repo.expired_ids(session, utcnow()))
    repo.delete_ids(session, expired)
    root = settings.layout.uploads
    folders = {}
    for entry in root.iterdir() if root.is_dir() else []:
        try:
            folders[uuid.UUID(entry.name)] = entry
        except ValueError:
            continue
    orphans = set(folders) - repo.known_ids(session, list(folders)) | set(expired)
    for upload_id in orphans:
        if upload_id in folders:
            store.remove(folders[upload_id])
    if expired:
        log.warning("swept %d expired upload(s): %s", len(expired), ", ".join(map(str, expired)))
    return sorted(orphans | set(expired), key=str)
