"""Idempotency-Key: a retried POST returns the first response instead of doing the work twice.

The first response is stored with a fingerprint of the request, in the same transaction as what
the request created, keyed by (API key, endpoint, Idempotency-Key). The same key with the same
request replays it; with another request it is a 409. Two requests racing with one key both do the
work, but only one commits: the loser's insert hits the unique constraint, its transaction (job
row included) rolls back, and it replays the winner's response.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy.orm import Session

from app.db.models import IdempotencyRecord
from app.db.repositories import idempotency as repo
from app.errors import Conflict

# Printable ASCII without spaces, as in the IETF Idempotency-Key draft's examples (UUIDs, ...).
KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"


class IdempotencyKeyReused(Conflict):
    code = "idempotency_key_reused"


@dataclass(frozen=True)
class Idempotency:
    api_key_id: uuid.UUID
    endpoint: str  # "create_job", "create_dataset"
    key: str
    request_hash: str


def fingerprint(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))  # framing: ("ab", "c") != ("a", "bc")
        digest.update(part)
    return digest.hexdigest()


def find(session: Session, idem: Idempotency, ttl_s: float) -> IdempotencyRecord | None:
    """The stored first response for this key, if any; 409 if it was for another request."""
    record = repo.get(session, idem.api_key_id, idem.endpoint, idem.key)
    if record is None:
        return None
    created = record.created_at
    created = created if created.tzinfo else created.replace(tzinfo=timezone.utc)
    if created < datetime.now(timezone.utc) - timedelta(seconds=ttl_s):
        repo.remove(session, record)  # expired: the key is free again
        return None
    if record.request_hash != idem.request_hash:
        raise IdempotencyKeyReused(
            f"Idempotency-Key {idem.key!r} was already used with a different request; use a new "
            "key for a new request",
            details={"idempotency_key": idem.key},
        )
    return record


def remember(session: Session, idem: Idempotency, status_code: int, response: Any) -> None:
    """Store the first response (flush only: it commits with what the request created)."""
    repo.add(
        session,
        IdempotencyRecord(
            api_key_id=idem.api_key_id,
            endpoint=idem.endpoint,
            key=idem.key,
            request_hash=idem.request_hash,
            status_code=status_code,
            response=response,
        ),
    )


def forget(session: Session, idem: Idempotency) -> None:
    record = repo.get(session, idem.api_key_id, idem.endpoint, idem.key)
    if record is not None:
        repo.remove(session, record)


def expire(session: Session, ttl_s: float) -> int:
    return repo.delete_older_than(session, datetime.now(timezone.utc) - timedelta(seconds=ttl_s))
