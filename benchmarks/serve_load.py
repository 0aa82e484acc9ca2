"""`convforge serve` under load, against the raw batched model, on the same model and images.

Three setups, one script: the server with dynamic batching, the server with batching off
(`--max-batch 1`), and the raw model with no server (decode + preprocess + forward in batches, in a
loop, in this process). Requests carry one real CIFAR-10 test JPEG each and come from convforge's
bounded load generator (httpx, async) at --concurrency. Then an overload run: far more concurrency
than the server can take, with a small --max-queue, to see 503s answered fast and memory stay flat.
The decode/preprocess share of a request comes from the server's own stage timings (/metrics).

    python benchmarks/serve_load.py RUN [--backend ort] [--requests 3000] [--concurrency 32]
    python benchmarks/serve_load.py RUN --ceiling [--requests 4000]
    python benchmarks/serve_load.py RUN --workers 1,2 [--repeats 3]

--workers compares `convforge serve --workers N` (N processes, each with its own model, batcher and
cores / N model threads) at each N given, batched, at --concurrency.

Whole server runs are compared in --repeats rounds, every setup once per round in rotating order
(`convforge.measure.paired.rotating_rounds`); a ratio is the median of per-round ratios with its 95%
interval, the other figures come from each setup's median run.

--ceiling measures what HTTP alone allows here instead: the same server (in a process of its own) with a
model that costs nothing (zeros), with small images decoded on the event loop and, for comparison,
all of them handed to the decode pool; and the CPU each HTTP client library spends per request
(httpx and aiohttp, GET /healthz, 2,000 requests at concurrency 32).

The load generator shares this machine's cores with the server (2 here): its CPU time is part of
what the server figures pay, and not of the raw model's. Writes benchmarks/out/serve_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from convforge.deploy.load import free_port, run_load, serve_process, wait_ready
from convforge.deploy.predict import image_tensor
from convforge.deploy.serving import open_serving_model
from convforge.measure.paired import Ratio, per_round_ratio, rotating_rounds
from convforge.runs import describe_hardware, hardware_fingerprint

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("CONVFORGE_DATASETS", ROOT.parent / "shared" / "datasets"))


def cifar_jpegs(count: int) -> list[tuple[str, bytes]]:
    files = []
    with tarfile.open(DATASETS / "cifar10-jpg" / "cifar10-jpg.tar.gz") as archive:
        for member in archive:
            if member.isfile() and "/test/" in f"/{member.name}" and member.name.endswith(".jpg"):
                files.append((Path(member.name).name, archive.extractfile(member).read()))
                if len(files) == count:
                    break
    return files


def raw_model(run: str, backend: str, images: list[tuple[str, bytes]], batch: int, seconds: float) -> float:
    """Images per second of decode + preprocess + forward in batches, no server (median of 3 passes)."""
    model = open_serving_model(run, backend, threads=torch.get_num_threads())  # all cores: the raw model's best
    rates = []
    for _ in range(3):
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            for start in range(0, len(images), batch):
                chunk = images[start : start + batch]
                inputs = torch.cat([image_tensor(data, model.spec, name=name) for name, data in chunk])
                model.backend.run(inputs).argmax(axis=1)
                done += len(chunk)
        rates.append(done / (time.perf_counter() - started))
    return statistics.median(rates)


def stage_seconds(metrics: str) -> dict[str, float]:
    """Seconds spent per stage (summed over images), and the batch count and size sums."""
    found = {stage: float(value) for stage, value in
             re.findall(r'^convforge_stage_seconds_sum\{stage="(\w+)"\} (\S+)$', metrics, re.MULTILINE)}  # fmt: skip
    for name in ("count", "sum"):
        match = re.search(rf"^convforge_batch_size_{name} (\S+)$", metrics, re.MULTILINE)
        found[f"batches_{name}"] = float(match.group(1)) if match else 0.0
    return found


def rss_mb(pid: int) -> float:
    match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) / 1024


def serve_and_load(run, images, args, extra: list[str], concurrency: int, requests: int, out: Path) -> dict:
    threads = ["--threads", str(args.threads)] if args.threads else []
    with serve_process(run, "--backend", args.backend, *threads, *extra, log=out.with_suffix(".log")) as server:
        url = f"{server.url}/v1/predict"
        run_load(url, images, requests=min(200, requests), concurrency=concurrency)  # warm connections, caches
        before = stage_seconds(httpx.get(f"{server.url}/metrics").text)
        memory = [rss_mb(server.process.pid)]
        result = run_load(url, images, requests=requests, concurrency=concurrency, max_seconds=120)
        memory.append(rss_mb(server.process.pid))
        after = stage_seconds(httpx.get(f"{server.url}/metrics").text)
    change = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in after}
    batches = change.pop("batches_count"), change.pop("batches_sum")
    return {**result.to_dict(), "stage_seconds": change, "mean_batch": batches[1] / max(batches[0], 1),
            "rss_mb": memory}  # fmt: skip


_ZERO_SERVER = """
import sys, numpy as np, uvicorn
from convforge.checkpoint import read_model_spec
from convforge.deploy.backends import Backend
from convforge.deploy.server import ServeSettings, create_app
from convforge.deploy.serving import ServingModel
spec = read_model_spec(sys.argv[1])
zeros = Backend("zeros", lambda x: np.zeros((len(x), len(spec.classes)), np.float32))
settings = ServeSettings(inline_decode_bytes=int(sys.argv[3]))
uvicorn.run(create_app(ServingModel("zeros", spec, zeros), settings), host="127.0.0.1", port=int(sys.argv[2]),
            log_level="warning", access_log=False)
"""


def ceiling(run: str, images, requests: int, concurrency: int) -> dict:
    """Images per second of the server with a model that costs nothing, small images decoded inline
    (8 KB, the default) and all sent to the pool (0), and each client library's CPU per request."""
    results = {}
    for inline in (8192, 0):
        port = free_port()
        server = subprocess.Popen([sys.executable, "-c", _ZERO_SERVER, run, str(port), str(inline)])
        try:
            wait_ready(f"http://127.0.0.1:{port}", alive=lambda process=server: process.poll() is None)
            url = f"http://127.0.0.1:{port}"
            run_load(f"{url}/v1/predict", images, requests=300, concurrency=concurrency)
            load = run_load(f"{url}/v1/predict", images, requests=requests, concurrency=concurrency)
            results[f"inline_decode_{inline}"] = load.to_dict()
            if inline:
                results["client_cpu_ms_per_request"] = {name: client_cpu(name, f"{url}/healthz", 2000, concurrency)
                                                        for name in ("httpx", "aiohttp")}  # fmt: skip
        finally:
            server.terminate()
            server.wait(30)
    return results


def client_cpu(library: str, url: str, requests: int, concurrency: int) -> float:
    """CPU milliseconds this process spends per GET with `library`'s async client."""

    async def with_httpx() -> None:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(limits=limits) as client:
            await asyncio.gather(*(loop(lambda: client.get(url)) for _ in range(concurrency)))

    async def with_aiohttp() -> None:
        import aiohttp

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
            async def get():
                async with session.get(url) as response:
                    await response.read()

            await asyncio.gather(*(loop(get) for _ in range(concurrency)))

    counter = iter(range(requests))

    async def loop(call) -> None:
        for _ in counter:
            await call()

    started = time.process_time()
    asyncio.run(with_httpx() if library == "httpx" else with_aiohttp())
    return (time.process_time() - started) * 1000 / requests


def median_run(runs: list[dict]) -> dict:
    return sorted(runs, key=lambda r: r["images_per_second"])[len(runs) // 2]


def rate_ratio(runs: dict, reference, other) -> Ratio:
    """How many times the throughput of `reference` `other` reached, round by round."""
    return per_round_ratio([r["images_per_second"] for r in runs[other]],
                           [r["images_per_second"] for r in runs[reference]])  # fmt: skip


def compare_workers(args, images, out: Path, hardware: str) -> None:
    """Throughput of the batched server at each worker count, in --repeats rotating rounds."""
    counts = [int(n) for n in args.workers.split(",")]
    setups = {n: (lambda n=n: serve_and_load(args.run, images, args, ["--max-batch", str(args.max_batch), "--workers",
                                             str(n)], args.concurrency, args.requests, out / f"workers{n}"))
              for n in counts}  # fmt: skip
    runs = rotating_rounds(setups, args.repeats)
    print(f"| workers | img/s (median of {args.repeats}) | runs | p50 ms | p99 ms | vs {counts[0]} worker(s) |")
    print("|---:|---:|---|---:|---:|---:|")
    table = {}
    for n in counts:
        middle = median_run(runs[n])
        rates = ", ".join(f"{r['images_per_second']:.0f}" for r in runs[n])
        print(f"| {n} | {middle['images_per_second']:.0f} | {rates} | {middle['latency_ms'].get('p50', 0):.1f} | "
              f"{middle['latency_ms'].get('p99', 0):.1f} | {rate_ratio(runs, counts[0], n).text()} |")  # fmt: skip
        table[n] = runs[n]
    (out / "serve_workers.json").write_text(json.dumps({"runs": table, "hardware": hardware}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--backend", default="ort")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None, help="model threads (default: all cores)")
    parser.add_argument("--ceiling", action="store_true", help="HTTP alone: a zero-cost model, client CPU")
    parser.add_argument("--workers", default=None, help="compare these worker counts, like 1,2")
    parser.add_argument("--repeats", type=int, default=3, help="rounds: runs of each setup (median)")
    args = parser.parse_args()
    out = ROOT / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    images = cifar_jpegs(args.images)
    hardware = describe_hardware(hardware_fingerprint())
    print(f"{Path(args.run).name}, backend {args.backend}, {len(images)} CIFAR-10 test JPEGs; {hardware}")
    if args.ceiling:
        found = ceiling(args.run, images, args.requests, args.concurrency)
        for inline in (8192, 0):
            r = found[f"inline_decode_{inline}"]
            print(f"zero-cost model, --inline-decode-kb {inline / 1024:g}: {r['images_per_second']:.0f} img/s, "
                  f"p50 {r['latency_ms'].get('p50', 0):.1f} ms, statuses {r['statuses']}")  # fmt: skip
        print(f"client CPU per request (ms): {found['client_cpu_ms_per_request']}")
        (out / "serve_ceiling.json").write_text(json.dumps({**found, "hardware": hardware}, indent=2))
        return

    if args.workers:
        return compare_workers(args, images, out, hardware)
    results = {"raw_images_per_second": raw_model(args.run, args.backend, images, args.max_batch, 3.0)}
    setups = {"batched": ["--max-batch", str(args.max_batch)], "unbatched": ["--max-batch", "1"]}
    rounds = rotating_rounds({name: (lambda name=name, extra=extra: serve_and_load(
        args.run, images, args, extra, args.concurrency, args.requests, out / name)) for name, extra in setups.items()},
        args.repeats)  # fmt: skip
    results.update({name: median_run(runs) for name, runs in rounds.items()})
    results["rounds"] = rounds
    batching = rate_ratio(rounds, "unbatched", "batched")
    results["batching_speedup"] = batching.to_dict()
    overload = ["--max-batch", str(args.max_batch), "--max-queue", "64", "--max-images", "1"]
    results["overload"] = serve_and_load(args.run, images, args, overload, 512, args.requests, out / "overload")

    raw, batched = results["raw_images_per_second"], results["batched"]
    print(f"raw batched model (batch {args.max_batch}, no server): {raw:.0f} img/s")
    print("| setup | concurrency | img/s | p50 ms | p90 ms | p99 ms | mean batch | statuses | decode share |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|")
    for name in ("batched", "unbatched", "overload"):
        r = results[name]
        stages = r["stage_seconds"]
        share = stages.get("decode", 0) / max(sum(stages.values()), 1e-9)
        latency = r["latency_ms"]
        p50, p90, p99 = (latency.get(q, 0.0) for q in ("p50", "p90", "p99"))
        print(f"| server, {name} | {r['concurrency']} | {r['images_per_second']:.0f} | {p50:.1f} | {p90:.1f} | "
              f"{p99:.1f} | {r['mean_batch']:.1f} | {r['statuses']} | {share:.1%} |")  # fmt: skip
    rejected = results["overload"]["rejected_latency_ms"]
    if rejected:
        print(f"overload: 503 answered in p50 {rejected['p50']:.1f} ms, p99 {rejected['p99']:.1f} ms")
    print(f"batching: {batching.text()} unbatched, over {args.repeats} rounds; "
          f"server/raw: {batched['images_per_second'] / raw:.1%}; "
          f"server memory (MB) before and after the overload run: {results['overload']['rss_mb']}")  # fmt: skip
    results["hardware"] = hardware
    (out / "serve_load.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
