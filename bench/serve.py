"""Serving at the limit (issue 9): the prediction endpoint against what the machine can do.

Measured side by side in one run, for each model (an untrained timm model with 10 classes,
registered as a model version the way the worker registers one):

- F: the model's own batched forward in-process (batch 32, as the service runs it), images/s;
- P: decoding and preprocessing in-process on the same images, one thread, images/s (with the
  service's own functions);
- H: the same HTTP stack (uvicorn, FastAPI multipart) and load generator (32 httpx client
  threads) against an endpoint that takes the same request and runs nothing, requests/s;
- the service (`transferlab api`, SQLite): 32 concurrent one-image clients, images/s and p99;
- L = 1 / (1/F + 1/P + 1/H), the limit for one-image requests; the target is >= 0.8 L;
- concurrency 1: the service's p50 against in-process decode + preprocess + forward of one
  image (target: <= 1.3x that + 3 ms);
- a flood of large images (8 clients, 12-megapixel JPEGs and 4,000 x 3,000 PNGs): the API
  process's peak memory (VmHWM) over its memory before the flood, and its lane processes' peak.

"API CPU / img" counts the API process and its lane processes (app.serving.lanes).

    .venv/bin/python bench/serve.py                       # about 4 minutes on 2 CPU cores
    .venv/bin/python bench/serve.py --models resnet10t:64 --seconds 5
    # and the API of an older commit measured side by side (same models, clients, images):
    git archive 6ff97dc | tar -x -C /tmp/baseline && .venv/bin/python bench/serve.py \
        --baseline /tmp/baseline

The load generator, the API and the model share the machine's cores, so run it on an otherwise
idle machine; on a shared one, compare the ratios of one run rather than absolute figures.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path

# As `transferlab` sets it for the API: idle torch threads sleep instead of spinning on the
# cores the load generator and the decoding need (app/cpu.py). Before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import httpx
import numpy as np
import timm
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BIN, free_port, load_mnist, table

from app.db.models import ModelVersion
from app.db.repositories import models as models_repo
from app.db.session import Database
from app.engine import ModelCard, export_onnx, load_artifact, save_artifact
from app.engine.data import resolve_preprocessing
from app.engine.inference import Predictor
from app.serving.cache import ModelCache
from app.serving.predict import decode_upload
from app.settings import Settings

NOOP_APP = textwrap.dedent(
    """
    from fastapi import FastAPI, File, UploadFile

    app = FastAPI()

    @app.post("/noop")
    def noop(files: list[UploadFile] = File()) -> dict:
        for f in files:
            f.file.read()
        return {"predictions": [{"filename": f.filename, "top_k": []} for f in files]}
    """
)


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def register_model(
    settings: Settings, backbone: str, size: int, backend: str
) -> tuple[str, ModelCard]:
    """An untrained timm model saved and registered as a model version, as the worker does
    (with its ONNX export, which the onnx backend serves)."""
    torch.manual_seed(0)
    model = timm.create_model(backbone, pretrained=False, num_classes=10)
    pre = resolve_preprocessing(timm.data.resolve_data_config({}, model=model), size)
    card = ModelCard(
        architecture={"library": "timm", "name": backbone, "num_classes": 10},
        class_names=tuple(str(i) for i in range(10)),
        preprocessing=pre,
    )
    model_id = uuid.uuid4()
    key = settings.artifacts.model_key(model_id)
    save_artifact(model, card, settings.artifacts.path(key))
    onnx: dict = {}
    if backend == "onnx":
        onnx = export_onnx(model.eval(), card, settings.artifacts.path(key)).to_dict()
    db = Database(settings.resolved_database_url)
    with db.session_scope() as session:
        models_repo.add(
            session,
            ModelVersion(
                id=model_id, name=f"bench-{backbone}", version=models_repo.next_version(
                    session, f"bench-{backbone}"), job_id=None, dataset_id=None, parent_id=None,
                base_model=f"timm:{backbone}", strategy="finetune",
                class_names=list(card.class_names), metrics={"onnx": onnx}, lineage={},
                artifact_key=key,
            ),
        )  # fmt: skip
    db.dispose()
    return str(model_id), card


def in_process(
    settings: Settings, model_id: str, images: list[bytes], batch: int, seconds: float
) -> dict[str, float]:
    """F, P and the one-image latency with the service's own functions and backend, in this
    process."""
    # F runs the model here, in this process: no lane processes.
    cache = ModelCache(
        1, backend=settings.serving_backend, lanes=settings.predict_lanes, lane_processes=False
    )
    path = settings.artifacts.path(settings.artifacts.model_key(model_id))
    batcher = cache.batcher(model_id, path)
    runner, pre = batcher.predictor, batcher.predictor.preprocessor
    # P: decode + preprocess, one thread.
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        decode_upload(images[n % len(images)], pre, settings.max_image_pixels)
        n += 1
    p = n / (time.perf_counter() - start)
    pixels = [decode_upload(img, pre, settings.max_image_pixels) for img in images[:batch]]
    # F: the batched forward on preprocessed tensors with the service's backend, the faster of
    # one pass at a time on every core and `lanes` passes side by side on one core each.
    x = pre.batch(pixels)
    runner.probabilities(x)
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        runner.probabilities(x)
        n += batch
    f_wide = n / (time.perf_counter() - start)
    f_lanes = side_by_side(runner, x, runner.lanes, seconds) if runner.lanes > 1 else 0.0
    # Eager torch with channels_last (as the torch backend runs it) and contiguous.
    rates = {}
    for channels_last in (True, False):
        model, card = load_artifact(path)
        predictor = Predictor(model, card, channels_last=channels_last)
        predictor.probabilities(x)
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            predictor.probabilities(x)
            n += batch
        rates[channels_last] = n / (time.perf_counter() - start)
    # One image end to end: decode, preprocess, forward.
    times = []
    for i in range(200):
        t0 = time.perf_counter()
        px = decode_upload(images[i % len(images)], pre, settings.max_image_pixels)
        runner.probabilities(pre.batch([px]))
        times.append(time.perf_counter() - t0)
    cache.close()
    single_ms = statistics.median(times) * 1000
    return {
        "F": max(f_wide, f_lanes),
        "F_wide": f_wide,
        "F_lanes": f_lanes,
        "F_channels_last": rates[True],
        "F_contiguous": rates[False],
        "P": p,
        "single_ms": single_ms,
    }


def side_by_side(runner: Predictor, x: torch.Tensor, lanes: int, seconds: float) -> float:
    """Images/s of `lanes` threads each running passes of ``x`` on one core (as the batcher's
    lanes do under load)."""
    counts = [0] * lanes
    barrier = threading.Barrier(lanes)

    def lane(i: int) -> None:
        runner.probabilities(x, wide=False)  # this lane's session, made on first use
        barrier.wait()
        stop = time.perf_counter() + seconds
        while time.perf_counter() < stop:
            runner.probabilities(x, wide=False)
            counts[i] += len(x)

    threads = [threading.Thread(target=lane, args=(i,)) for i in range(lanes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / seconds


def load(
    url: str,
    headers: dict[str, str],
    bodies: list[bytes],
    clients: int,
    seconds: float,
    filename: str = "x.png",
    pid: int | None = None,
) -> dict[str, float]:
    """`clients` threads, each with its own httpx client, posting one image per request. With
    ``pid``, also the CPU time that process spent per request (all its threads): on a shared
    machine a steadier measure of the server's own cost than its requests/s."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[int] = [0] * clients
    # The window starts when every client is ready (making 32 httpx clients takes a while).
    deadline = [0.0]
    barrier = threading.Barrier(
        clients + 1, action=lambda: deadline.__setitem__(0, time.perf_counter() + seconds)
    )

    def client(i: int) -> None:
        with httpx.Client(headers=headers, timeout=60) as c:
            barrier.wait()
            n = i
            while time.perf_counter() < deadline[0]:
                t0 = time.perf_counter()
                r = c.post(url, files=[("files", (filename, bodies[n % len(bodies)]))])
                if r.status_code != 200:
                    errors[i] += 1
                latencies[i].append(time.perf_counter() - t0)
                n += clients

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    cpu0 = cpu_seconds(pid) if pid else 0.0
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds(pid) - cpu0 if pid else 0.0
    flat = sorted(x for lat in latencies for x in lat)
    return {
        "rate": len(flat) / elapsed,
        "cpu_ms": cpu * 1000 / max(1, len(flat)),
        "p50_ms": flat[len(flat) // 2] * 1000,
        "p99_ms": flat[int(len(flat) * 0.99)] * 1000,
        "errors": sum(errors),
        "n": len(flat),
    }


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        args, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def wait_ready(url: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer")


def stop(p: subprocess.Popen) -> None:
    p.terminate()
    try:
        p.wait(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()


def batch_metrics(port: int, auth: dict[str, str]) -> tuple[float, float]:
    """(images, forward passes) so far, from the service's /metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", headers=auth).text
    values = {}
    for line in text.splitlines():
        if line.startswith("transferlab_inference_batch_images_"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return (
        values.get("transferlab_inference_batch_images_sum", 0.0),
        values.get("transferlab_inference_batch_images_count", 0.0),
    )


def children(pid: int) -> list[int]:
    """The child processes of every thread of ``pid`` (the API starts its lane processes from
    a worker thread)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # ended meanwhile
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads, and of its child processes (the API's lane
    processes) while they run."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    for child in children(pid):
        with contextlib.suppress(FileNotFoundError):  # ended meanwhile
            total += cpu_seconds(child)
    return total


def memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def large_images() -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(0)
    out = []
    for kind in ("JPEG", "PNG"):
        # Smooth content (an upscaled noise field) compresses like a photo, not like noise.
        small = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((4000, 3000), Image.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, format=kind, quality=90) if kind == "JPEG" else img.save(buf, format=kind)
        out.append((f"large.{kind.lower()}", buf.getvalue()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["resnet18:112", "resnet10t:64"])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=6.0, help="per load window")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--skip-flood", action="store_true")
    parser.add_argument(
        "--backend",
        choices=["torch", "onnx"],
        default=Settings().serving_backend,
        help="TRANSFERLAB_SERVING_BACKEND for the API and the in-process F (default: the "
        "service's default)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a checkout of an older commit (git archive <commit> | tar -x -C DIR): its API is "
        "measured side by side, with the same models, clients and images",
    )
    args = parser.parse_args()

    digits, _ = load_mnist(512)
    images = [png_bytes(d) for d in digits]
    tmp = Path(tempfile.mkdtemp(prefix="transferlab-serve-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRANSFERLAB_")}
    env |= {"TRANSFERLAB_DATA_DIR": str(tmp / "data"), "OMP_WAIT_POLICY": "PASSIVE"}
    env["TRANSFERLAB_SERVING_BACKEND"] = args.backend
    settings = Settings(data_dir=tmp / "data", serving_backend=args.backend)
    tl = str(BIN / "transferlab")
    key = subprocess.run(
        [tl, "keys", "create", "--scopes", "admin", "--name", "bench"],
        env=env, check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    auth = {"Authorization": f"Bearer {key}"}
    models = {}
    for spec in args.models:
        backbone, size = spec.split(":")
        models[spec] = register_model(settings, backbone, int(size), args.backend)

    # H: the no-op endpoint, same uvicorn defaults as `transferlab api`. It runs beside the API
    # and every measurement is repeated in rounds, interleaved (in-process, H, service,
    # baseline), so that a change of load on a shared machine hits all of them alike; the
    # tables give medians over the rounds.
    (tmp / "noop_app.py").write_text(NOOP_APP)
    noop_port = free_port()
    noop = start(
        [str(BIN / "python"), "-m", "uvicorn", "noop_app:app", "--port", str(noop_port),
         "--no-access-log", "--app-dir", str(tmp)],
        env, tmp / "noop.log",
    )  # fmt: skip
    noop_url = f"http://127.0.0.1:{noop_port}/noop"
    port = free_port()
    api = start([tl, "api", "--port", str(port)], env, tmp / "api.log")
    old_port, old_api = free_port(), None
    if args.baseline:
        old_env = env | {"PYTHONPATH": str(args.baseline.resolve())}
        old_api = start([tl, "api", "--port", str(old_port)], old_env, tmp / "baseline.log")
    rows, latency_rows, layout_rows, baseline_rows = [], [], [], []
    med = statistics.median
    try:
        wait_ready(f"http://127.0.0.1:{noop_port}/docs")
        wait_ready(f"http://127.0.0.1:{port}/readyz")
        if old_api:
            wait_ready(f"http://127.0.0.1:{old_port}/readyz")
        for spec, (model_id, _) in models.items():
            url = f"http://127.0.0.1:{port}/v1/models/{model_id}/predict?top_k=1"
            old_url = f"http://127.0.0.1:{old_port}/v1/models/{model_id}/predict?top_k=1"
            # Load the model and warm up at full load: every lane's session, and onnxruntime's
            # memory plans for the batch sizes that load makes, exist before the first window.
            load(url, auth, images, args.clients, 3.0)
            if old_api:
                load(old_url, auth, images, args.clients, 3.0)
            m: dict[str, list[float]] = {}
            for _ in range(args.rounds):
                ref = in_process(settings, model_id, images, args.batch, 2.0)
                h = load(noop_url, {}, images, args.clients, args.seconds, pid=noop.pid)
                h1 = load(noop_url, {}, images, 1, args.seconds / 2)
                before = batch_metrics(port, auth)
                svc = load(url, auth, images, args.clients, args.seconds, pid=api.pid)
                after = batch_metrics(port, auth)
                one = load(url, auth, images, 1, args.seconds / 2)
                got = {
                    **ref, "H": h["rate"], "H1_ms": h1["p50_ms"], "svc": svc["rate"],
                    "p99": svc["p99_ms"], "errors": svc["errors"], "one_ms": one["p50_ms"],
                    "H_cpu": h["cpu_ms"], "cpu": svc["cpu_ms"],
                    "batch": (after[0] - before[0]) / max(1, after[1] - before[1]),
                    "L": 1 / (1 / ref["F"] + 1 / ref["P"] + 1 / h["rate"]),
                }  # fmt: skip
                got["ratio"] = got["svc"] / got["L"]
                if old_api:
                    old = load(old_url, auth, images, args.clients, args.seconds, pid=old_api.pid)
                    old_one = load(old_url, auth, images, 1, args.seconds / 2)
                    got |= {"old": old["rate"], "old_p99": old["p99_ms"], "old_cpu": old["cpu_ms"]}
                    got |= {"old_ratio": old["rate"] / got["L"], "old_one_ms": old_one["p50_ms"]}
                for k, v in got.items():
                    m.setdefault(k, []).append(v)
                print(spec, {k: round(v, 2) for k, v in got.items()}, flush=True)
            rows.append([
                spec, f"{med(m['F']):.0f}", f"{med(m['P']):.0f}", f"{med(m['H']):.0f}",
                f"{med(m['L']):.0f}", f"{med(m['svc']):.0f}",
                f"{med(m['ratio']):.2f} ({min(m['ratio']):.2f}-{max(m['ratio']):.2f})",
                f"{med(m['p99']):.0f} ms", f"{med(m['batch']):.1f}", f"{sum(m['errors']):.0f}",
                f"{med(m['cpu']):.2f} ms", f"{med(m['H_cpu']):.2f} ms",
            ])  # fmt: skip
            bound = 1.3 * med(m["single_ms"]) + 3
            latency_rows.append([
                spec, f"{med(m['one_ms']):.1f} ms", f"{med(m['H1_ms']):.1f} ms",
                f"{med(m['single_ms']):.1f} ms", f"{bound:.1f} ms",
                "yes" if med(m["one_ms"]) <= bound else "no",
            ])  # fmt: skip
            layouts = zip(m["F_channels_last"], m["F_contiguous"], strict=True)
            layout_rows.append([
                spec, f"{med(m['F_channels_last']):.0f}", f"{med(m['F_contiguous']):.0f}",
                f"{med([a / b for a, b in layouts]):.2f}", f"{med(m['F_wide']):.0f}",
                f"{med(m['F_lanes']):.0f}" if med(m["F_lanes"]) else "-",
            ])  # fmt: skip
            if old_api:
                baseline_rows.append([
                    spec, f"{med(m['old']):.0f}", f"{med(m['old_ratio']):.2f}",
                    f"{med(m['old_p99']):.0f} ms", f"{med(m['old_one_ms']):.1f} ms",
                    f"{med(m['old_cpu']):.2f} ms",
                    f"{med(m['svc']):.0f}", f"{med(m['ratio']):.2f}",
                    f"{med(m['p99']):.0f} ms", f"{med(m['one_ms']):.1f} ms",
                    f"{med(m['cpu']):.2f} ms",
                ])  # fmt: skip
        flood_rows = []
        if not args.skip_flood:
            model_id = next(iter(models.values()))[0]
            targets = [("this commit", port, api)]
            if old_api:
                targets.append(("baseline", old_port, old_api))
            for label, target_port, process in targets:
                url = f"http://127.0.0.1:{target_port}/v1/models/{model_id}/predict?top_k=1"
                before = memory_kib(process.pid, "VmRSS")
                results = {}
                for name, body in large_images():
                    results[name] = load(url, auth, [body], 8, args.seconds / 2, filename=name)
                peak = memory_kib(process.pid, "VmHWM")
                lanes = [memory_kib(c, "VmHWM") for c in children(process.pid)]
                flood_rows.append([
                    label, f"{(peak - before) / 1024:.0f} MiB",
                    f"{len(lanes)}, {sum(lanes) / 1024:.0f} MiB" if lanes else "-",
                    *(f"{r['rate']:.1f} images/s, p99 {r['p99_ms']:.0f} ms, {r['errors']} errors"
                      for r in results.values()),
                ])  # fmt: skip
    finally:
        stop(noop)
        stop(api)
        if old_api:
            stop(old_api)
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(
        f"{args.clients} concurrent one-image clients, medians of {args.rounds} interleaved "
        f"rounds of {args.seconds:.0f} s (service / L: median, min-max), "
        f"backend {args.backend}, torch {torch.__version__}, {os.cpu_count()} CPUs"
    )
    print(
        table(
            [
                "model",
                "F img/s",
                "P img/s",
                "H req/s",
                "L img/s",
                "service img/s",
                "service / L",
                "p99 @32",
                "mean batch",
                "errors",
                "API CPU / img",
                "no-op CPU / req",
            ],
            rows,
        )
    )
    print()
    print(
        table(
            [
                "model",
                "service p50 @1",
                "no-op endpoint p50 @1",
                "in-process decode+forward",
                "target (1.3x + 3 ms)",
                "met",
            ],
            latency_rows,
        )
    )
    print()
    print(
        table(
            [
                "model",
                "torch channels_last img/s",
                "torch contiguous img/s",
                "ratio",
                f"served ({args.backend}), one pass on every core img/s",
                f"{settings.predict_lanes} passes side by side, one core each img/s",
            ],
            layout_rows,
        )
    )
    if baseline_rows:
        print()
        print(
            table(
                [
                    "model",
                    "baseline img/s @32",
                    "baseline / L",
                    "baseline p99 @32",
                    "baseline p50 @1",
                    "baseline API CPU / img",
                    "this img/s @32",
                    "this / L",
                    "this p99 @32",
                    "this p50 @1",
                    "this API CPU / img",
                ],
                baseline_rows,
            )
        )
    if flood_rows:
        print()
        print(
            table(
                [
                    "API",
                    "peak memory over its start (VmHWM - VmRSS)",
                    "lane processes, their peak memory (VmHWM) in all",
                    "4000x3000 JPEG, 8 clients",
                    "4000x3000 PNG, 8 clients",
                ],
                flood_rows,
            )
        )


if __name__ == "__main__":
    main()
