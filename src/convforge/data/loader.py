"""Batches of uint8 NHWC images on the target device, in a seeded order.

Materialized splits (in memory or memory-mapped) are gathered batch by batch from the host array;
on a GPU a split that fits comfortably is uploaded once and gathered there (airbench does the same).
Streaming splits go through a torch DataLoader whose workers decode files; images that fail to
decode are dropped from their batch and counted in `skipped`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from convforge.data.imageset import ImageSet, SkippedFile
from convforge.errors import DatasetError

# Upload a whole split to the GPU when it takes less than this share of the free memory.
_GPU_RESIDENT_SHARE = 0.25


class BatchLoader:
    """Iterates one split in batches: (images uint8 NHWC, labels int64, positions int64)."""

    def __init__(
        self,
        imageset: ImageSet,
        batch_size: int,
        *,
        shuffle: bool,
        drop_last: bool = False,
        device: torch.device | str = "cpu",
        workers: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        """With `world_size` processes (distributed training), this rank's share of every epoch (`order`),
        cut to N // world_size images so that every rank takes as many batches and the processes step
        together (at most world_size - 1 images of an epoch are left out)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.imageset = imageset
        self.rank, self.world_size = rank, world_size
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last and len(imageset) // world_size >= batch_size
        self.device = torch.device(device)
        self.workers = workers if workers is not None else min(os.cpu_count() or 1, 8)
        self.skipped = 0  # images of a streaming split that could not be decoded, over all epochs
        self._resident: torch.Tensor | None = None
        self._labels = torch.from_numpy(np.array(imageset.labels, dtype=np.int64))
        if self.device.type == "cuda" and not imageset.streaming:
            nbytes = len(imageset) * int(np.prod(imageset.image_shape))
            free, _ = torch.cuda.mem_get_info(self.device)
            if nbytes < _GPU_RESIDENT_SHARE * free:
                all_positions = np.arange(len(imageset))
                self._resident = torch.from_numpy(imageset.gather(all_positions)).to(self.device)
                self._labels = self._labels.to(self.device)

    def __len__(self) -> int:
        n = len(self.imageset) // self.world_size
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, seed: int | None, rank: int = 0, world_size: int = 1) -> np.ndarray:
        """The positions of one epoch, in order: a seeded permutation when shuffling.

        With `world_size` processes, `rank`'s share: every world_size-th position of the same
        permutation from `rank` on, so the shares interleave back into the one-process order and
        each image is seen once per epoch (shares differ in length by at most one; evening them out
        for collective steps is the distributed sampler's choice, pad or drop)."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if hasattr(self.imageset.storage, "epoch_order"):  # shards: a stream's order (data/shards.py)
            return self.imageset.storage.epoch_order(self.imageset.indices, seed if self.shuffle else None,
                                                    rank, world_size)  # fmt: skip
        n = len(self.imageset)
        order = np.random.default_rng(seed).permutation(n) if self.shuffle else np.arange(n)
        return order[rank::world_size]

    def batches(
        self, seed: int | None = None, start: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """One epoch's batches in the order of `seed`, from batch number `start` (a resumed epoch)."""
        order = self.order(seed, self.rank, self.world_size)
        order = order[: len(self.imageset) // self.world_size]  # as many images on every rank
        chunks = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.drop_last and chunks and len(chunks[-1]) < self.batch_size:
            chunks.pop()
        chunks = chunks[start:]
        if self.imageset.streaming:
            yield from self._stream(chunks)
            return
        for positions in chunks:
            index = torch.from_numpy(positions)
            if self._resident is not None:
                index = index.to(self.device)
                yield self._resident[index], self._labels[index], index
                continue
            images = torch.from_numpy(self.imageset.gather(positions))
            labels = self._labels[index]
            if self.device.type == "cuda":
                images = images.pin_memory().to(self.device, non_blocking=True)
                labels = labels.to(self.device, non_blocking=True)
            yield images, labels, index

    def _stream(self, chunks: list[np.ndarray]):
        dataset = _StreamingSplit(self.imageset)
        loader = DataLoader(
            dataset,
            batch_sampler=[c.tolist() for c in chunks],
            num_workers=self.workers,
            collate_fn=_collate_decoded,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        for images, labels, positions, failed in loader:
            if failed and self.imageset.storage.strict:
                raise DatasetError(
                    f"cannot read {failed[0].path}: {failed[0].reason} (strict mode); remove or repair it, "
                    "or drop --strict to skip unreadable images"
                )
            self.skipped += len(failed)
            if len(labels) == 0:
                continue
            yield (
                images.to(self.device, non_blocking=True),
                labels.to(self.device, non_blocking=True),
                positions,
            )


class _StreamingSplit(torch.utils.data.Dataset):
    def __init__(self, imageset: ImageSet):
        self.imageset = imageset

    def __len__(self) -> int:
        return len(self.imageset)

    def __getitem__(self, position: int):
        row = int(self.imageset.indices[position])
        return self.imageset.storage.read(row), int(self.imageset.labels[position]), position


def _collate_decoded(items):
    kept = [item for item in items if not isinstance(item[0], SkippedFile)]
    failed = [item[0] for item in items if isinstance(item[0], SkippedFile)]
    if not kept:
        return torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.long), torch.empty(0), failed
    images = torch.from_numpy(np.stack([item[0] for item in kept]))
    labels = torch.tensor([item[1] for item in kept], dtype=torch.long)
    positions = torch.tensor([item[2] for item in kept], dtype=torch.long)
    return images, labels, positions, failed
