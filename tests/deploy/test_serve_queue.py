"""Overload and deadlines, decided by the test rather than by the machine's speed: the model behind the
server blocks until the test releases it, so the queue fills and deadlines pass exactly when the test
says. Real HTTP on 127.0.0.1 through uvicorn in a thread."""

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from convforge.checkpoint import load_model
from convforge.deploy.backends import Backend
from convforge.deploy.server import ServeSettings, create_app
from convforge.deploy.serving import ServingModel
from tests.deploy.serving import png_bytes, serve_app

WAIT = 30  # seconds: the most any step may take before the test fails instead of hanging


class GatedModel:
    """Logits of zeros; once `armed`, each call waits for `release` (and says it started)."""

    def __init__(self, classes: int):
        self.classes, self.armed = classes, False
        self.started, self.release = threading.Event(), threading.Event()
        self.images_computed = 0

    def __call__(self, images) -> np.ndarray:
        if self.armed:
            self.started.set()
            assert self.release.wait(WAIT)
        self.images_computed += len(images)
        return np.zeros((len(images), self.classes), np.float32)


@pytest.fixture
def gated(tiny_run):
    _, spec = load_model(tiny_run.run.path)
    model = GatedModel(len(spec.classes))
    yield ServingModel("gated", spec, Backend("gated", model)), model
    model.release.set()  # a failed test must not leave the server's inference thread blocked


def wait_for_metric(url: str, line: str) -> None:
    pause = threading.Event()
    for _ in range(int(WAIT / 0.02)):
        if line in httpx.get(f"{url}/metrics").text:
            return
        pause.wait(0.02)
    raise AssertionError(f"{line!r} never appeared in /metrics")


def post(url: str, images: int = 1) -> httpx.Response:
    files = [("files", (f"{i}.png", png_bytes(32), "image/png")) for i in range(images)]
    return httpx.post(f"{url}/v1/predict", files=files, timeout=WAIT)


def test_a_full_queue_answers_503_with_retry_after_and_the_queued_requests_are_answered(gated):
    serving, model = gated
    settings = ServeSettings(max_batch=1, max_delay_ms=0, max_queue=3, max_images=2, timeout_ms=WAIT * 1000)
    with serve_app(create_app(serving, settings)) as url, ThreadPoolExecutor(2) as pool:
        model.armed = True
        computing = pool.submit(post, url)  # taken into a batch: the model now blocks
        assert model.started.wait(WAIT)
        queued = pool.submit(post, url, 2)  # 3 images in flight: the bound
        wait_for_metric(url, "convforge_queue_depth 2.0")
        refused = post(url)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        body = refused.json()
        assert body["limit"] == 3 and "at capacity (3 of at most 3 images in flight)" in body["error"]
        model.release.set()
        assert computing.result(WAIT).status_code == 200 and queued.result(WAIT).status_code == 200
    assert model.images_computed == 3 + 1  # warm-up with batch 1 (max_batch 1), then the 3 accepted images


def test_a_deadline_passed_in_the_queue_answers_504_and_is_never_computed(gated):
    serving, model = gated
    settings = ServeSettings(max_batch=1, max_delay_ms=0, max_queue=8, timeout_ms=400)
    with serve_app(create_app(serving, settings)) as url, ThreadPoolExecutor(2) as pool:
        model.armed = True
        computing = pool.submit(post, url)
        assert model.started.wait(WAIT)
        late = post(url, 2)  # waits behind the blocked batch until its deadline
        assert late.status_code == 504
        assert late.json()["limit_ms"] == 400 and "deadline of 400 ms" in late.json()["error"]
        computed_before = model.images_computed
        model.release.set()
        assert computing.result(WAIT).status_code == 504  # it was computing, but its answer came too late
        wait_for_metric(url, "convforge_images_dropped_total 2.0")  # the batcher reached the late two ...
    assert model.images_computed == computed_before + 1  # ... and skipped them: only the first was computed
