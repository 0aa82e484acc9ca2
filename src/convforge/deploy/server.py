"""`convforge serve`: a run's model behind HTTP (FastAPI on uvicorn), with dynamic batching, limits on
what a request may hold, deadlines, Prometheus metrics and a graceful drain.

| endpoint          | answers                                                                  |
|-------------------|--------------------------------------------------------------------------|
| POST /v1/predict  | top-k classes per image (multipart `files` or JSON base64 `images`)      |
| GET /v1/models    | name, classes, preprocessing, backend, batching, the run's lineage       |
| GET /healthz      | the process is alive                                                     |
| GET /readyz       | the model is loaded and warmed up (503 before, and while draining)       |
| GET /metrics      | Prometheus text                                                          |

A request's images are decoded and preprocessed in a thread pool (off the event loop) by the same
code as `convforge predict` (`deploy.predict.image_tensor`), queued for the batcher, and answered in
order, each with its classes or its own error. Errors are JSON: `{"error": ..., "status": ...}` plus
the limit that was hit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import os
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from convforge.data.decode import declared_pixels
from convforge.deploy.batcher import BatchTiming, DeadlinePassed, DynamicBatcher, QueueFull
from convforge.deploy.http_input import HttpError, ImageInput, query_top_k, read_predict_request
from convforge.deploy.predict import image_tensor, top_classes
from convforge.deploy.server_metrics import ServerMetrics
from convforge.deploy.serving import ServingModel
from convforge.errors import ImageDecodeError

log = logging.getLogger("convforge.serve")
PREDICT_PATH = "/v1/predict"
INLINE_DECODE_PIXELS = 256 * 256
KNOWN_PATHS = (PREDICT_PATH, "/v1/models", "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs")


@dataclass(frozen=True)
class ServeSettings:
    """How the server batches and what it accepts (the `convforge serve` options)."""

    max_batch: int = 32
    max_delay_ms: float = 5.0
    max_queue: int = 256  # images in the server at once: decoding, waiting for a forward pass or in one
    timeout_ms: float = 10_000.0  # per request, from arrival to answer
    max_request_bytes: int = 16 * 2**20
    max_images: int = 64  # per request
    max_pixels: int = 40_000_000  # per image, checked before decoding (decompression bombs)
    top_k: int = 3
    decode_workers: int = 0  # 0: one per core
    inline_decode_bytes: int = 8192  # files up to this size are decoded on the event loop (0: none)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def create_app(model: ServingModel, settings: ServeSettings) -> FastAPI:
    """The server for one model; the batcher starts, warms up and drains with the app's lifespan."""
    metrics = ServerMetrics(settings.max_batch)
    workers = settings.decode_workers or os.cpu_count() or 1
    decoders = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="convforge-decode")
    state = {"ready": False, "draining": False, "accepted": 0, "answered": 0, "in_flight": 0}

    def on_batch(timing: BatchTiming) -> None:
        if timing.size:
            metrics.batch_size.observe(timing.size)
        metrics.dropped.inc(timing.dropped)
        for seconds in timing.queue_seconds:
            metrics.stage.labels("queue").observe(seconds)
            metrics.stage.labels("inference").observe(timing.inference_seconds)
        metrics.queue_depth.set(batcher.waiting)

    batcher = DynamicBatcher(
        model.backend.run, max_batch=settings.max_batch, max_delay=settings.max_delay_ms / 1000,
        max_queue=settings.max_queue, on_batch=on_batch,
    )  # fmt: skip

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        started = time.perf_counter()
        for size in sorted({1, settings.max_batch}):  # first calls allocate and pick kernels
            await batcher.run_now(torch.zeros(size, *model.input_shape))
        state["ready"] = True
        log.info("ready: %s on %s, warmed up in %.2f s", model.name, model.backend.name, time.perf_counter() - started)
        yield
        state["ready"], state["draining"] = False, True
        await batcher.stop()  # the HTTP server has stopped accepting; answer what is queued
        decoders.shutdown(wait=True)
        log.info("drained: %d prediction request(s) accepted, %d answered", state["accepted"], state["answered"])

    app = FastAPI(title="convforge", version="1", lifespan=lifespan, docs_url="/docs", redoc_url=None)

    def count(inner):
        """Requests by path and status, as plain ASGI: Starlette's BaseHTTPMiddleware costs more per
        request than some of the models served."""

        async def middleware(scope, receive, send):
            if scope["type"] != "http":
                return await inner(scope, receive, send)
            path = scope["path"] if scope["path"] in KNOWN_PATHS else "other"  # bounded label values
            status = []

            async def sending(message):
                if message["type"] == "http.response.start":
                    status.append(message["status"])
                await send(message)

            state["accepted"] += path == PREDICT_PATH
            try:
                await inner(scope, receive, sending)
            finally:
                state["answered"] += path == PREDICT_PATH and bool(status)
                metrics.requests.labels(path, str(status[0] if status else 500)).inc()

        return middleware

    app.add_middleware(_Wrap, wrap=count)

    @app.exception_handler(HttpError)
    async def http_error(request: Request, exc: HttpError) -> JSONResponse:
        return _error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def starlette_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(HttpError(exc.status_code, str(exc.detail)))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return _error(HttpError(422, problems))

    @app.post(PREDICT_PATH, openapi_extra=_PREDICT_SCHEMA, summary="Top-k classes of one or more images")
    async def predict(request: Request) -> JSONResponse:
        arrived = time.monotonic()
        if not state["ready"]:
            raise HttpError(503, "the server is " + ("draining" if state["draining"] else "warming up") + "; retry",
                            retry_after_seconds=1)  # fmt: skip
        admit(0)  # full already: refuse before reading the body
        query = query_top_k(request)
        # a body being read holds a slot of the queue: the bodies in memory at once are bounded by --max-queue,
        # not by the connections; and it must arrive within the request's deadline (a slow client cannot
        # hold its slot for ever)
        state["in_flight"] += 1
        try:
            parsed = await asyncio.wait_for(read_predict_request(request, max_bytes=settings.max_request_bytes,
                                                                 max_images=settings.max_images),
                                            settings.timeout_ms / 1000)  # fmt: skip
        except asyncio.TimeoutError:
            raise HttpError(408, f"the request body did not arrive within the deadline of {settings.timeout_ms:g} ms",
                            limit_ms=settings.timeout_ms) from None  # fmt: skip
        finally:
            state["in_flight"] -= 1
        count = len(parsed.images)
        admit(count)
        state["in_flight"] += count
        metrics.in_flight.set(state["in_flight"])
        try:
            return await answer(parsed, query or parsed.top_k or settings.top_k, arrived)
        finally:
            state["in_flight"] -= count
            metrics.in_flight.set(state["in_flight"])

    def admit(count: int) -> None:
        """The in-flight bound covers decoding, queueing and computing, so under overload a request is
        refused at once instead of waiting behind work the server cannot finish in time."""
        if state["in_flight"] + max(count, 1) > settings.max_queue:
            brings = f"; this request brings {count}" if count else ""
            raise HttpError(503, f"the server is at capacity ({state['in_flight']} of at most {settings.max_queue} "
                                 f"images in flight{brings}); retry later", limit=settings.max_queue,
                            retry_after_seconds=1)  # fmt: skip

    async def decode(item: ImageInput, loop: asyncio.AbstractEventLoop):
        """On the decode pool; a small image on the event loop itself, where decoding it costs less than
        the hand-over to a thread (1,253 -> 1,980 requests/s of 1-2 KB JPEGs on 2 cores, serve_load --ceiling). Small
        means in bytes and in declared pixels: a small file can still declare a huge image."""
        data = item.data
        if data is None or (len(data) <= settings.inline_decode_bytes
                            and (declared_pixels(data) or 0) <= INLINE_DECODE_PIXELS):  # fmt: skip
            return _decode(item, model, settings.max_pixels)
        return await loop.run_in_executor(decoders, _decode, item, model, settings.max_pixels)

    async def answer(parsed, top_k: int, arrived: float) -> JSONResponse:
        deadline = arrived + settings.timeout_ms / 1000
        loop = asyncio.get_running_loop()
        decoded = await asyncio.gather(*(decode(item, loop) for item in parsed.images))
        for _, error, seconds in decoded:
            metrics.stage.labels("decode").observe(seconds)
            (metrics.images_decoded if error is None else metrics.decode_failures).inc()
        good = [index for index, (tensor, _, _) in enumerate(decoded) if tensor is not None]
        results = [{"name": item.name, "top": None, "error": result[1]}
                   for item, result in zip(parsed.images, decoded, strict=True)]  # fmt: skip
        if not good:
            return JSONResponse({"predictions": results, "error": "no image could be decoded", "status": 422}, 422)
        try:
            futures = batcher.submit([decoded[i][0] for i in good], deadline)
        except QueueFull as exc:  # only while draining: admission keeps the queue within its bound
            raise HttpError(503, f"the server is at capacity ({exc}); retry later", limit=settings.max_queue,
                            retry_after_seconds=1) from None  # fmt: skip
        metrics.queue_depth.set(batcher.waiting)
        try:
            rows = await asyncio.wait_for(asyncio.gather(*futures), max(deadline - time.monotonic(), 0))
        except (asyncio.TimeoutError, DeadlinePassed):
            for future in futures:
                future.cancel()  # still queued: the batcher skips it
            raise HttpError(504, f"no answer within the request deadline of {settings.timeout_ms:g} ms; the "
                                 "server is busy: retry, or send fewer images",
                            limit_ms=settings.timeout_ms) from None  # fmt: skip
        for index, top in zip(good, top_classes(torch.from_numpy(np.stack(rows)), model.classes, top_k), strict=True):
            results[index]["top"] = [{"class": name, "probability": p} for name, p in top]
        metrics.latency.observe(time.monotonic() - arrived)
        return JSONResponse({"predictions": results, "model": model.name, "backend": model.backend.name})

    @app.get("/v1/models", summary="The model served: classes, preprocessing, backend, lineage")
    async def models() -> dict[str, Any]:
        return {"models": [{**model.describe(), "batching": settings.to_dict()}]}

    @app.get("/healthz", summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz", summary="The model is loaded and warmed up")
    async def readyz() -> JSONResponse:
        if state["ready"]:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "draining" if state["draining"] else "warming up"}, 503)

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Response:
        metrics.queue_depth.set(batcher.waiting)
        return Response(metrics.text(), media_type="text/plain; version=0.0.4")

    app.state.batcher, app.state.metrics = batcher, metrics
    return app


def _decode(item: ImageInput, model: ServingModel, max_pixels: int) -> tuple[torch.Tensor | None, str | None, float]:
    """(input tensor, None, seconds) or (None, why, seconds); runs on the decode pool."""
    started = time.perf_counter()
    if item.error is not None:
        return None, item.error, 0.0
    try:
        tensor = image_tensor(item.data, model.spec, max_pixels=max_pixels, name=item.name)
    except ImageDecodeError as exc:
        return None, exc.reason, time.perf_counter() - started
    return tensor, None, time.perf_counter() - started


def _error(exc: HttpError) -> JSONResponse:
    headers = {}
    if exc.status == 503:
        headers["Retry-After"] = str(math.ceil(exc.details.get("retry_after_seconds", 1)))
    return JSONResponse(exc.body(), exc.status, headers=headers)


class _Wrap:
    """An ASGI middleware made from a function that wraps the app (Starlette's add_middleware wants a class)."""

    def __init__(self, app, wrap):
        self.call = wrap(app)

    async def __call__(self, scope, receive, send):
        await self.call(scope, receive, send)


_IMAGE_FILE = {"type": "string", "format": "binary"}
_PREDICT_SCHEMA = {
    "parameters": [{"name": "top_k", "in": "query", "required": False,
                    "schema": {"type": "integer", "minimum": 1}}],  # fmt: skip
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["files"],
                           "properties": {"files": {"type": "array", "items": _IMAGE_FILE}}}  # fmt: skip
            },
            "application/json": {
                "schema": {"type": "object", "required": ["images"], "additionalProperties": False,
                           "properties": {"images": {"type": "array", "items": {"type": "string", "format": "byte"}},
                                          "top_k": {"type": "integer", "minimum": 1}}}  # fmt: skip
            },
        },
    },
}
