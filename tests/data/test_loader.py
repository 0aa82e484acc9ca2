"""Batch order is a seeded permutation; every image appears once per epoch."""

from __future__ import annotations

import numpy as np

from convforge.data.imageset import ImageSet
from convforge.data.loader import BatchLoader


def _imageset(n=23):
    images = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1).repeat(2, axis=1)
    return ImageSet(images, np.arange(n) % 3, ["a", "b", "c"])


def test_each_image_once_and_seeded_order():
    loader = BatchLoader(_imageset(), 5, shuffle=True)
    first = np.concatenate([b[2].numpy() for b in loader.batches(seed=1)])
    again = np.concatenate([b[2].numpy() for b in loader.batches(seed=1)])
    other = np.concatenate([b[2].numpy() for b in loader.batches(seed=2)])
    assert sorted(first.tolist()) == list(range(23))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_images_and_labels_stay_together_and_drop_last():
    loader = BatchLoader(_imageset(), 5, shuffle=True, drop_last=True)
    assert len(loader) == 4
    for images, labels, positions in loader.batches(seed=0):
        assert len(images) == 5
        np.testing.assert_array_equal(images[:, 0, 0, 0].numpy(), positions.numpy())
        np.testing.assert_array_equal(labels.numpy(), positions.numpy() % 3)


def test_the_shares_of_all_ranks_interleave_into_the_one_process_order():
    import pytest

    for shuffle in (True, False):
        loader = BatchLoader(_imageset(23), 5, shuffle=shuffle)
        whole = loader.order(seed=7)
        for world_size in (1, 2, 3, 4):
            shares = [loader.order(seed=7, rank=r, world_size=world_size) for r in range(world_size)]
            assert max(map(len, shares)) - min(map(len, shares)) <= 1
            interleaved = np.empty(len(whole), dtype=whole.dtype)
            for rank, share in enumerate(shares):
                interleaved[rank::world_size] = share
            np.testing.assert_array_equal(interleaved, whole)
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\), got 2"):
        loader.order(seed=7, rank=2, world_size=2)


def test_a_subsets_images_go_with_its_labels(tmp_path):
    """`split.images[:8]` with `split.labels[:8]` on a limited or carved-out split: the images of those
    labels, not the first rows of the storage the split shares (they once were)."""
    from convforge.data import load_dataset

    whole = _imageset()
    part = whole.subset(np.array([20, 3, 7, 11]))
    assert part.images[:2].ravel().tolist() == [20, 20, 3, 3] and part.labels[:2].tolist() == [2, 0]
    assert part.images[-1].ravel().tolist() == [11, 11] and part.images.shape == (4, 2, 1, 1)
    assert np.asarray(part.images).shape == (4, 2, 1, 1) and len(part.images) == 4
    limited = load_dataset("shapes:size=16,train=60,val=0,test=30,limit=10").test
    np.testing.assert_array_equal(limited.images[:5], limited.gather(np.arange(5)))
    assert len(limited.images) == len(limited.labels) == 10
