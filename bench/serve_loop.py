"""The event loop's CPU per prediction request, through the app without sockets (issue 9).

bench/serve.py measures the service end to end, where the load generator, uvicorn, the API and
the model share the cores and move between rounds. This one measures what the API's own Python
costs a request: raw ASGI calls into ``create_app()`` (no HTTP parsing, no client), 16
concurrent callers on one event loop, the loop thread's CPU time (``time.thread_time``) per
request, the least of ``--repeats`` runs. Routes, side by side in one run:

- bare: a FastAPI app with one multipart route that reads the upload and answers a fixed body
  (the framework's floor; bench/serve.py's no-op endpoint, async);
- fixed: the service's prediction route, every middleware and dependency, with the prediction
  itself replaced by a fixed answer;
- predict: the service's prediction route (resnet10t at 64 px, onnx, its lane processes).

    .venv/bin/python bench/serve_loop.py        # about a minute on 2 CPU cores
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `transferlab` sets it, before torch

import httpx
from fastapi import FastAPI, File, UploadFile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BIN, load_mnist, table
from serve import png_bytes, register_model

import app.api.models as model_routes
from app.main import create_app
from app.settings import Settings

CALLERS = 16
ASGIApp = Callable[..., Awaitable[None]]


def multipart(images: list[bytes]) -> list[tuple[bytes, bytes]]:
    """(content-type, body) of a one-image request per image, as httpx encodes them."""
    out = []
    for image in images:
        request = httpx.Request("POST", "http://t/", files=[("files", ("x.png", image))])
        out.append((request.headers["content-type"].encode(), request.read()))
    return out


async def call(app: ASGIApp, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> int:
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
        "query_string": b"top_k=1", "root_path": "", "headers": headers,
        "client": ("127.0.0.1", 1234), "server": ("127.0.0.1", 80), "state": {},
    }  # fmt: skip
    sent = False
    status = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client never disconnects
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(scope, receive, send)
    return status[0]


async def loop_cpu_ms(
    app: ASGIApp, path: str, key: str, bodies: list[tuple[bytes, bytes]], requests: int,
    repeats: int,
) -> float:  # fmt: skip
    """The least, over ``repeats`` runs, of the loop thread's CPU ms per request."""

    async def caller(first: int, n: int) -> None:
        for i in range(n):
            content_type, body = bodies[(first + i * CALLERS) % len(bodies)]
            headers = [
                (b"host", b"t"), (b"authorization", f"Bearer {key}".encode()),
                (b"content-type", content_type), (b"content-length", str(len(body)).encode()),
            ]  # fmt: skip
            status = await call(app, path, headers, body)
            assert status == 200, status

    per_caller = requests // CALLERS
    await asyncio.gather(*(caller(i, 20) for i in range(CALLERS)))  # warm up: lanes, caches
    runs = []
    for _ in range(repeats):
        start = time.thread_time()
        await asyncio.gather(*(caller(i, per_caller) for i in range(CALLERS)))
        runs.append((time.thread_time() - start) * 1000 / (per_caller * CALLERS))
    return min(runs)


def bare_app(path: str) -> FastAPI:
    app = FastAPI()

    @app.post(path)
    async def noop(files: list[UploadFile] = File()) -> dict:
        for f in files:
            await f.read()
        return {"predictions": [{"filename": f.filename, "top_k": []} for f in files]}

    return app


async def fixed_answer(*_: object, **__: object) -> list[tuple[str, list[tuple[str, float]]]]:
    return [("x.png", [("3", 0.5)])]


async def measure(args: argparse.Namespace) -> list[list[object]]:
    tmp = Path(tempfile.mkdtemp(prefix="transferlab-serve-loop-"))
    settings = Settings(data_dir=tmp / "data", serving_backend="onnx")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRANSFERLAB_")}
    env["TRANSFERLAB_DATA_DIR"] = str(tmp / "data")
    key = subprocess.run(
        [str(BIN / "transferlab"), "keys", "create", "--scopes", "admin", "--name", "bench"],
        env=env, check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    model_id, _ = register_model(settings, "resnet10t", 64, "onnx")
    digits, _ = load_mnist(512)
    bodies = multipart([png_bytes(d) for d in digits])
    path = f"/v1/models/{model_id}/predict"
    app = create_app(settings)
    rows = []
    async with app.router.lifespan_context(app):
        bare = await loop_cpu_ms(bare_app(path), path, key, bodies, args.requests, args.repeats)
        rows.append(["bare FastAPI multipart route", f"{bare:.3f}"])
        predict_uploads = model_routes.predict_uploads
        model_routes.predict_uploads = fixed_answer  # type: ignore[assignment]
        try:
            fixed = await loop_cpu_ms(app, path, key, bodies, args.requests, args.repeats)
        finally:
            model_routes.predict_uploads = predict_uploads
        rows.append(["prediction route, fixed answer", f"{fixed:.3f}"])
        real = await loop_cpu_ms(app, path, key, bodies, args.requests, args.repeats)
        rows.append(["prediction route (resnet10t, lane processes)", f"{real:.3f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3200, help="per run")
    parser.add_argument("--repeats", type=int, default=5, help="runs; the least counts")
    args = parser.parse_args()
    rows = asyncio.run(measure(args))
    print(
        f"\nevent loop CPU per request, raw ASGI calls, {CALLERS} concurrent callers, least of "
        f"{args.repeats} runs of {args.requests // CALLERS * CALLERS} requests"
    )
    print(table(["route", "loop CPU ms / request"], rows))


if __name__ == "__main__":
    main()
