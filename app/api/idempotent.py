"""The Idempotency-Key handling the create endpoints share (see app.services.idempotency)."""

from __future__ import annotations

from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.models import IdempotencyRecord
from app.services import idempotency
from app.services.keys import Principal


def _replay(record: IdempotencyRecord) -> JSONResponse:
    return JSONResponse(
        record.response, status_code=record.status_code, headers={"Idempotent-Replayed": "true"}
    )


class IdempotentCreate:
    """One create request; with no Idempotency-Key every method does nothing."""

    def __init__(
        self,
        session: Session,
        *,
        principal: Principal,
        endpoint: str,
        key: str | None,
        request: list[bytes],
        ttl_s: float,
    ) -> None:
        self.session, self.ttl_s = session, ttl_s
        self.idem = (
            idempotency.Idempotency(
                principal.key_id, endpoint, key, idempotency.fingerprint(*request)
            )
            if key
            else None
        )

    def replayed(self) -> JSONResponse | None:
        """The first response, if this key was seen with this request (409 if with another)."""
        if self.idem is None:
            return None
        if record := idempotency.find(self.session, self.idem, self.ttl_s):
            return _replay(record)
        # End the transaction the lookup opened (keeping a removal of an expired record): an
        # upload is spooled and extracted next, and on Postgres a connection must not sit idle in
        # a transaction for that long.
        self.session.commit()
        return None

    def remember(self, status_code: int, out: BaseModel) -> JSONResponse | None:
        """Store ``out`` as the first response. If a concurrent request with the same key got
        there first, roll this transaction back (what it created included) and return theirs."""
        if self.idem is None:
            return None
        try:
            idempotency.remember(self.session, self.idem, status_code, out.model_dump(mode="json"))
        except IntegrityError:
            self.session.rollback()
            if replay := self.replayed():
                return replay
            raise
        return None

    def forget(self) -> None:
        """After a failure reported to the client: the same key may be used to try again."""
        if self.idem:
            idempotency.forget(self.session, self.idem)
