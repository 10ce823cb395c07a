"""API keys: create, list, revoke, and check a presented key.

A key looks like ``tl_<prefix>_<secret>``. The prefix (12 hex digits) is public: it names the key
in listings and finds its row. Only the SHA-256 of the whole key is stored; the key itself is shown
once, when it is created. Keys carry 256 bits of randomness, so a slow password hash would add
latency to every request and no protection.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import ApiKey
from app.db.repositories import keys as repo
from app.errors import InvalidInput, NotFound
from app.naming import is_slug

# read: every GET; train: upload and delete datasets, submit and cancel jobs, move aliases, tag,
# archive and delete model versions; predict: the prediction endpoints; admin: everything,
# including managing keys.
SCOPES = ("read", "train", "predict", "admin")
KEY_PREFIX = "tl_"


class ApiKeyNotFound(NotFound):
    code = "api_key_not_found"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id, name and scopes (never the secret)."""

    key_id: uuid.UUID
    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_scopes(scopes: Iterable[str]) -> list[str]:
    chosen = sorted({s.strip() for s in scopes if s.strip()})
    unknown = [s for s in chosen if s not in SCOPES]
    if unknown or not chosen:
        raise InvalidInput(
            f"scopes must be one or more of {', '.join(SCOPES)} "
            f"(got {', '.join(unknown) or 'none'})",
            code="invalid_scope",
            details={"choices": list(SCOPES)},
        )
    return chosen


def create_key(session: Session, *, name: str, scopes: Iterable[str]) -> tuple[ApiKey, str]:
    """Insert a new key (flush only); return its row and the key itself, which is not stored."""
    if not is_slug(name):
        raise InvalidInput(
            f"key name {name!r} must be 1-100 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit",
            code="invalid_name",
        )
    prefix = secrets.token_hex(6)
    secret = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    row = repo.add(
        session,
        ApiKey(name=name, prefix=prefix, key_hash=hash_key(secret), scopes=parse_scopes(scopes)),
    )
    return row, secret


def list_keys(session: Session) -> Sequence[ApiKey]:
    return repo.list_(session)


def find_key(session: Session, ident: str) -> ApiKey:
    """A key by id or by its public prefix."""
    row = None
    try:
        row = repo.get(session, uuid.UUID(ident))
    except ValueError:
        row = repo.by_prefix(session, ident.removeprefix(KEY_PREFIX).split("_")[0])
    if row is None:
        raise ApiKeyNotFound(f"no API key with id or prefix {ident!r}; `transferlab keys list`")
    return row


def revoke_key(session: Session, ident: str) -> ApiKey:
    row = find_key(session, ident)
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    return row


def authenticate(session: Session, presented: str) -> Principal | None:
    """The principal of a valid, unrevoked key; None for anything else."""
    if not presented.startswith(KEY_PREFIX):
        return None
    prefix = presented[len(KEY_PREFIX) :].split("_", 1)[0]
    row = repo.by_prefix(session, prefix) if len(prefix) == 12 else None
    # compare_digest on the hashes: no timing signal about how much of a key matched.
    if row is None or not hmac.compare_digest(row.key_hash, hash_key(presented)):
        return None
    if row.revoked_at is not None:
        return None
    return Principal(key_id=row.id, name=row.name, scopes=frozenset(row.scopes))


def touch(session: Session, key_id: uuid.UUID) -> None:
    repo.touch(session, key_id, utcnow())


def count_active(session: Session) -> int:
    return repo.count_active(session)
