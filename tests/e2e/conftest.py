"""End-to-end fixtures: the service's own commands as real processes (Postgres and Redis come
from tests/services.py)."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import digit_png

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent


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
    api_key: str = ""

    def client(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return httpx.Client(base_url=self.url, timeout=60, headers=headers)

    def stop(self) -> None:
        for p in self.processes:
            stop(p)

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


def start_stack(postgres_url: str, redis_url: str, root: Path, **extra_env: str) -> Service:
    """The docker-compose services, as processes: migrate (one-shot), api, worker."""
    logs = root / "logs"
    logs.mkdir()
    env = {
        **os.environ,
        "TRANSFERLAB_DATABASE_URL": postgres_url,
        "TRANSFERLAB_BROKER_URL": redis_url,
        "TRANSFERLAB_DATA_DIR": str(root / "data"),
        "TRANSFERLAB_LOADER_WORKERS": "0",
        # One torch thread, as the engine tests use: spin-waiting OpenMP threads collapse when
        # the test process or a helper holds a core. test_stack checks the worker applied it.
        "TRANSFERLAB_TORCH_THREADS": "1",
        "TRANSFERLAB_PROGRESS_INTERVAL_S": "0.2",
        **extra_env,
    }
    subprocess.run([BIN / "transferlab", "migrate"], env=env, check=True, capture_output=True)
    # The operator's first step in production: a key, made with the CLI on the database.
    api_key = subprocess.run(
        [BIN / "transferlab", "keys", "create", "--scopes", "admin", "--name", "e2e"],
        env=env, check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    api = start([str(BIN / "transferlab"), "api", "--port", str(port)], env, logs / "api.log")
    worker = start([str(BIN / "transferlab"), "worker"], env, logs / "worker.log")
    service = Service(url=url, env=env, logs=logs, processes=[api, worker], api_key=api_key)
    try:
        wait_ready(url, service.processes, service.log_text)
    except BaseException:
        service.stop()
        raise
    return service


def start_serve(tmp_path, **extra_env: str) -> tuple[Service, str, int]:
    """`transferlab serve` on a fresh data folder: the service, its start-up banner, and the pid
    of the worker it started."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRANSFERLAB_")}
    env |= {"TRANSFERLAB_DATA_DIR": str(tmp_path / "data"), "TRANSFERLAB_LOADER_WORKERS": "0"}
    env |= extra_env
    port = free_port()
    logs = tmp_path / "logs"
    logs.mkdir()
    serve = start([str(BIN / "transferlab"), "serve", "--port", str(port)], env, logs / "serve.log")
    service = Service(url=f"http://127.0.0.1:{port}", env=env, logs=logs, processes=[serve])
    try:
        wait_ready(service.url, [serve], service.log_text)
    except BaseException:
        stop(serve)
        raise
    banner = (logs / "serve.log").read_text()
    return service, banner, int(re.search(r"worker:\s+pid (\d+)", banner).group(1))


@pytest.fixture(scope="session")
def embedded(tmp_path_factory) -> Iterator[Service]:
    """One `transferlab serve` (SQLite, folder broker, one worker) shared by the client, CLI and
    dashboard tests, with the admin key it printed on its first start."""
    service, banner, _ = start_serve(
        tmp_path_factory.mktemp("embedded"),
        # Step progress and event polls often enough that a job of a few seconds shows them.
        TRANSFERLAB_PROGRESS_INTERVAL_S="0.1",
        TRANSFERLAB_EVENTS_POLL_S="0.1",
        # Streams close every 3 s (as they do every 15 s by default), so the CLI, client and
        # dashboard tests reconnect with Last-Event-ID while their jobs run.
        TRANSFERLAB_EVENTS_MAX_S="3",
        TRANSFERLAB_TORCH_THREADS="1",
        # No hub here: a job that asks for published weights fails at once (the CLI test's
        # failing job), instead of after the hub client's retries.
        HF_HUB_OFFLINE="1",
    )
    service.api_key = re.search(r"^  (tl_\S+)$", banner, re.MULTILINE).group(1)
    yield service
    service.stop()


@pytest.fixture(scope="module")
def stack(postgres_url, redis_url, tmp_path_factory) -> Iterator[Service]:
    service = start_stack(postgres_url, redis_url, tmp_path_factory.mktemp("stack"))
    yield service
    service.stop()


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


# The PNG planted twice: the same bytes in train and in val, a duplicate across splits.
PLANTED = ("train/digit_0/000.png", "val/digit_0/copy-of-000.png")


@pytest.fixture(scope="session")
def leaky_zip(digits, digits_zip) -> Path:
    """Digits 0-2 under train/ (000-006 of each) and val/ (007-009), and PLANTED: the same
    PNG in train and val, so the report has a duplicate across splits and val leaks. Also a
    copy within a class and one larger RGB image, so every section of the report has content."""
    source = zipfile.ZipFile(digits_zip(classes=(0, 1, 2), per_class=10, name="leaky-src.zip"))
    path = Path(str(source.filename)).with_name("leaky.zip")
    images, targets = digits
    rgb = io.BytesIO()
    big = Image.open(io.BytesIO(digit_png(images[np.flatnonzero(targets == 1)[20]], size=64)))
    big.convert("RGB").save(rgb, format="PNG")
    with zipfile.ZipFile(path, "w") as zf:
        for member in source.namelist():
            split = "val" if int(member.split("/")[1][:3]) >= 7 else "train"
            zf.writestr(f"{split}/{member}", source.read(member))
        zf.writestr(PLANTED[1], source.read(PLANTED[0].removeprefix("train/")))
        zf.writestr("train/digit_2/000 (copy).png", source.read("digit_2/000.png"))
        zf.writestr("train/digit_1/large-rgb.png", rgb.getvalue())
    return path
