"""How long a job of a killed worker takes to resume, with the default settings; and whether the
resumed job ends with the metrics of an uninterrupted one.

    .venv/bin/python bench/resume.py [--runs 3]

Postgres + Redis + Celery (BENCH_POSTGRES, BENCH_REDIS as in bench/speed.py): a finetune job is
killed (SIGKILL of its worker's process group) during its 4th epoch and a new worker is started
at once, as a process supervisor would. Measured from the kill: the job running again (attempt 2),
and the job done. The same spec is run once uninterrupted for the comparison.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BIN, Service, load_digits_as_mnist, table, write_zip

PG_URL = os.environ.get("BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/15")
KEYS = ("epoch", "train_loss", "val_loss", "val_accuracy")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    images, labels = load_digits_as_mnist()
    env = {"TRANSFERLAB_LOADER_WORKERS": "0", "TRANSFERLAB_TORCH_THREADS": "1"}
    with Service(database_url=PG_URL, broker_url=REDIS_URL, **env) as svc:
        pairs = list(zip(images[:600], labels[:600], strict=True))
        archive = write_zip(svc.tmp / "digits.zip", {"train": pairs}, flat=True)
        dataset = svc.upload(archive)
        spec = {
            "strategy": "finetune", "base_model": "timm:test_resnet", "pretrained": False,
            "dataset_id": dataset["id"],
            "hyperparameters": {"epochs": 8, "image_size": 32, "augmentation": "light"},
        }  # fmt: skip
        whole, _ = svc.run(spec)

        def metrics(job_id: str) -> list:
            rows = svc.client.get(f"/v1/jobs/{job_id}/metrics").json()["epochs"]
            return [[m[k] for k in KEYS] for m in rows]

        expected = metrics(whole["id"])
        rows = []
        for run in range(args.runs):
            job_id = svc.submit(spec)["id"]
            while svc.client.get(f"/v1/jobs/{job_id}").json()["progress"]["epoch"] < 4:
                time.sleep(0.05)
            worker = svc.processes[1]
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
            killed = time.monotonic()
            svc._start([str(BIN / "transferlab"), "worker", "--loglevel", "WARNING"])
            svc.processes[1] = svc.processes.pop()
            while True:
                job = svc.client.get(f"/v1/jobs/{job_id}").json()
                if job["attempts"] >= 2 and job["status"] == "running":
                    break
                time.sleep(0.1)
            resumed = time.monotonic() - killed
            done = svc.wait(job_id)
            rows.append([run + 1, f"{resumed:.1f} s", f"{time.monotonic() - killed:.1f} s",
                         done["attempts"], metrics(job_id) == expected])  # fmt: skip
            print(rows[-1], flush=True)
    print(table(["run", "kill -> running again", "kill -> succeeded", "attempts",
                 "metrics equal uninterrupted"], rows))  # fmt: skip
    times = [float(r[1].split()[0]) for r in rows]
    print(f"median kill -> running again: {statistics.median(times):.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
