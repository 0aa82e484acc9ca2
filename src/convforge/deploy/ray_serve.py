"""`convforge serve RUN --ray`: the same predictor as the plain server, as a Ray Serve application.

Each replica loads the model with `launch.build_model` (the plain server's loading, backend and thread
count) and answers the same API (POST /v1/predict in multipart or JSON, GET /v1/models, /healthz,
/readyz) with the same request limits, decoding, preprocessing and top-k answer. Batching is Ray
Serve's own `@serve.batch` (max batch and wait from --max-batch and --max-delay-ms) instead of our
asyncio batcher, and Ray's router spreads requests over the replicas (--workers N is the replica
count), so one command goes from a laptop (a local Ray instance on 127.0.0.1) to a cluster
(--ray-address). Prometheus metrics are Ray's (its metrics port), not the plain server's /metrics.
Ray is an optional extra (`pip install 'convforge[ray]'`); this module imports it at the top and is
imported only for --ray.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from convforge.deploy.http_input import HttpError, query_top_k, read_predict_request
from convforge.deploy.launch import Launch
from convforge.deploy.predict import image_tensor, top_classes
from convforge.deploy.server import PREDICT_PATH
from convforge.errors import ImageDecodeError

log = logging.getLogger("convforge.serve")
APP_NAME = "convforge"


class Replica:
    """One replica: the model of `launch`, batched by Ray Serve."""

    def __init__(self, launch: dict[str, Any]):
        from convforge.deploy.launch import build_model
        from convforge.deploy.server import ServeSettings

        self.launch = Launch(**launch)
        self.settings = ServeSettings(**self.launch.settings)
        self.model = build_model(self.launch)
        self.forward.set_max_batch_size(self.settings.max_batch)
        self.forward.set_batch_wait_timeout_s(self.settings.max_delay_ms / 1000)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def forward(self, images: list[torch.Tensor]) -> list[np.ndarray]:
        logits = await asyncio.get_running_loop().run_in_executor(None, self.model.backend.run, torch.cat(images))
        return list(logits)

    async def predict(self, request: Request) -> JSONResponse:
        query = query_top_k(request)
        parsed = await read_predict_request(request, max_bytes=self.settings.max_request_bytes,
                                            max_images=self.settings.max_images)  # fmt: skip
        results, tensors = [], {}
        for index, item in enumerate(parsed.images):
            results.append({"name": item.name, "top": None, "error": item.error})
            if item.error is None:
                try:
                    tensors[index] = image_tensor(item.data, self.model.spec, max_pixels=self.settings.max_pixels,
                                                  name=item.name)  # fmt: skip
                except ImageDecodeError as exc:
                    results[index]["error"] = exc.reason
        if not tensors:
            return JSONResponse({"predictions": results, "error": "no image could be decoded", "status": 422}, 422)
        rows = await asyncio.gather(*(self.forward(tensor) for tensor in tensors.values()))
        top_k = query or parsed.top_k or self.settings.top_k
        tops = top_classes(torch.from_numpy(np.stack(rows)), self.model.classes, top_k)
        for index, top in zip(tensors, tops, strict=True):
            results[index]["top"] = [{"class": name, "probability": p} for name, p in top]
        return JSONResponse({"predictions": results, "model": self.model.name, "backend": self.model.backend.name})

    def __serve_build_asgi_app__(self) -> FastAPI:
        api = FastAPI(title="convforge (Ray Serve)", version="1")
        api.add_exception_handler(HttpError, lambda request, exc: JSONResponse(exc.body(), exc.status))
        api.add_api_route(PREDICT_PATH, self.predict, methods=["POST"], summary="Top-k classes of one or more images")
        described = {"models": [{**self.model.describe(), "batching": self.settings.to_dict(), "replica": "ray"}]}
        api.add_api_route("/v1/models", lambda: described, methods=["GET"])
        api.add_api_route("/healthz", lambda: {"status": "alive"}, methods=["GET"])
        api.add_api_route("/readyz", lambda: {"status": "ready"}, methods=["GET"])
        return api


# Decorated apart from the class, so Ray pickles `Replica` by reference (its module is importable on every
# node) rather than by value with everything its methods name; the FastAPI app is built on each replica
# (__serve_build_asgi_app__), since an app object does not pickle either.
ConvforgeReplica = serve.deployment(name="convforge")(serve.ingress()(Replica))


def application(launch: Launch):
    """The Ray Serve application: `launch.workers` replicas, each with `threads_per_worker` CPUs."""
    return ConvforgeReplica.options(
        num_replicas=launch.workers, ray_actor_options={"num_cpus": launch.threads_per_worker}
    ).bind(launch.__dict__)


def start(launch: Launch, address: str | None = None) -> None:
    """Connect to Ray (`address`, or a new local instance on 127.0.0.1) and deploy; returns when ready."""
    import ray

    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, logging_level=logging.WARNING,
                 num_cpus=max(launch.workers * launch.threads_per_worker, 1))  # fmt: skip
    serve.start(http_options={"host": launch.host, "port": launch.port})
    serve.run(application(launch), name=APP_NAME, route_prefix="/")


def stop() -> None:
    import ray

    serve.shutdown()
    ray.shutdown()


def run(launch: Launch, address: str | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then shut the application and the local Ray instance down (Ray's
    own SIGTERM handler, installed by ray.init, raises SystemExit: the same clean stop)."""
    try:
        start(launch, address)
        stopped = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stopped.set())
        stopped.wait()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        stop()
