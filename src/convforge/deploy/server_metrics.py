"""The server's Prometheus metrics (prometheus-client), in a registry of its own per app, so two servers
in one process (tests) never share counters.

Besides requests, latency, batch sizes and queue depth, the server times each stage of a request
(decode and preprocess, waiting in the queue, the forward pass), which answers the question the
"Beyond Inference" study asks of every deployment: how much of the latency is not the model.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# seconds: 0.5 ms to 10 s
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServerMetrics:
    def __init__(self, max_batch: int):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("convforge_requests", "HTTP requests answered, by path and status", ["path", "status"],
                                registry=r)  # fmt: skip
        self.latency = Histogram("convforge_request_seconds", "Latency of /v1/predict requests",
                                 buckets=_LATENCY_BUCKETS, registry=r)  # fmt: skip
        sizes = sorted({2**i for i in range(max_batch.bit_length())} | {max_batch})
        self.batch_size = Histogram("convforge_batch_size", "Images per forward pass", buckets=sizes, registry=r)
        self.queue_depth = Gauge("convforge_queue_depth", "Images waiting for a forward pass", registry=r)
        self.in_flight = Gauge("convforge_images_in_flight", "Images admitted and not yet answered", registry=r)
        self.images_decoded = Counter("convforge_images_decoded", "Images decoded and preprocessed", registry=r)
        self.decode_failures = Counter("convforge_decode_failures", "Images that could not be decoded", registry=r)
        self.dropped = Counter("convforge_images_dropped", "Images whose deadline passed in the queue", registry=r)
        self.stage = Histogram("convforge_stage_seconds", "Time per image in each stage of a request", ["stage"],
                               buckets=_LATENCY_BUCKETS, registry=r)  # fmt: skip

    def text(self) -> bytes:
        return generate_latest(self.registry)
