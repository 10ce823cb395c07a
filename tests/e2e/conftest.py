"""End-to-end fixtures: the service's own commands as real processes.

Postgres and Redis must be up (``.ci/run`` starts them). In CI (``CI`` set) an unreachable service
fails the tests; on a laptop without them the tests are skipped with the reason.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

pytestmark = pytest.mark.e2e

PG_ADMIN_URL = os.environ.get(
    "TRANSFERLAB_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_HOST_URL = os.environ.get("TRANSFERLAB_TEST_REDIS", "redis://127.0.0.1:6379")
BIN = Path(sys.executable).parent


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Service:
    url: str
    env: dict[str, str]
    logs: Path
    processes: list[subprocess.Popen]

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)

    def log_text(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-4000:]}" for p in self.logs.glob("*.log"))


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        args,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # so teardown can signal the process and its children
    )


def stop(process: subprocess.Popen, timeout: float = 20) -> int:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode


def wait_ready(url: str, processes: list[subprocess.Popen], describe: Callable[[], str]) -> None:
    deadline = time.monotonic() + 90
    last = ""
    while time.monotonic() < deadline:
        for p in processes:
            if p.poll() is not None:
                raise AssertionError(f"{p.args} exited with {p.returncode}\n{describe()}")
        try:
            r = httpx.get(f"{url}/readyz", timeout=2)
            if r.status_code == 200:
                return
            last = r.text
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.3)
    raise AssertionError(f"service not ready after 90 s: {last}\n{describe()}")


@pytest.fixture(scope="module")
def stack(postgres_url, redis_url, tmp_path_factory) -> Iterator[Service]:
    """The docker-compose services, as processes: migrate (one-shot), api, worker."""
    root = tmp_path_factory.mktemp("stack")
    logs = root / "logs"
    logs.mkdir()
    env = {
        **os.environ,
        "TRANSFERLAB_DATABASE_URL": postgres_url,
        "TRANSFERLAB_BROKER_URL": redis_url,
        "TRANSFERLAB_DATA_DIR": str(root / "data"),
        "TRANSFERLAB_LOADER_WORKERS": "0",
        "TRANSFERLAB_PROGRESS_INTERVAL_S": "0.2",
    }
    subprocess.run([BIN / "transferlab", "migrate"], env=env, check=True, capture_output=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    api = start([str(BIN / "transferlab"), "api", "--port", str(port)], env, logs / "api.log")
    worker = start([str(BIN / "transferlab"), "worker"], env, logs / "worker.log")
    service = Service(url=url, env=env, logs=logs, processes=[api, worker])
    try:
        wait_ready(url, service.processes, service.log_text)
        yield service
    finally:
        for p in service.processes:
            stop(p)


def wait_for_job(client: httpx.Client, job_id: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s: {job}")


def upload_file(client: httpx.Client, path: Path) -> dict:
    with path.open("rb") as fh:
        r = client.post("/v1/datasets", files={"file": (path.name, fh, "application/zip")})
    assert r.status_code == 201, r.text
    return r.json()
