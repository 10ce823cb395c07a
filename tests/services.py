"""Real Postgres and Redis for the tests that need them.

Postgres and Redis must be up (``.ci/run`` starts them). In CI (``CI`` set) an unreachable service
fails the tests; on a laptop without them the tests are skipped with the reason.
"""

from __future__ import annotations

import os
import random
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

    # A logical database of our own, claimed with SET NX, so that several test sessions on one
    # Redis (parallel checkouts, CI jobs) never share a queue or flush each other's. A random
    # number alone collided about one time in three with four sessions.
    token = secrets.token_hex(8)
    host = redis.Redis.from_url(f"{REDIS_HOST_URL}/0", socket_timeout=3)
    require("Redis", host.ping)
    host.close()
    for db in random.sample(range(1, 16), 15):
        client = redis.Redis.from_url(f"{REDIS_HOST_URL}/{db}", socket_timeout=3)
        if client.set(_CLAIM_KEY, token, nx=True, ex=6 * 3600):
            break
        client.close()
    else:
        pytest.fail("every Redis logical database 1-15 is claimed by another test session")
    for key in client.scan_iter():
        if key != _CLAIM_KEY.encode():
            client.delete(key)
    yield f"{REDIS_HOST_URL}/{db}"
    client.flushdb()
    client.close()


_CLAIM_KEY = "transferlab-test-session"
