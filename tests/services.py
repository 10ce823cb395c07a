"""Real Postgres and Redis for the tests that need them.

Postgres and Redis must be up (``.ci/run`` starts them). In CI (``CI`` set) an unreachable service
fails the tests; on a laptop without them the tests are skipped with the reason.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

PG_ADMIN_URL = os.environ.get(
    "TRANSFERLAB_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_HOST_URL = os.environ.get("TRANSFERLAB_TEST_REDIS", "redis://127.0.0.1:6379")


def require(service: str, check: Callable[[], object]) -> None:
    try:
        check()
    except Exception as exc:
        message = f"{service} is unreachable ({type(exc).__name__}: {exc})"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must run the end-to-end tests (.ci/run starts it)")
        pytest.skip(f"{message}; start it (see .ci/run) to run the end-to-end tests")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    require("PostgreSQL", lambda: admin.connect().close())
    name = f"transferlab_e2e_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    import redis

    # A random logical database so parallel sessions on one Redis do not share a queue.
    url = f"{REDIS_HOST_URL}/{secrets.randbelow(14) + 1}"
    client = redis.Redis.from_url(url, socket_timeout=3)
    require("Redis", client.ping)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()
