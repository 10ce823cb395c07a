"""Predictions of an onnx model in lane processes (app.serving.lanes, app.serving.lane).

A real exported model behind the API with two lane processes: answers equal the eager model's,
alone and batched; a small request is decoded in a lane process, others on a worker thread; a
bad image fails its own request, not the pass; a full queue answers 503 and recovers; a lane
process that dies fails its pass and is started again; shutdown ends the processes. Requests
are queued deterministically with ``pause()``/``resume()``: no sleeps, no timing.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.engine import load_artifact, predict
from app.main import create_app
from app.serving import decode
from app.serving.cache import ModelCache
from app.serving.lanes import LaneProcesses
from tests.api.conftest import bearer, error_code
from tests.api.registry_helpers import png, register_version
from tests.serving.conftest import wait_until

CLASSES = ("a", "b", "c")


@pytest.fixture
def version(settings):
    return register_version(settings, "lanes", CLASSES, onnx=True)


def make_client(settings, admin_key, **update) -> TestClient:
    tuned = settings.model_copy(update={"serving_backend": "onnx", "predict_lanes": 2, **update})
    return TestClient(create_app(tuned), headers=bearer(admin_key))


@pytest.fixture
def client(settings, admin_key):
    with make_client(settings, admin_key) as client:
        yield client


def processes_of(client, version):
    batcher = client.app.state.model_cache.batcher(version["id"], version["folder"])
    assert batcher.processes is not None, "an onnx model is served by lane processes"
    return batcher.processes


def post(client, bodies: list[bytes], **params):
    files = [("files", (f"{i}.png", body)) for i, body in enumerate(bodies)]
    return client.post("/v1/models/lanes:1/predict", files=files, params={"top_k": 3, **params})


def scores(response) -> list[dict[str, float]]:
    assert response.status_code == 200, response.text
    return [
        {s["label"]: s["probability"] for s in p["top_k"]} for p in response.json()["predictions"]
    ]


def queued(client, processes, requests: list[list[bytes]]):
    """Queue ``requests`` while the lanes take nothing, then let them run; the responses."""
    images = sum(len(r) for r in requests)
    processes.pause()
    try:
        with ThreadPoolExecutor(len(requests)) as pool:
            futures = [pool.submit(post, client, bodies) for bodies in requests]
            wait_until(lambda: processes.queued_images == images, f"{images} images queue")
            processes.resume()
            return [f.result() for f in futures]
    finally:
        processes.resume()


@contextmanager
def lanes_of(version, lanes: int) -> Iterator[LaneProcesses]:
    """The lane processes of ``version`` outside an app (the test runs its own event loop)."""
    cache = ModelCache(1, backend="onnx", lanes=lanes)
    try:
        processes = cache.batcher(version["id"], version["folder"]).processes
        assert processes is not None
        yield processes
    finally:
        cache.close()


def assert_close(got: dict[str, float], want: dict[str, float]) -> None:
    assert got.keys() == want.keys()
    for label, p in want.items():
        assert got[label] == pytest.approx(p, abs=1e-5)


def test_answers_equal_the_eager_model_alone_and_batched(client, settings, version):
    processes = processes_of(client, version)
    bodies = [png(seed) for seed in range(6)]
    alone = [scores(post(client, [b]))[0] for b in bodies]
    # A lone request on an idle model runs wide: on lane 0's session that uses every core.
    assert processes.stats.wide == processes.stats.batches == len(bodies)
    before = processes.stats.images
    batched = [scores(r)[0] for r in queued(client, processes, [[b] for b in bodies])]
    # Six waiting requests, two idle lanes: each takes its share, in one pass each, side by
    # side on one core each.
    assert processes.stats.images == before + 6
    assert sorted(list(processes.stats.sizes)[-2:]) == [3, 3]
    assert processes.stats.wide == len(bodies)
    model, card = load_artifact(version["folder"])
    eager = predict(model, card, [Image.open(io.BytesIO(b)) for b in bodies], top_k=3)
    for one, many, reference in zip(alone, batched, map(dict, eager), strict=True):
        assert_close(many, one)
        assert_close(one, reference)


def test_small_requests_decode_in_a_lane_process_others_on_a_worker_thread(
    client, version, monkeypatch
):
    opened_on: list[str] = []
    original = decode.open_upload

    def recorded(*args, **kwargs):
        opened_on.append(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(decode, "open_upload", recorded)  # in the API process only
    small = png(1)
    assert scores(post(client, [small]))
    assert opened_on == []  # opened and decoded by the lane process
    noisy = png(2, size=120)
    assert len(noisy) > decode.LANE_DECODE_BYTES
    assert scores(post(client, [noisy]))
    assert len(opened_on) == 1 and opened_on[0].startswith("AnyIO worker thread")
    # Few bytes, many pixels: the lane process declines it, a worker thread decodes it under
    # the process-wide budget, and the pixels go to a lane.
    flat = io.BytesIO()
    Image.new("RGB", (1500, 1500), (90, 120, 150)).save(flat, format="PNG")
    assert len(flat.getvalue()) <= decode.LANE_DECODE_BYTES
    got = scores(post(client, [flat.getvalue()]))
    assert len(opened_on) == 2 and opened_on[1].startswith("AnyIO worker thread")
    assert client.app.state.model_cache.decode_budget.peak >= 1500 * 1500
    model, card = load_artifact(version["folder"])
    (reference,) = predict(model, card, [Image.open(flat)], top_k=3)
    assert_close(got[0], dict(reference))


def test_a_bad_image_fails_its_own_request_not_the_pass(client, version):
    processes = processes_of(client, version)
    before = processes.stats.images
    responses = queued(client, processes, [[png(1)], [b"not an image"], [png(2)]])
    assert [r.status_code for r in responses] == [200, 422, 200]
    assert error_code(responses[1]) == "image_invalid"
    assert responses[1].json()["error"]["details"]["filename"] == "0.png"
    assert processes.stats.images == before + 2
    assert scores(responses[0])[0] == pytest.approx(scores(post(client, [png(1)]))[0], abs=1e-5)
    assert processes.queued_images == 0


def test_a_full_queue_answers_503_and_recovers(settings, admin_key, version):
    with make_client(settings, admin_key, predict_max_queued=2) as client:
        processes = processes_of(client, version)
        processes.pause()
        try:
            with ThreadPoolExecutor(2) as pool:
                waiting = [pool.submit(post, client, [png(s)]) for s in (1, 2)]
                wait_until(lambda: processes.queued_images == 2, "two images queue")
                refused = post(client, [png(3)])
                assert refused.status_code == 503 and error_code(refused) == "overloaded"
                assert int(refused.headers["Retry-After"]) >= 1
                processes.resume()
                assert all(f.result().status_code == 200 for f in waiting)
        finally:
            processes.resume()
        assert scores(post(client, [png(3)]))


def test_a_lane_process_that_dies_fails_its_pass_and_starts_again(client, version):
    processes = processes_of(client, version)
    assert scores(post(client, [png(1)]))
    pids = processes.pids
    processes.pause()
    try:
        with ThreadPoolExecutor(1) as pool:
            doomed = pool.submit(post, client, [png(1)])
            wait_until(lambda: processes.queued_images == 1, "the request queues")
            os.kill(pids[0], signal.SIGKILL)  # lane 0 takes a lone request
            processes.resume()
            failed = doomed.result()
    finally:
        processes.resume()
    assert failed.status_code == 503 and error_code(failed) == "inference_failed"
    assert scores(post(client, [png(2)]))  # the other lane, while lane 0 starts again
    wait_until(lambda: processes.pids[0] != pids[0], "lane 0 has a new process")
    wait_until(lambda: processes.lanes_ready == 2, "lane 0's new process is ready")
    responses = queued(client, processes, [[png(s)] for s in range(4)])
    assert all(r.status_code == 200 for r in responses)


def test_shutdown_ends_the_lane_processes(settings, admin_key, version):
    with make_client(settings, admin_key) as client:
        processes = processes_of(client, version)
        assert scores(post(client, [png(1)]))
        popens = [p.popen for p in processes._processes]
        assert all(p.poll() is None for p in popens)
    wait_until(lambda: all(p.poll() is not None for p in popens), "the lane processes end")


def test_a_withdrawn_request_is_skipped(settings, version):
    pixels = [np.zeros((32, 32, 3), np.uint8)]

    async def scenario(processes):
        processes.pause()
        first = asyncio.ensure_future(processes.predict_pixels(pixels))
        withdrawn = asyncio.ensure_future(processes.predict_pixels(pixels * 3))
        kept = asyncio.ensure_future(processes.predict_pixels(pixels * 2))
        while processes.queued_images < 6:
            await asyncio.sleep(0.01)
        withdrawn.cancel()
        processes.resume()
        return await first, await kept, withdrawn

    with lanes_of(version, lanes=1) as processes:
        first, kept, withdrawn = asyncio.run(scenario(processes))
        assert first.shape == (1, 3) and kept.shape == (2, 3)
        assert withdrawn.cancelled()
        assert list(processes.stats.sizes) == [3]  # one pass, without the withdrawn images
        assert processes.queued_images == 0


def test_a_lane_process_imports_no_torch():
    code = (
        "import sys, app.serving.lane; "
        "print(sorted({'torch', 'torchvision', 'timm', 'sqlalchemy'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_model_closed_while_its_lanes_start_refuses_instead_of_hanging(settings, version):
    """close() (an eviction, from a worker thread) may come while the first request is
    starting the lanes: that request must get BatcherClosed (the route loads the model again),
    not wait forever on a queue no lane reads."""
    from app.serving.batcher import BatcherClosed

    pixels = [np.zeros((32, 32, 3), np.uint8)]

    async def scenario(processes):
        request = asyncio.ensure_future(processes.predict_pixels(pixels))
        await asyncio.sleep(0)  # the request is starting the lanes
        await asyncio.to_thread(processes.close)
        with pytest.raises(BatcherClosed):
            await asyncio.wait_for(request, 30)

    with lanes_of(version, lanes=1) as processes:
        asyncio.run(scenario(processes))


def test_closing_a_model_answers_what_is_queued(settings, version):
    """An evicted or deleted model's lanes answer the requests queued on them (the cache closes
    it without waiting), then its processes end."""
    pixels = [np.zeros((32, 32, 3), np.uint8)]

    async def scenario(processes):
        processes.pause()
        requests = [asyncio.ensure_future(processes.predict_pixels(pixels)) for _ in range(3)]
        while processes.queued_images < 3:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(processes.close)
        return await asyncio.wait_for(asyncio.gather(*requests), 30)

    with lanes_of(version, lanes=2) as processes:
        answers = asyncio.run(scenario(processes))
        assert [a.shape for a in answers] == [(1, 3)] * 3
        popens = [p.popen for p in processes._processes]
        wait_until(lambda: all(p.poll() is not None for p in popens), "the processes end")


def test_ctrl_c_does_not_reach_the_lane_processes(client, version):
    """They run in a session of their own and ignore SIGINT: a Ctrl+C (or a signal to the API's
    process group) reaches the API, which drains and then ends them."""
    processes = processes_of(client, version)
    assert scores(post(client, [png(1)]))
    for pid in processes.pids:
        assert os.getsid(pid) == pid != os.getsid(0)
        os.kill(pid, signal.SIGINT)
    responses = queued(client, processes, [[png(s)] for s in range(4)])
    assert all(r.status_code == 200 for r in responses)
    assert all(p.popen.poll() is None for p in processes._processes)


def test_the_api_refuses_a_lane_answer_that_names_other_code():
    """The parent unpickles only arrays, tuples and the service's errors from a lane process."""
    import pickle

    from app.serving.lanes import _loads
    from app.storage.images import ImageRejected

    rows = np.arange(6, dtype=np.float32).reshape(2, 3)
    error = ImageRejected("a.png: bad", details={"filename": "a.png"})
    (status, got), (_, err) = _loads(pickle.dumps([("rows", rows[1:]), ("error", error)]))
    assert status == "rows" and np.array_equal(got, rows[1:])
    assert (err.code, err.status_code, err.details) == ("image_invalid", 422, error.details)

    class Exploit:
        def __reduce__(self):
            return (os.system, ("true",))

    with pytest.raises(pickle.UnpicklingError, match="system"):
        _loads(pickle.dumps([("rows", Exploit())]))


def test_an_image_with_corrupt_metadata_is_a_422_with_its_name_in_a_lane_process(client, version):
    from tests.serving.test_lane_decode import _corrupt_exif_webp

    processes = processes_of(client, version)
    r = post(client, [png(1), _corrupt_exif_webp()])
    assert r.status_code == 422, r.text
    assert processes.stats.batches == 0  # refused by the lane, before any pass
    assert error_code(r) == "image_invalid"
    assert r.json()["error"]["details"]["filename"] == "1.png"


def test_the_lane_normalisation_gives_the_bits_of_totensor_and_normalize():
    from app.engine.inference import create_preprocessor
    from app.serving.lane import normalisation_table, normalise
    from tests.serving.conftest import PREPROCESSING

    pre = create_preprocessor(PREPROCESSING)
    pixels = np.random.default_rng(0).integers(0, 256, (5, 17, 23, 3), dtype=np.uint8)
    pixels[0, 0, 0] = (0, 255, 128)
    table = normalisation_table(pre.mean.flatten().tolist(), pre.std.flatten().tolist())
    got = normalise(table, pixels)
    want = pre.batch(list(pixels)).contiguous().numpy()  # the thread lanes' torch path
    assert got.shape == want.shape == (5, 3, 17, 23) and got.flags.c_contiguous
    assert np.array_equal(got, want)


def lane_children() -> set[int]:
    """This process's child processes (of any thread), zombies included."""
    found = set()
    for task in os.scandir(f"/proc/{os.getpid()}/task"):
        try:
            with open(f"{task.path}/children") as f:
                found |= {int(pid) for pid in f.read().split()}
        except FileNotFoundError:  # a thread that ended meanwhile (its children moved on)
            pass
    return found


def describe(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as stat, open(f"/proc/{pid}/cmdline", "rb") as cmd:
            return f"{stat.read()[:80]} {cmd.read()[:120]!r}"
    except FileNotFoundError:
        return "gone"


@pytest.mark.parametrize("lane_processes", [True, False], ids=["processes", "threads"])
def test_a_broken_onnx_file_fails_the_load_and_leaves_nothing_running(
    settings, version, lane_processes
):
    from app.engine.onnx import ONNX_FILE

    (version["folder"] / ONNX_FILE).write_bytes(b"not an onnx graph")
    cache = ModelCache(1, backend="onnx", lanes=2, lane_processes=lane_processes)
    before = set(threading.enumerate())
    lanes_before = lane_children()
    try:
        with pytest.raises(Exception) as err:
            cache.batcher(version["id"], version["folder"])
        if lane_processes:
            assert "a lane process could not start" in str(err.value)
        assert len(cache) == 0
        left = lane_children() - lanes_before
        assert not left, {pid: describe(pid) for pid in left}  # ended and reaped (no zombie)
        wait_until(
            lambda: {t for t in threading.enumerate() if t.name.startswith("inference-")} <= before,
            "the model's inference threads stop",
        )
    finally:
        cache.close()


def test_with_lane_processes_the_api_holds_no_onnx_session(client, version):
    processes_of(client, version)
    batcher = client.app.state.model_cache.batcher(version["id"], version["folder"])
    assert batcher.predictor.logits._wide is None and batcher.predictor.logits._lean == {}
    assert scores(post(client, [png(1)]))
    assert batcher.predictor.logits._wide is None
