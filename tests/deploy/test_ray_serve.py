"""`convforge serve RUN --ray`: the predictor as a Ray Serve application on a local Ray instance on
127.0.0.1, with two replicas and @serve.batch, answers as the plain server does."""

from __future__ import annotations

import base64
import concurrent.futures

import httpx
import pytest

from convforge.deploy.launch import Launch, build_app
from convforge.deploy.server import ServeSettings
from convforge.threads import threads_kept
from tests.deploy.serving import free_port, png_bytes, serve_app, shape_files

pytest.importorskip("ray.serve")


def _post_all(url: str, images) -> list[dict]:
    def one(path):
        files = [("files", (path.name, path.read_bytes(), "image/png"))]
        response = httpx.post(f"{url}/v1/predict", files=files, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()["predictions"][0]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:  # concurrent, so Ray's batches hold several
        return list(pool.map(one, images))


def test_ray_serve_answers_as_the_plain_server(tiny_run, tmp_path):
    from convforge.deploy import ray_serve

    images = shape_files(tmp_path / "images", 12)
    settings = ServeSettings(max_batch=4, max_delay_ms=20, max_images=4).to_dict()
    launch = Launch(str(tiny_run.run.path), "torch", "127.0.0.1", free_port(), workers=2, threads=1,
                    device="cpu", settings=settings)  # fmt: skip
    with threads_kept():  # a worker sets its own thread count (1 here); the test process keeps its own
        app, _ = build_app(launch)
    with serve_app(app) as plain_url:
        plain = _post_all(plain_url, images)
        plain_model = httpx.get(f"{plain_url}/v1/models", timeout=30).json()["models"][0]
    ray_serve.start(launch)
    try:
        url = f"http://127.0.0.1:{launch.port}"
        answered = _post_all(url, images)
        described = httpx.get(f"{url}/v1/models", timeout=30).json()["models"][0]
        corrupt = httpx.post(f"{url}/v1/predict", timeout=30, json={"images": [
            base64.b64encode(b"not an image").decode(), base64.b64encode(png_bytes(32)).decode()]})  # fmt: skip
        too_many = httpx.post(f"{url}/v1/predict", timeout=30,
                              json={"images": [base64.b64encode(png_bytes(8)).decode()] * 5})  # fmt: skip
    finally:
        ray_serve.stop()
    for got, expected in zip(answered, plain, strict=True):
        assert got["name"] == expected["name"]
        assert [c["class"] for c in got["top"]] == [c["class"] for c in expected["top"]]
        for a, b in zip(got["top"], expected["top"], strict=True):
            assert abs(a["probability"] - b["probability"]) <= 1e-4  # batch composition changes the last bits
    assert (described["name"], described["classes"]) == (plain_model["name"], plain_model["classes"])
    assert corrupt.status_code == 200
    first, second = corrupt.json()["predictions"]
    assert first["top"] is None and first["error"] and second["top"]  # a bad image fails alone
    assert too_many.status_code == 413 and "the limit is 4" in too_many.json()["error"]
