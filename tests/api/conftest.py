"""API tests: the real app on a real SQLite file and the real folder broker, in-process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.db.session import Database
from app.main import create_app
from app.services import keys as key_service
from app.settings import Settings


def make_key(settings: Settings, scopes: list[str], name: str = "test") -> str:
    """A real API key in the test database (as `transferlab keys create` makes one)."""
    database = Database(settings.resolved_database_url)
    with database.session_scope() as session:
        _, secret = key_service.create_key(session, name=name, scopes=scopes)
    database.dispose()
    return secret


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def admin_key(settings: Settings) -> str:
    return make_key(settings, ["admin"], name="admin")


@pytest.fixture
def client(settings: Settings, admin_key: str) -> Iterator[TestClient]:
    """The app, called with an admin key (tests of scopes make their own keys)."""
    with TestClient(create_app(settings), headers=bearer(admin_key)) as c:
        yield c


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = Database(settings.resolved_database_url)
    yield database
    database.dispose()


def error_code(response) -> str:
    return response.json()["error"]["code"]


def queued_messages(settings: Settings) -> list[Path]:
    return sorted((settings.layout.broker / "queue").glob("*.msg"))


def upload(client: TestClient, path: Path, name: str | None = None):
    with path.open("rb") as fh:
        data = {"name": name} if name else {}
        return client.post("/v1/datasets", files={"file": (path.name, fh)}, data=data)
