"""Shared by the benchmark scripts: real data (MNIST, scikit-learn digits) and a running service.

Benchmarks talk to the service over HTTP, exactly as a user does: `Service` starts
`transferlab serve` (embedded) or `transferlab api` + `transferlab worker` (Postgres + Redis) in
a temporary data folder and stops them at the end.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
# ../shared/data/mnist beside the checkout; MNIST_DIR points elsewhere (e.g. from a clone in /tmp).
MNIST_DIR = Path(os.environ.get("MNIST_DIR", ROOT.parent / "shared" / "data" / "mnist"))
BIN = Path(sys.executable).parent


def load_mnist(limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 MNIST test images (28x28 uint8) and labels from ../shared/data/mnist."""
    images_path = MNIST_DIR / "t10k-images-idx3-ubyte.gz"
    labels_path = MNIST_DIR / "t10k-labels-idx1-ubyte.gz"
    if not images_path.exists():
        raise SystemExit(f"MNIST not found: expected {images_path} (see ../shared/data/README.md)")
    with gzip.open(images_path) as fh:
        images = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(labels_path) as fh:
        labels = np.frombuffer(fh.read(), np.uint8, offset=8)
    return (images[:limit], labels[:limit]) if limit else (images, labels)


def load_digits_as_mnist() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits drawn like MNIST: ink scaled to 0..255, the digit in a 20x20
    box centred on a 28x28 black canvas (MNIST's own normalisation)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    out = np.zeros((len(bunch.images), 28, 28), np.uint8)
    for i, img in enumerate(bunch.images):
        small = Image.fromarray((img * (255.0 / 16.0)).astype(np.uint8), mode="L")
        out[i, 4:24, 4:24] = np.asarray(small.resize((20, 20), Image.BILINEAR))
    return out, bunch.target.astype(np.uint8)


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def write_zip(
    path: Path, splits: dict[str, Iterable[tuple[np.ndarray, int]]], flat: bool = False
) -> Path:
    """splits: {"train": [(image, label), ...], "val": [...]} -> train/<label>/..., val/<label>/...
    (or <label>/... when flat)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for split, items in splits.items():
            for i, (image, label) in enumerate(items):
                prefix = "" if flat else f"{split}/"
                zf.writestr(f"{prefix}{label}/{i:05d}.png", png(image))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """A running TransferLab over HTTP. embedded=True: `transferlab serve`; otherwise api + worker
    against the given database and broker URLs."""

    def __init__(
        self, *, database_url: str | None = None, broker_url: str | None = None, **env: str
    ) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="transferlab-bench-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TRANSFERLAB_")}
        self.env |= {"TRANSFERLAB_DATA_DIR": str(self.tmp / "data"), **env}
        if database_url:
            self.env["TRANSFERLAB_DATABASE_URL"] = database_url
        if broker_url:
            self.env["TRANSFERLAB_BROKER_URL"] = broker_url
        self.log = (self.tmp / "service.log").open("w")
        self.processes: list[subprocess.Popen] = []
        tl = str(BIN / "transferlab")
        # An admin key, made on the database as an operator would (it migrates it first).
        key = subprocess.run(
            [tl, "keys", "create", "--scopes", "admin", "--name", "bench"],
            env=self.env, check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        if database_url or broker_url:
            self._start([tl, "api", "--port", str(self.port)])
            self._start([tl, "worker", "--loglevel", "WARNING"])
        else:
            self._start([tl, "serve", "--port", str(self.port)])
        self.client = httpx.Client(
            base_url=self.url, timeout=120, headers={"Authorization": f"Bearer {key}"}
        )
        self._wait_ready()

    def _start(self, args: list[str]) -> None:
        self.processes.append(
            subprocess.Popen(
                args,
                env=self.env,
                stdout=self.log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if self.client.get("/readyz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"service did not become ready; see {self.tmp / 'service.log'}")

    def upload(self, path: Path) -> dict:
        with path.open("rb") as fh:
            r = self.client.post("/v1/datasets", files={"file": (path.name, fh)})
        r.raise_for_status()
        return r.json()

    def submit(self, spec: dict) -> dict:
        r = self.client.post("/v1/jobs", json=spec)
        if r.status_code != 202:
            raise SystemExit(f"job rejected: {r.text}")
        return r.json()

    def wait(self, job_id: str, timeout: float = 3600) -> dict:
        return wait_for_job(self.client, job_id, timeout)

    def run(self, spec: dict) -> tuple[dict, dict]:
        """Submit, wait, and return (job, model version)."""
        job = self.wait(self.submit(spec)["id"])
        return job, self.client.get(f"/v1/models/{job['model_id']}").json()

    def close(self) -> None:
        self.client.close()
        for p in self.processes:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.processes:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A GitHub-flavoured Markdown table, ready to paste into the README."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in cells)])


def seconds_between(a: str, b: str) -> float:
    """Seconds between two ISO timestamps from the API."""
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


def train_source(
    svc: Service, work: Path, backbone: str, image_size: int, n_images: int, epochs: int
) -> dict:
    """The source task: `backbone` trained from scratch on the first `n_images` MNIST images
    (the rest held out as val/) as a job. Returns the model version."""
    images, labels = load_mnist()
    pairs = list(zip(images, labels.tolist(), strict=True))
    archive = write_zip(work / "mnist.zip", {"train": pairs[:n_images], "val": pairs[n_images:]})
    t0 = time.monotonic()
    dataset = svc.upload(archive)
    _, model = svc.run(
        {
            "strategy": "finetune",
            "base_model": f"timm:{backbone}",
            "pretrained": False,
            "dataset_id": dataset["id"],
            "name": "mnist-source",
            "hyperparameters": {
                "epochs": epochs, "image_size": image_size, "batch_size": 64,
                "learning_rate": 2e-3, "augmentation": "light",
            },
        }
    )  # fmt: skip
    print(
        f"source: {backbone} from scratch on {n_images} MNIST images, {epochs} epochs -> "
        f"{model['metrics']['val_accuracy']:.3f} on {len(pairs) - n_images} held-out MNIST "
        f"({time.monotonic() - t0:.0f} s)",
        flush=True,
    )
    return model


def wait_for_job(client: httpx.Client, job_id: str, timeout: float = 3600) -> dict:
    """Poll until the job ends; the job if it succeeded, else SystemExit with its error."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            if job["status"] != "succeeded":
                raise SystemExit(f"job {job_id} {job['status']}: {job.get('error')}")
            return job
        time.sleep(0.25)
    raise SystemExit(f"job {job_id} did not finish in {timeout} s")
