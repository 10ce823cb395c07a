"""`transferlab serve`: the embedded default (SQLite + folder broker + one worker), no services."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import zipfile

import httpx
import pytest

from tests.e2e.conftest import BIN, start_serve, stop, upload_file, wait_for_job

pytestmark = pytest.mark.e2e


def test_serve_runs_the_whole_loop_without_services(tmp_path, digits_zip):
    service, banner, worker_pid = start_serve(tmp_path)
    serve = service.processes[0]
    try:
        assert "sqlite:///" in banner and str(tmp_path / "data") in banner
        # The first start made an admin key and printed it once.
        service.api_key = re.search(r"^  (tl_\S+)$", banner, re.MULTILINE).group(1)
        with service.client() as c:
            assert c.get("/v1/jobs").status_code == 200
        assert httpx.get(f"{service.url}/v1/jobs").status_code == 401

        path = digits_zip(classes=(0, 1), per_class=10, name="serve.zip")
        with service.client() as c:
            dataset = upload_file(c, path)
            r = c.post(
                "/v1/jobs",
                json={
                    "strategy": "finetune",
                    "base_model": "timm:test_resnet",
                    "pretrained": False,
                    "dataset_id": dataset["id"],
                    "hyperparameters": {"epochs": 1, "image_size": 32, "batch_size": 8},
                },
            )
            assert r.status_code == 202, r.text
            job = wait_for_job(c, r.json()["id"], timeout=120)
            assert job["status"] == "succeeded", f"{job}\n{service.log_text()}"
            png = zipfile.ZipFile(path).read("digit_0/000.png")
            pred = c.post(
                f"/v1/models/{job['model_id']}/predict", files=[("files", ("x.png", png))]
            )
            assert pred.status_code == 200, pred.text
        assert (tmp_path / "data" / "transferlab.db").exists()

        # Stopping serve (SIGTERM to it alone) also stops the worker it started.
        os.kill(serve.pid, signal.SIGTERM)
        assert serve.wait(timeout=30) == 0
        deadline = time.monotonic() + 30
        while _alive(worker_pid):
            assert time.monotonic() < deadline, "the worker outlived serve"
            time.sleep(0.2)
    finally:
        stop(serve)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it has exited, which is all that matters here.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_serve_killed_by_sigkill_takes_its_worker_with_it(tmp_path):
    # Found by an attack: the orphaned worker kept taking jobs with the old code, and each
    # restart of serve added one more.
    service, _, worker_pid = start_serve(tmp_path)
    serve = service.processes[0]
    try:
        os.kill(serve.pid, signal.SIGKILL)
        serve.wait()
        deadline = time.monotonic() + 30
        while _alive(worker_pid):
            assert time.monotonic() < deadline, "the worker outlived a SIGKILLed serve"
            time.sleep(0.2)
    finally:
        stop(serve)


def test_serve_on_a_taken_port_exits_before_starting_a_worker(tmp_path):
    # Seen by accident: a second serve on a busy port started its worker, which could take
    # jobs from the data folder for the seconds before the API failed to bind.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRANSFERLAB_")}
    env["TRANSFERLAB_DATA_DIR"] = str(tmp_path / "data")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [str(BIN / "transferlab"), "serve", "--port", str(port)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "worker:" not in done.stdout + done.stderr
    # Nothing was started or written on the way out: not even the database.
    assert not (tmp_path / "data").exists()
