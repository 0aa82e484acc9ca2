"""Dynamic batching for the server: images from concurrent requests gathered into one forward pass.

One batcher per process owns the model. Requests put their preprocessed images on a bounded queue
and await one future per image; a single asyncio task takes up to `max_batch` images, waiting at
most `max_delay` after the first for more to arrive, and runs the model in its own thread, so the
event loop keeps accepting and queueing while a batch computes (the next batch gathers during the
current one: under load batches fill without waiting). Images whose request has given up (its
deadline passed, its client left) are dropped before the forward pass, never computed for nothing.

Not Triton's or TorchServe's batcher: those live outside the Python process that holds the run's
preprocessing, and TorchServe is no longer maintained. This is ~150 lines on asyncio alone.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch


class QueueFull(Exception):
    """The queue cannot take this request's images now; the client should retry later."""

    def __init__(self, waiting: int, limit: int, asked: int):
        super().__init__(f"the queue holds {waiting} of at most {limit} images; this request needs {asked} more")
        self.waiting, self.limit, self.asked = waiting, limit, asked


class DeadlinePassed(Exception):
    """The image's deadline passed before its batch started; it was not computed."""


@dataclass
class _Item:
    image: torch.Tensor  # (1, C, H, W), preprocessed
    deadline: float  # time.monotonic()
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)


@dataclass
class BatchTiming:
    """What one forward pass cost, for the server's metrics."""

    size: int
    dropped: int  # images whose deadline passed in the queue
    queue_seconds: list[float]  # per image: enqueued -> batch start
    inference_seconds: float


class DynamicBatcher:
    """`infer` maps a (B, C, H, W) float32 batch to (B, classes) logits; it runs on one thread."""

    def __init__(
        self,
        infer: Callable[[torch.Tensor], np.ndarray],
        *,
        max_batch: int,
        max_delay: float,
        max_queue: int,
        on_batch: Callable[[BatchTiming], None] | None = None,
    ):
        self.infer = infer
        self.max_batch, self.max_delay, self.max_queue = max_batch, max_delay, max_queue
        self.on_batch = on_batch
        self._queue: collections.deque[_Item] = collections.deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closing = False
        # one thread computes: a second would only fight the first for the same cores
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="convforge-infer")

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._arrived = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="convforge-batcher")

    async def stop(self) -> None:
        """Answer everything already queued, then stop (the server stops accepting before this)."""
        self._closing = True
        if self._arrived is not None:
            self._arrived.set()
        if self._task is not None:
            await self._task
        self._thread.shutdown(wait=True)

    def submit(self, images: list[torch.Tensor], deadline: float) -> list[asyncio.Future]:
        """Queue a request's images (all or none); one future per image resolves to its logits row."""
        if self._closing:
            raise QueueFull(len(self._queue), self.max_queue, len(images))
        if len(self._queue) + len(images) > self.max_queue:
            raise QueueFull(len(self._queue), self.max_queue, len(images))
        loop = asyncio.get_running_loop()
        futures = []
        for image in images:
            item = _Item(image, deadline, loop.create_future())
            self._queue.append(item)
            futures.append(item.future)
        self._arrived.set()
        return futures

    async def run_now(self, batch: torch.Tensor) -> np.ndarray:
        """One forward pass on the inference thread, outside the queue (warm-up)."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, self.infer, batch)

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            await self._gather()
            batch, dropped = self._take()
            if not batch:
                self._report(BatchTiming(0, dropped, [], 0.0))
                continue
            started = time.monotonic()
            try:
                logits = await self.run_now(torch.cat([item.image for item in batch]))
            except Exception as exc:  # the model failed: every image of the batch hears why
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            seconds = time.monotonic() - started
            for item, row in zip(batch, logits, strict=True):
                if not item.future.done():  # its request may have timed out meanwhile
                    item.future.set_result(row)
            self._report(BatchTiming(len(batch), dropped, [started - item.enqueued for item in batch], seconds))

    async def _gather(self) -> None:
        """Wait until the batch is full or `max_delay` has passed since its first image arrived."""
        until = self._queue[0].enqueued + self.max_delay
        while len(self._queue) < self.max_batch and not self._closing:
            remaining = until - time.monotonic()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    def _take(self) -> tuple[list[_Item], int]:
        """Up to `max_batch` live images from the queue's head; expired or abandoned ones are answered
        (DeadlinePassed) or skipped, and counted."""
        batch, dropped, now = [], 0, time.monotonic()
        while self._queue and len(batch) < self.max_batch:
            item = self._queue.popleft()
            if item.future.done():  # cancelled: the request gave up
                dropped += 1
            elif item.deadline <= now:
                item.future.set_exception(DeadlinePassed())
                dropped += 1
            else:
                batch.append(item)
        return batch, dropped

    def _report(self, timing: BatchTiming) -> None:
        if self.on_batch is not None:
            self.on_batch(timing)
