"""`convforge serve` as a real process over real HTTP: the same predictions as `convforge predict`,
both request formats, every error a JSON body with its limit, a bad image failing alone, concurrent
requests batched, SIGTERM draining under load, and the mistakes refused before it starts."""

import asyncio
import base64
import json
import os
import re
import shutil
import socket
import threading
import time

import httpx
import pytest

from convforge.checkpoint import load_model
from convforge.deploy.load import run_load
from convforge.deploy.predict import predict_files
from tests.deploy.serving import exchange, free_port, parse_reply, png_bytes, serve_process, shape_files
from tests.helpers import invoke

pytestmark = pytest.mark.xdist_group("serve")  # its module fixtures are built once, on one worker

LIMITS = ["--max-images", "4", "--max-request-mb", "1", "--max-pixels", "1000000"]


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    with serve_process(tiny_run.run.path, *LIMITS, log=tmp_path_factory.mktemp("serve") / "log.txt") as process:
        yield process


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return shape_files(tmp_path_factory.mktemp("images"), 8)


def metric(text: str, name: str, **labels: str) -> float:
    """One sample's value from Prometheus text (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(name)}{re.escape('{' + wanted + '}') if labels else ''} (\S+)$"
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_predictions_equal_convforge_predict_in_both_formats(server, tiny_run, images):
    model, spec = load_model(tiny_run.run.path)
    expected = predict_files(model, spec, [str(p) for p in images], top_k=3)
    answered = []
    for start in range(0, len(images), 4):  # --max-images 4
        files = [("files", (p.name, p.read_bytes(), "image/png")) for p in images[start : start + 4]]
        response = httpx.post(f"{server.url}/v1/predict", files=files, timeout=30)
        assert response.status_code == 200, response.text
        answered += response.json()["predictions"]
    for prediction, reference in zip(answered, expected, strict=True):
        assert [c["class"] for c in prediction["top"]] == [name for name, _ in reference.top]
        for got, (_, probability) in zip(prediction["top"], reference.top, strict=True):
            assert abs(got["probability"] - probability) <= 1e-4  # batch composition changes the last bits
    assert [p["name"] for p in answered] == [p.name for p in images]

    body = {"images": [base64.b64encode(images[0].read_bytes()).decode()], "top_k": 5}
    response = httpx.post(f"{server.url}/v1/predict", json=body, timeout=30)
    assert response.status_code == 200
    (only,) = response.json()["predictions"]
    assert only["name"] == "images[0]" and len(only["top"]) == 5
    assert only["top"][0]["class"] == expected[0].top[0][0]
    response = httpx.post(f"{server.url}/v1/predict?top_k=1", json=body, timeout=30)  # the query wins
    assert len(response.json()["predictions"][0]["top"]) == 1


def test_a_corrupt_image_fails_alone(server, images):
    files = [("files", ("a.png", images[0].read_bytes(), "image/png")),
             ("files", ("broken.png", b"\x89PNG\r\n\x1a\n not really", "image/png")),
             ("files", ("notes.txt", b"hello", "text/plain")),
             ("files", ("b.jpg", images[1].read_bytes(), "image/jpeg"))]  # fmt: skip
    response = httpx.post(f"{server.url}/v1/predict", files=files, timeout=30)
    assert response.status_code == 200
    first, broken, text, last = response.json()["predictions"]
    assert first["top"] and last["top"] and first["error"] is None
    assert broken["top"] is None and "corrupt" in broken["error"]
    assert text["top"] is None and "'text/plain' is not an image" in text["error"]
    response = httpx.post(f"{server.url}/v1/predict", files=[("files", ("x.png", b"junk", "image/png"))])
    assert response.status_code == 422 and response.json()["error"] == "no image could be decoded"


@pytest.mark.parametrize(
    ("request_kwargs", "status", "fragment"),
    [
        ({"content": b"x", "headers": {"content-type": "text/plain"}}, 415, "'text/plain' is not accepted"),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
        ({"json": {"pictures": []}}, 422, "must be an object with 'images'"),
        ({"json": {"images": []}}, 422, "holds no image"),
        ({"json": {"images": ["aGk="], "top_k": 0}}, 422, "top_k must be a whole number"),
        ({"json": {"images": ["aGk="] * 5}}, 413, "5 images in one request; the limit is 4"),
        ({"content": b"0" * (2 << 20), "headers": {"content-type": "application/json"}}, 413, "the limit is 1048576"),
        ({"files": [("files", ("x.png", b"junk", "image/png"))], "params": {"top_k": "many"}}, 422, "top_k"),
        ({"json": {"images": ["aGk="]}, "params": {"top_k": "\u00b2"}}, 422, "top_k"),  # '²'.isdigit(): once a 500
        ({"content": b"[" * 100_000, "headers": {"content-type": "application/json"}}, 400,
         "not valid JSON (nested too deeply)"),  # once an uncaught RecursionError: a 500
    ],
)
def test_request_errors_are_json_that_say_what_and_the_limit(server, request_kwargs, status, fragment):
    response = httpx.post(f"{server.url}/v1/predict", timeout=30, **request_kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status and fragment in body["error"], body
    if status == 413:
        assert "limit" in body


def test_a_decompression_bomb_is_refused_for_that_image(server):
    files = [("files", ("big.png", png_bytes(1100), "image/png")), ("files", ("ok.png", png_bytes(32), "image/png"))]
    response = httpx.post(f"{server.url}/v1/predict", files=files, timeout=30)
    big, ok = response.json()["predictions"]
    assert "1100x1100 pixels, over the limit of 1,000,000" in big["error"], big
    assert ok["top"] is not None


def test_the_declared_size_is_read_without_decoding():
    from convforge.data.decode import declared_pixels

    bomb = png_bytes(1100)  # a few KB of one colour: small to send, large to decode
    assert len(bomb) < 8192 and declared_pixels(bomb) == 1100 * 1100
    assert declared_pixels(b"junk") is None


def test_models_health_readiness_and_metrics(server, tiny_run):
    described = httpx.get(f"{server.url}/v1/models").json()["models"][0]
    assert described["classes"] == list(load_model(tiny_run.run.path)[1].classes)
    assert described["backend"] == "torch" and described["lineage"]["run"] == tiny_run.run.path.name
    assert described["input"]["size"] == [32, 32] and described["batching"]["max_images"] == 4
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "alive"}
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    missing = httpx.get(f"{server.url}/v1/nothing")
    assert missing.status_code == 404 and missing.json()["status"] == 404
    text = httpx.get(f"{server.url}/metrics").text
    assert metric(text, "convforge_requests_total", path="other", status="404") >= 1
    assert "convforge_stage_seconds_bucket" in text and "convforge_queue_depth" in text


def test_concurrent_requests_are_batched(tiny_run, images, tmp_path):
    async def burst(url: str) -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            files = [[("files", (p.name, p.read_bytes(), "image/png"))] for p in images * 2]
            answers = await asyncio.gather(*(client.post(f"{url}/v1/predict", files=f) for f in files))
        return [a.status_code for a in answers]

    with serve_process(tiny_run.run.path, "--max-delay-ms", "500", "--max-batch", "16", log=tmp_path / "log") as server:
        assert asyncio.run(burst(server.url)) == [200] * 16
        text = httpx.get(f"{server.url}/metrics").text
    assert metric(text, "convforge_batch_size_sum") == 16
    assert metric(text, "convforge_batch_size_count") <= 8  # 16 one-image requests in at most 8 passes
    assert metric(text, "convforge_images_decoded_total") == 16


def test_sigterm_under_load_answers_everything_accepted_and_exits_0(tiny_run, images, tmp_path):
    payload = [(p.name, p.read_bytes()) for p in images]
    with serve_process(tiny_run.run.path, log=tmp_path / "log") as server:
        results = {}
        url = f"{server.url}/v1/predict"
        load = threading.Thread(target=lambda: results.update(
            load=run_load(url, payload, requests=4000, concurrency=16, max_seconds=60)))  # fmt: skip
        load.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = httpx.get(f"{server.url}/metrics").text
            if metric(text, "convforge_requests_total", path="/v1/predict", status="200") >= 30:
                break
            time.sleep(0.05)
        assert server.terminate() == 0
        load.join(90)
        log = server.output()
    statuses = results["load"].statuses
    accepted, answered = map(int, re.search(r"drained: (\d+) prediction request\(s\) accepted, (\d+) answered",
                                            log).groups())  # fmt: skip
    assert accepted == answered == statuses["200"] >= 30, (statuses, log)
    assert set(statuses) <= {"200", "no answer"}  # after SIGTERM new connections are refused, never half-answered


def test_workers_each_load_the_model_and_answer(tiny_run, images, tmp_path):
    with serve_process(tiny_run.run.path, "--workers", "2", "--timeout-ms", "3000", log=tmp_path / "log") as server:
        assert parse_reply(exchange(server.url, b"")[0])[0] == 408  # each worker has the header deadline
        answers = [httpx.post(f"{server.url}/v1/predict", files=[("files", (p.name, p.read_bytes()))], timeout=30)
                   for p in images]  # fmt: skip
        assert [a.status_code for a in answers] == [200] * len(images)
        assert server.terminate() == 0
    log = server.output()
    threads = max(1, (os.cpu_count() or 1) // 2)
    assert f"2 worker(s) x {threads} model thread(s)" in log and log.count("ready: ") == 2, log


def test_mistakes_are_refused_before_serving(tiny_run, tmp_path, monkeypatch):
    from convforge.deploy import launch

    def started(*args, **kwargs):
        raise AssertionError("the server started")

    monkeypatch.setattr(launch, "run", started)
    run = tiny_run.run.path
    no_weights = shutil.copytree(run, tmp_path / "empty")
    (no_weights / "model.safetensors").unlink()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = str(taken.getsockname()[1])
        cases = [
            ([no_weights], "holds no trained model yet"),
            ([run, "--backend", "ort-int8"], "no model.int8.onnx yet; make it with `convforge quantize RUN DATA`"),
            ([run, "--backend", "ort-int9"], "Did you mean: ort-int8"),
            ([run, "--port", busy], f"port {busy} on 127.0.0.1 is in use"),
            ([run, "--max-batch", "0"], "--max-batch must be at least 1, got 0"),
            ([run, "--max-delay-ms", "-5"], "--max-delay-ms cannot be negative"),
            ([run, "--timeout-ms", "5", "--max-delay-ms", "10"], "must be longer than --max-delay-ms"),
            ([run, "--host", "0.0.0.0"], "would expose the model to other machines"),
            ([tmp_path / "nowhere"], "does not exist"),
            ([run, "--max-delay-ms", "nan"], "--max-delay-ms must be a finite number, got nan"),  # killed the batcher
            ([run, "--timeout-ms", "nan"], "--timeout-ms must be a finite number"),  # failed every request
            ([run, "--max-request-mb", "1e400"], "--max-request-mb must be a finite number, got inf"),
        ]
        for args, fragment in cases:
            port = [] if "--port" in args else ["--port", str(free_port())]
            result = invoke("serve", *args, *port)
            assert result.exit_code == 2, (args, result.output)
            assert fragment in result.output and "Traceback" not in result.output, (args, result.output)


def test_the_load_generator_stops_by_itself_and_counts_what_got_no_answer():
    result = run_load(f"http://127.0.0.1:{free_port()}/v1/predict", [("a.png", png_bytes(8))], requests=5,
                      concurrency=2, max_seconds=10)  # fmt: skip
    assert result.statuses == {"no answer": 5} and result.ok == 0 and result.latency_ms == {}
    assert json.loads(json.dumps(result.to_dict()))["requests"] == 5


def test_slow_and_vanishing_clients_hold_no_slot_for_ever_and_leave_no_traceback(tiny_run, tmp_path):
    """A body that trickles in gets 408 at the request deadline; bodies being read hold queue slots, so at
    most --max-queue of them are in memory at once (the next is refused with 503 before its body is read);
    a client that disconnects mid-body is counted as 499, not as a server error, with no traceback."""

    def slow_body(port: int) -> socket.socket:
        connection = socket.create_connection(("127.0.0.1", port), timeout=20)
        connection.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Content-Length: 1000\r\n\r\n{\"images\": [")  # fmt: skip
        return connection

    def answer(connection: socket.socket) -> int:
        return int(connection.recv(4096).split(b" ", 2)[1])

    args = ["--timeout-ms", "1500", "--max-delay-ms", "5", "--max-queue", "2", "--max-images", "2"]
    with serve_process(tiny_run.run.path, *args, log=tmp_path / "log.txt") as server:
        port = int(server.url.rsplit(":", 1)[1])
        first, second = slow_body(port), slow_body(port)
        time.sleep(0.3)
        third = slow_body(port)
        assert answer(third) == 503  # two bodies in the making fill the queue of 2
        started = time.monotonic()
        assert answer(first) == 408 and answer(second) == 408
        assert time.monotonic() - started < 10
        gone = slow_body(port)
        time.sleep(0.3)
        gone.close()  # mid-body
        time.sleep(0.5)
        text = httpx.get(f"{server.url}/metrics", timeout=10).text
        for connection in (first, second, third):
            connection.close()
    assert metric(text, "convforge_requests_total", path="/v1/predict", status="499") == 1
    assert metric(text, "convforge_requests_total", path="/v1/predict", status="500") == 0
    assert "Traceback" not in server.output()
