"""Lanes: forward passes of one model side by side (app.serving.backends, app.serving.batcher).

The onnx backend with two lanes, on a real exported model: a pass on a lane's one-core session
answers as the every-core session and eager torch do; under load two passes run at once on two
inference threads, while a lone request runs ``wide``; a request withdrawn before its pass is
skipped. Gated passes, no sleeps."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from app.engine.onnx import ONNX_FILE
from app.main import create_app
from app.serving.backends import OnnxBackend, create_backend
from app.serving.cache import ModelCache
from tests.api.conftest import bearer
from tests.api.registry_helpers import png, register_version
from tests.serving.conftest import wait_until


class GatedBackend:
    """A real backend whose passes wait at a gate the test opens, recording how each ran."""

    def __init__(self, inner: OnnxBackend) -> None:
        self.inner = inner
        self.name, self.lanes = inner.name, inner.lanes
        self.opened = threading.Event()
        self.passes: list[tuple[str, bool, int]] = []  # (thread, wide, images)
        self._lock = threading.Lock()
        self.inside = 0  # passes at the gate now
        self.most_inside = 0

    def forward(self, batch: torch.Tensor, wide: bool = True) -> torch.Tensor:
        with self._lock:
            self.passes.append((threading.current_thread().name, wide, len(batch)))
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        try:
            assert self.opened.wait(60), "the test never opened the gate"
            return self.inner.forward(batch, wide)
        finally:
            with self._lock:
                self.inside -= 1


@pytest.fixture
def onnx_app(settings, admin_key):
    # Thread lanes (predictions in lane processes are tests/serving/test_lane_processes.py).
    tuned = settings.model_copy(
        update={"serving_backend": "onnx", "predict_lanes": 2, "predict_lane_processes": False}
    )
    with TestClient(create_app(tuned), headers=bearer(admin_key)) as client:
        yield client


def post(client, ref, seeds, **params):
    files = [("files", (f"{s}.png", png(s))) for s in seeds]
    return client.post(f"/v1/models/{ref}/predict", files=files, params=params)


def scores(response) -> list[dict[str, float]]:
    assert response.status_code == 200, response.text
    return [
        {s["label"]: s["probability"] for s in p["top_k"]} for p in response.json()["predictions"]
    ]


def test_a_lane_pass_answers_as_the_wide_pass_and_torch(settings):
    version = register_version(settings, "lanes", ("a", "b", "c"), onnx=True)
    backend = create_backend("onnx", torch.nn.Identity(), version["folder"], lanes=2)
    assert isinstance(backend, OnnxBackend) and backend.lanes == 2
    x = torch.randn(5, 3, 32, 32)
    wide = backend.forward(x, wide=True)
    lean = backend.forward(x, wide=False)
    torch.testing.assert_close(lean, wide, atol=1e-5, rtol=0)
    # Each thread that runs lean passes has a session of its own, with one intra-op thread.
    other = threading.Thread(target=backend.forward, args=(x, False))
    other.start()
    other.join()
    sessions = list(backend._lean.values())
    assert len(sessions) == 2 and all(s is not backend._wide for s in sessions)
    assert {s.get_session_options().intra_op_num_threads for s in sessions} == {1}
    assert (version["folder"] / ONNX_FILE).is_file()


def test_passes_run_side_by_side_under_load_and_alone_wide(onnx_app, settings):
    version = register_version(settings, "lanes", ("a", "b", "c"), onnx=True)
    ref = "lanes:1"
    alone = scores(post(onnx_app, ref, range(6), top_k=3))  # one request, a pass of 6
    batcher = onnx_app.app.state.model_cache.batcher(version["id"], version["folder"])
    assert batcher.lanes == 2 and len(batcher.threads) == 2
    gate = GatedBackend(batcher.predictor.logits)
    batcher.predictor.logits = gate
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(post, onnx_app, ref, [0], top_k=3)
        wait_until(lambda: gate.inside == 1, "the first pass is at the gate")
        # The first lane is busy: the second takes what arrives now and runs beside it.
        rest = [pool.submit(post, onnx_app, ref, [s], top_k=3) for s in range(1, 6)]
        wait_until(lambda: gate.inside == 2, "a second pass runs beside the first")
        gate.opened.set()
        answers = [first.result()] + [f.result() for f in rest]
    batcher.predictor.logits = gate.inner
    assert gate.most_inside == 2
    (thread_1, wide_1, images_1), (thread_2, wide_2, _) = gate.passes[:2]
    assert (wide_1, images_1) == (True, 1)  # a lone request on an idle model: every core
    assert wide_2 is False and thread_1 != thread_2  # beside it: one core, the other lane
    assert sum(n for _, _, n in gate.passes) == 6  # every image once
    got = [row for r in answers for row in scores(r)]
    for one, batched in zip(alone, got, strict=True):
        assert batched.keys() == one.keys()
        for label, p in one.items():
            assert batched[label] == pytest.approx(p, abs=1e-5)


def test_a_request_withdrawn_before_its_pass_is_skipped(settings):
    version = register_version(settings, "lanes", ("a", "b", "c"), onnx=True)
    # One lane, so that the withdrawn request waits behind the gated pass.
    cache = ModelCache(1, backend="onnx", lanes=1, lane_processes=False)
    batcher = cache.batcher(version["id"], version["folder"])
    gate = GatedBackend(batcher.predictor.logits)
    batcher.predictor.logits = gate
    pixels = [np.zeros((32, 32, 3), np.uint8)]
    try:
        first = batcher.submit("probabilities", pixels)
        wait_until(lambda: gate.inside == 1, "the first pass is at the gate")
        withdrawn = batcher.submit("probabilities", pixels * 3)
        kept = batcher.submit("probabilities", pixels * 2)
        assert withdrawn.cancel()
        gate.opened.set()
        assert first.result(60).shape == (1, 3) and kept.result(60).shape == (2, 3)
        assert withdrawn.cancelled()
        assert [n for _, _, n in gate.passes] == [1, 2]  # the three withdrawn images never ran
        assert batcher.queued_images == 0
    finally:
        cache.close()
