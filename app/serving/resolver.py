"""Model references -> versions, cached so that a prediction costs no database round trip.

A reference is what the API accepts wherever it took a version id:

* ``0b6f2d7e-1a7c-4b8e-8a39-7e2f4c1d9a00``: the version id;
* ``digits:3``: version 3 of the model named ``digits``;
* ``digits@prod``: the version the alias ``prod`` of ``digits`` points at now.

``@`` and ``:`` are allowed unescaped in a URL path segment (RFC 3986 ``pchar``), names and aliases
are slugs (letters, digits, ``.``, ``_``, ``-``), so a reference never needs escaping; ``%40`` and
``%3A`` work too, since the path is decoded before routing.

What is cached, and for how long:

* version id -> (id, name, version, artifact key), and ``name:version`` -> id: forever (bounded
  LRU). Those fields of a version never change; archived versions still resolve.
* ``name@alias`` -> id: until this process moves or removes that alias (dropped after the commit),
  or until another process's move is seen.

Other processes learn of a move or a delete through the registry generation (one integer row,
bumped in the transaction of every alias move and version delete): a resolver reads it at most once
every ``ttl_s`` (``TRANSFERLAB_REGISTRY_CACHE_S``, 5 s by default) and drops every cached entry
when it changed. So ``name@alias`` follows a move made elsewhere within ``ttl_s`` (plus the
duration of one request), and a deleted version stops resolving elsewhere within the same bound;
in the steady state a process spends one tiny query per ``ttl_s``, not one per request.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from app.db.models import ModelVersion
from app.db.repositories import models as models_repo
from app.db.repositories import registry as registry_repo
from app.errors import InvalidInput
from app.services.models import ModelNotFound

REF_HELP = "a version id (uuid), name:version (digits:3) or name@alias (digits@prod)"
_SLUG = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"
_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
# The OpenAPI pattern of a reference, and exactly what parse_ref accepts.
REF_PATTERN = rf"^(?:{_UUID}|{_SLUG}:[1-9][0-9]{{0,8}}|{_SLUG}@{_SLUG})$"
_REF = re.compile(REF_PATTERN[1:-1])


class InvalidModelRef(InvalidInput):
    code = "invalid_model_ref"


@dataclass(frozen=True)
class ModelRef:
    """A parsed reference: exactly one of ``model_id``, ``version`` (with ``name``) or ``alias``."""

    text: str
    model_id: uuid.UUID | None = None
    name: str | None = None
    version: int | None = None
    alias: str | None = None


@dataclass(frozen=True)
class ResolvedModel:
    """The immutable part of a version: all a prediction or a download needs."""

    id: uuid.UUID
    name: str
    version: int
    artifact_key: str

    @classmethod
    def of(cls, row: ModelVersion) -> ResolvedModel:
        return cls(id=row.id, name=row.name, version=row.version, artifact_key=row.artifact_key)


def parse_ref(text: str) -> ModelRef:
    if _REF.fullmatch(text):
        if "@" in text:
            name, _, alias = text.partition("@")
            return ModelRef(text, name=name, alias=alias)
        if ":" in text:
            name, _, number = text.partition(":")
            return ModelRef(text, name=name, version=int(number))
        return ModelRef(text, model_id=uuid.UUID(text))
    raise InvalidModelRef(
        f"{text[:120]!r} is not a model reference; use {REF_HELP}",
        details={"ref": text[:120]},
    )


class ModelResolver:
    """Resolves references through a bounded cache; thread-safe (the API's threadpool calls it)."""

    def __init__(self, ttl_s: float, capacity: int = 4096) -> None:
        self.ttl_s = ttl_s
        self.capacity = max(1, capacity)
        self._lock = threading.Lock()
        self._by_id: OrderedDict[uuid.UUID, ResolvedModel] = OrderedDict()
        self._by_name: OrderedDict[tuple[str, str], uuid.UUID] = OrderedDict()  # (name, "3"|"@a")
        self._generation: int | None = None
        self._checked_at = float("-inf")
        # Bumped by every local invalidation: a lookup that started before one does not store
        # what it read (it may have read the alias's old target).
        self._epoch = 0

    def resolve(self, session: Session, ref: str | ModelRef) -> ResolvedModel:
        parsed = parse_ref(ref) if isinstance(ref, str) else ref
        self._check_generation(session)
        with self._lock:
            epoch = self._epoch
            hit = self._cached(parsed)
        if hit is not None:
            return hit
        found = self._lookup(session, parsed)
        with self._lock:
            if epoch == self._epoch:
                self._store(parsed, found)
        return found

    def cached(self, ref: str | ModelRef) -> ResolvedModel | None:
        """The version ``ref`` names if this process knows it and checked the registry
        generation less than ``ttl_s`` ago; else None (then ``resolve`` with a session). Costs
        no SQL and never blocks, so the event loop may call it; a malformed ``ref`` raises
        ``InvalidModelRef``."""
        parsed = parse_ref(ref) if isinstance(ref, str) else ref
        if time.monotonic() - self._checked_at >= self.ttl_s:
            return None
        with self._lock:
            return self._cached(parsed)

    def forget_alias(self, name: str, alias: str) -> None:
        with self._lock:
            self._epoch += 1
            self._by_name.pop((name, "@" + alias), None)

    def forget_version(self, resolved: ResolvedModel) -> None:
        with self._lock:
            self._epoch += 1
            self._by_id.pop(resolved.id, None)
            self._by_name.pop((resolved.name, str(resolved.version)), None)

    def after_commit(self, session: Session, forget: Any) -> None:
        """Run ``forget()`` once ``session`` commits (and not at all if it rolls back): dropping
        an entry before the commit would let a concurrent lookup cache the old target again."""
        event.listen(session, "after_commit", lambda _s: forget(), once=True)

    def clear(self) -> None:
        with self._lock:
            self._epoch += 1
            self._by_id.clear()
            self._by_name.clear()

    def _check_generation(self, session: Session) -> None:
        now = time.monotonic()
        if now - self._checked_at < self.ttl_s:
            return
        current = registry_repo.generation(session)
        with self._lock:
            if self._generation is not None and current != self._generation:
                self._epoch += 1
                self._by_id.clear()
                self._by_name.clear()
            self._generation = current
            self._checked_at = now

    def _cached(self, ref: ModelRef) -> ResolvedModel | None:
        model_id = ref.model_id
        if model_id is None:
            model_id = self._by_name.get(_name_key(ref))
            if model_id is None:
                return None
            self._by_name.move_to_end(_name_key(ref))
        hit = self._by_id.get(model_id)
        if hit is not None:
            self._by_id.move_to_end(model_id)
        return hit

    def _store(self, ref: ModelRef, found: ResolvedModel) -> None:
        self._by_id[found.id] = found
        self._by_id.move_to_end(found.id)
        self._by_name[(found.name, str(found.version))] = found.id
        if ref.alias is not None:
            self._by_name[_name_key(ref)] = found.id
        while len(self._by_id) > self.capacity:
            self._by_id.popitem(last=False)
        while len(self._by_name) > self.capacity:
            self._by_name.popitem(last=False)

    @staticmethod
    def _lookup(session: Session, ref: ModelRef) -> ResolvedModel:
        row: ModelVersion | None
        if ref.model_id is not None:
            row = models_repo.get(session, ref.model_id)
            missing = f"model version {ref.model_id} does not exist"
        elif ref.version is not None:
            assert ref.name is not None
            row = models_repo.get_by_version(session, ref.name, ref.version)
            missing = f"model {ref.name!r} has no version {ref.version}"
        else:
            assert ref.name is not None and ref.alias is not None
            target = registry_repo.alias_target(session, ref.name, ref.alias)
            row = models_repo.get(session, target) if target is not None else None
            missing = (
                f"model {ref.name!r} has no alias {ref.alias!r} "
                f"(GET /v1/models/{ref.name}/aliases lists them)"
            )
        if row is None:
            raise ModelNotFound(
                f"{missing}; GET /v1/models lists versions", details={"ref": ref.text}
            )
        return ResolvedModel.of(row)


def _name_key(ref: ModelRef) -> tuple[str, str]:
    assert ref.name is not None
    return (ref.name, "@" + ref.alias if ref.alias is not None else str(ref.version))
