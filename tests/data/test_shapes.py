"""The built-in shapes data: deterministic, masks that match the drawn object, and hard for a linear model."""

from __future__ import annotations

import numpy as np
import torch

from convforge.data import load_dataset
from convforge.data.shapes import SHAPE_CLASSES, ShapesConfig, render_split


def test_deterministic_and_independent_of_count():
    a_images, a_labels, a_masks = render_split(ShapesConfig(size=32, train=30), "train")
    b_images, b_labels, b_masks = render_split(ShapesConfig(size=32, train=50), "train", 0, 30)
    np.testing.assert_array_equal(a_images, b_images)
    np.testing.assert_array_equal(a_masks, b_masks)
    other, _, _ = render_split(ShapesConfig(size=32, train=30, seed=1), "train")
    assert not np.array_equal(a_images, other)


def test_every_class_present_and_masks_are_the_object():
    images, labels, masks = render_split(ShapesConfig(size=48, train=200), "train")
    assert np.bincount(labels, minlength=len(SHAPE_CLASSES)).min() == 20
    coverage = masks.reshape(len(masks), -1).mean(axis=1)
    assert coverage.min() > 0.01 and coverage.max() < 0.6
    # Inside the mask (away from its anti-aliased edge) the image is one colour plus pixel noise (sigma 6).
    for image, mask in zip(images[:20].astype(float), masks[:20].astype(bool), strict=True):
        inner = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
        assert image[1:-1, 1:-1][inner].std(axis=0).max() < 8


def test_loaded_spec_options_and_cache():
    dataset = load_dataset("shapes:size=24,train=40,val=10,test=20,seed=5")
    assert dataset.image_shape == (24, 24, 3)
    assert [len(s) for s in dataset.splits.values()] == [40, 10, 20]
    assert dataset.train.masks.shape == (40, 24, 24)
    again = load_dataset("shapes:size=24,train=40,val=10,test=20,seed=5")
    assert again.cache_path == dataset.cache_path


def test_linear_classifier_on_pixels_does_badly():
    """Multinomial logistic regression on the raw pixels (64x64x3) of 10,000 training images: 10.4% on
    the 2,000 test images (chance: 10%) while it fits a third or more of the training set. The small CNN
    of the demo reaches 95%+ on the same test images (tests/cli/test_demo.py)."""
    dataset = load_dataset("shapes")
    train_x = torch.from_numpy(dataset.train.gather(np.arange(len(dataset.train)))).flatten(1).float()
    test_x = torch.from_numpy(dataset.test.gather(np.arange(len(dataset.test)))).flatten(1).float()
    mean, std = train_x.mean(0), train_x.std(0) + 1e-3
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    train_y, test_y = torch.from_numpy(dataset.train.labels), torch.from_numpy(dataset.test.labels)
    torch.manual_seed(0)
    linear = torch.nn.Linear(train_x.shape[1], 10)
    optimizer = torch.optim.Adam(linear.parameters(), lr=1e-3, weight_decay=1e-4)
    for _ in range(80):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(linear(train_x), train_y).backward()
        optimizer.step()
    with torch.no_grad():
        train_accuracy = (linear(train_x).argmax(1) == train_y).float().mean().item()
        test_accuracy = (linear(test_x).argmax(1) == test_y).float().mean().item()
    assert train_accuracy > 0.25  # it is a working classifier: it fits the training images
    assert test_accuracy < 0.15  # and it does not generalise: chance is 10%
