"""The real app on real SQLite and the folder broker, in-process; metrics read from
prometheus-client's own registry, compared before and after so test order does not matter."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from app.main import create_app
from app.settings import Settings
from tests.api.conftest import bearer, make_key


@pytest.fixture
def auth_headers(settings: Settings) -> dict[str, str]:
    """What /metrics and /v1 need; the one place that knows about API keys."""
    return bearer(make_key(settings, ["read"], name="metrics"))


@pytest.fixture
def client(settings: Settings, auth_headers: dict[str, str]) -> Iterator[TestClient]:
    with TestClient(create_app(settings), headers=auth_headers) as c:
        yield c


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def delta() -> Callable[..., Callable[[], float]]:
    """delta(name, **labels)() -> how much the sample grew since delta() was called."""

    def start(name: str, **labels: str) -> Callable[[], float]:
        before = sample(name, **labels)
        return lambda: sample(name, **labels) - before

    return start
