"""Taking less of a dataset before decoding it: `,limit=N` (at most N images per split, the same ones every
time) and only the splits a command uses (`eval --split test` decodes no training images).

A listing cut down either way is cached under its own key, so the whole dataset's cache entry stays whole.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from convforge.data.folder import FileListing
from convforge.data.imageset import Dataset
from convforge.errors import DatasetError


def split_limit(spec: str) -> tuple[str, int | None]:
    """`X,limit=N` (or `shapes:limit=N`) -> (`X`, N); a spec without the option -> (spec, None)."""
    head, comma, last = spec.rpartition(",")
    if not comma:
        prefix = "shapes:"
        if not spec.startswith(prefix):
            return spec, None
        head, last = "shapes", spec[len(prefix) :]
    name, equals, value = last.partition("=")
    if name.strip() != "limit" or not equals:
        return spec, None
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit < 1:
        raise DatasetError(f"limit takes a whole number of images per split (at least 1), got {value!r} in {spec!r}")
    return head, limit


def limit_splits(dataset: Dataset, limit: int) -> Dataset:
    """At most `limit` images in each split, stratified by class, always the same ones."""
    dataset.splits = {
        name: split.subset(proportional_positions(split.labels, limit), split.name) if len(split) > limit else split
        for name, split in dataset.splits.items()
    }
    dataset.fingerprint = f"{dataset.fingerprint}-limit{limit}"
    return dataset


def limit_listing(listing: FileListing, limit: int | None) -> FileListing:
    """The same subset as `limit_splits`, taken before decoding, so a large folder decodes only the
    images a limited run uses (cached under its own key: the full dataset's entry stays whole)."""
    if limit is None or all(len(items) <= limit for items in listing.splits.values()):
        return listing
    splits = {}
    for name, items in listing.splits.items():
        positions = proportional_positions(np.array([label for _, label in items]), limit)
        splits[name] = [items[i] for i in positions]
    return dataclasses.replace(listing, splits=splits, cache_identity=f"{listing.cache_identity}-limit{limit}")


def proportional_positions(labels: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """Sorted positions of `count` of `labels` (all when fewer), each class's share kept (largest
    remainders), drawn with a fixed seed."""
    labels = np.asarray(labels)
    if count >= len(labels):
        return np.arange(len(labels))
    counts = np.bincount(labels)
    quota = counts * count / len(labels)
    take = np.floor(quota).astype(np.int64)
    short = count - int(take.sum())
    take[np.argsort(-(quota - take), kind="stable")[:short]] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:n] for c, n in enumerate(take) if n]
    return np.sort(np.concatenate(chosen))


def keep_splits(listing: FileListing, wanted: Sequence[str] | None, carve_val: bool = False) -> FileListing:
    """Only the first split of `wanted` that `listing` has (None: every split), before decoding. With
    `carve_val`, a wanted "val" that the listing lacks is carved out of train later, so train is kept."""
    if wanted is None:
        return listing
    names = list(wanted)
    if carve_val and "val" in names and "val" not in listing.splits:
        names[names.index("val")] = "train"
    chosen = next((name for name in names if name in listing.splits), None)
    if chosen is None:
        raise DatasetError(f"{listing.root} has no {' or '.join(repr(n) for n in wanted)} split; it has "
                           f"{sorted(listing.splits)}")  # fmt: skip
    if list(listing.splits) == [chosen]:
        return listing
    return dataclasses.replace(listing, splits={chosen: listing.splits[chosen]},
                               cache_identity=f"{listing.cache_identity}-only-{chosen}")  # fmt: skip
