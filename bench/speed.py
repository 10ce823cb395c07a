"""Speed targets of the service, measured over its HTTP API in one run:

1. training inside a job reaches >= 0.9x the images/s of a plain PyTorch loop (same timm model,
   batch size, data, transforms and loader workers);
2. a 30-epoch linear_probe job costs <= 1.5x one forward pass over the training images;
3. with Redis and an idle worker, the median time from POST /v1/jobs to `running` is < 1 s.

Each plain-PyTorch reference runs twice, each time in a fresh process: as the textbook writes
it (torch's defaults: spinning OpenMP threads, contiguous tensors), which is what the targets
compare with, and tuned as the worker runs (OMP_WAIT_POLICY=PASSIVE, channels_last), which
shows what is left of the service's own overhead.

    .venv/bin/python bench/speed.py                  # about 15 minutes on 2 CPU cores
    .venv/bin/python bench/speed.py --skip-latency   # without Postgres/Redis

Run it on an otherwise idle machine: two processes that both use every core slow each other
down several times over.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import timm
import torch
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Service, load_mnist, seconds_between, table, write_zip

from app.engine.data import create_eval_transform, create_train_transform, resolve_preprocessing

PG_URL = os.environ.get("BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/15")


def dataset_zip(work: Path, n_train: int, n_val: int) -> Path:
    images, labels = load_mnist(n_train + n_val)
    pairs = list(zip(images, labels.tolist(), strict=True))
    return write_zip(work / "mnist.zip", {"train": pairs[:n_train], "val": pairs[n_train:]})


def preprocessing(backbone: str, image_size: int) -> tuple[torch.nn.Module, dict]:
    model = timm.create_model(backbone, pretrained=False, num_classes=10)
    cfg = resolve_preprocessing(timm.data.resolve_data_config({}, model=model), image_size)
    return model, cfg


def channels(tuned: bool) -> torch.memory_format:
    return torch.channels_last if tuned else torch.contiguous_format


def plain_loop_images_per_second(
    train_dir: Path,
    backbone: str,
    image_size: int,
    batch_size: int,
    workers: int,
    epochs: int,
    tuned: bool,
) -> list[float]:
    """The baseline: a plain PyTorch loop, nothing of ours but the same transforms."""
    torch.manual_seed(0)
    model, cfg = preprocessing(backbone, image_size)
    model = model.to(memory_format=channels(tuned))
    data = ImageFolder(str(train_dir), transform=create_train_transform(cfg))
    loader = DataLoader(
        data, batch_size=batch_size, shuffle=True, num_workers=workers,
        persistent_workers=workers > 0,
    )  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    rates = []
    for _ in range(epochs):
        start = time.perf_counter()
        for x, y in loader:
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(x.contiguous(memory_format=channels(tuned))), y).backward()
            optimizer.step()
        rates.append(len(data) / (time.perf_counter() - start))
    return rates


def forward_pass_seconds(
    train_dir: Path, backbone: str, image_size: int, batch_size: int, workers: int, tuned: bool
) -> float:
    model, cfg = preprocessing(backbone, image_size)
    model = model.to(memory_format=channels(tuned)).eval()
    data = ImageFolder(str(train_dir), transform=create_eval_transform(cfg))
    loader = DataLoader(data, batch_size=batch_size, num_workers=workers)
    start = time.perf_counter()
    with torch.inference_mode():
        for x, _ in loader:
            images = x.contiguous(memory_format=channels(tuned))
            model.forward_head(model.forward_features(images), pre_logits=True)
    return time.perf_counter() - start


def _reference(args: tuple) -> tuple[float, float]:
    # This process was spawned; its DataLoader workers fork, as they would in a plain script.
    multiprocessing.set_start_method("fork", force=True)
    train_dir, backbone, size, batch_size, workers, epochs, tuned = args
    rates = plain_loop_images_per_second(
        train_dir, backbone, size, batch_size, workers, epochs, tuned
    )
    forward = forward_pass_seconds(train_dir, backbone, size, batch_size, workers, tuned)
    return statistics.median(rates[1:]), forward


def reference(*args: object, tuned: bool) -> tuple[float, float]:
    """(plain training images/s, forward-pass seconds), measured in a fresh process: libgomp
    reads OMP_WAIT_POLICY once, when torch loads."""
    saved = os.environ.pop("OMP_WAIT_POLICY", None)
    if tuned:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
            return pool.submit(_reference, (*args, tuned)).result()
    finally:
        os.environ.pop("OMP_WAIT_POLICY", None)
        if saved is not None:
            os.environ["OMP_WAIT_POLICY"] = saved


def latency(n_jobs: int) -> list[list[object]]:
    work = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    tiny = dataset_zip(work, 20, 10)
    observed, server = [], []
    with Service(database_url=PG_URL, broker_url=REDIS_URL, TRANSFERLAB_LOADER_WORKERS="0") as svc:
        ds = svc.upload(tiny)
        spec = {
            "strategy": "linear_probe", "base_model": "timm:test_resnet", "pretrained": False,
            "dataset_id": ds["id"], "hyperparameters": {"epochs": 1, "image_size": 32},
        }  # fmt: skip
        for _ in range(n_jobs):
            t0 = time.perf_counter()
            job = svc.submit(spec)
            while True:
                status = svc.client.get(f"/v1/jobs/{job['id']}").json()
                if status["status"] != "queued":
                    break
                time.sleep(0.005)
            observed.append(time.perf_counter() - t0)
            done = svc.wait(job["id"])  # the worker is idle again before the next submit
            server.append(seconds_between(done["created_at"], done["started_at"]))
    rows = []
    for name, xs in (("client: POST sent -> GET shows running", observed),
                     ("server: created_at -> started_at", server)):  # fmt: skip
        xs = sorted(xs)
        rows.append([name, n_jobs, f"{statistics.median(xs) * 1000:.0f} ms",
                     f"{xs[int(0.9 * (len(xs) - 1))] * 1000:.0f} ms"])  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="test_resnet")
    parser.add_argument("--train-images", type=int, default=4000)
    parser.add_argument("--val-images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3, help="finetune epochs, both sides")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers, both sides")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--latency-jobs", type=int, default=20)
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-speed-"))
    archive = dataset_zip(work, args.train_images, args.val_images)
    throughput_rows, probe_rows = [], []
    env = {"TRANSFERLAB_LOADER_WORKERS": str(args.workers)}
    for size in args.sizes:
        with Service(**env) as svc:
            ds = svc.upload(archive)
            train_dir = Path(svc.env["TRANSFERLAB_DATA_DIR"]) / "datasets" / ds["id"] / "train"
            hp = {"image_size": size, "batch_size": args.batch_size}
            common = {"base_model": f"timm:{args.backbone}", "pretrained": False,
                      "dataset_id": ds["id"]}  # fmt: skip
            job, _ = svc.run({**common, "strategy": "finetune",
                              "hyperparameters": {**hp, "epochs": args.epochs}})  # fmt: skip
            epochs = svc.client.get(f"/v1/jobs/{job['id']}/metrics").json()["epochs"]
            # The first epoch pays for worker start-up and allocator warm-up on both sides.
            service_rate = statistics.median(e["images_per_second"] for e in epochs[1:])
            probe_job, _ = svc.run(
                {**common, "strategy": "linear_probe", "hyperparameters": {**hp, "epochs": 30}}
            )
            probe_metrics = svc.client.get(f"/v1/jobs/{probe_job['id']}/metrics").json()["epochs"]
            # Plain-PyTorch measurements run while the service is idle, in this process.
            plain, forward = {}, {}
            for tuned in (False, True):
                plain[tuned], forward[tuned] = reference(
                    train_dir, args.backbone, size, args.batch_size, args.workers, args.epochs,
                    tuned=tuned,
                )  # fmt: skip
        throughput_rows.append([
            f"{size}px", f"{service_rate:.0f}", f"{plain[False]:.0f}",
            f"{service_rate / plain[False]:.2f}", f"{plain[True]:.0f}",
            f"{service_rate / plain[True]:.2f}",
        ])  # fmt: skip
        job_seconds = seconds_between(probe_job["started_at"], probe_job["finished_at"])
        head_seconds = sum(e["seconds"] for e in probe_metrics)
        probe_rows.append([
            f"{size}px", f"{forward[False]:.2f} s", f"{forward[True]:.2f} s",
            f"{job_seconds:.2f} s", f"{head_seconds:.2f} s",
            f"{job_seconds / forward[False]:.2f}", f"{job_seconds / forward[True]:.2f}",
        ])  # fmt: skip
        print(f"{size}px done", flush=True)

    n = args.train_images
    print(
        f"\n1. Training throughput, {args.backbone}, batch {args.batch_size}, {n} MNIST images, "
        f"{args.workers} loader workers, median of epochs 2..{args.epochs} (target >= 0.9 x "
        "textbook). Textbook: torch's defaults; tuned: OMP_WAIT_POLICY=PASSIVE and "
        "channels_last, as the worker runs"
    )
    print(table(["input", "job img/s", "textbook img/s", "job/textbook", "tuned img/s",
                 "job/tuned"], throughput_rows))  # fmt: skip
    print(f"\n2. 30-epoch linear_probe job (started -> finished) vs one forward pass over the {n} "
          f"training images (target <= 1.5 x textbook). The job also embeds {args.val_images} "
          "val images; 'head' is its 30 epochs on the cached features")  # fmt: skip
    print(table(["input", "textbook pass", "tuned pass", "job", "head", "job/textbook",
                 "job/tuned"], probe_rows))  # fmt: skip
    if not args.skip_latency:
        print("\n3. POST /v1/jobs -> running, Postgres + Redis + an idle Celery worker "
              "(target: median < 1 s)")  # fmt: skip
        print(table(["measured", "jobs", "median", "p90"], latency(args.latency_jobs)))


if __name__ == "__main__":
    main()
