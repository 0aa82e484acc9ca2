"""Shape bias: the cue-conflict set and Geirhos et al.'s ratio."""

from __future__ import annotations

import numpy as np

from convforge.data.shapes import ShapesConfig, render_split
from convforge.robust.bias import cue_conflict_set, shape_bias


def test_cue_conflict_set_pairs_every_shape_with_every_other_texture():
    config = ShapesConfig(size=32, classes=4)
    conflict = cue_conflict_set(config, 24)
    assert (conflict.shape_labels != conflict.texture_labels).all()
    pairs = set(zip(conflict.shape_labels.tolist(), conflict.texture_labels.tolist(), strict=True))
    assert len(pairs) == 4 * 3
    again = cue_conflict_set(config, 5)
    assert np.array_equal(again.images, conflict.images[:5])  # image i depends on (seed, i) only
    assert conflict.masks.sum(axis=(1, 2)).min() > 20  # every image shows its object


def test_textured_shapes_keep_the_plain_data_unchanged():
    plain = render_split(ShapesConfig(size=32, train=4), "train")
    textured = render_split(ShapesConfig(size=32, train=4, textured=1), "train")
    assert np.array_equal(plain[1], textured[1]) and np.array_equal(plain[2], textured[2])  # labels, masks
    assert not np.array_equal(plain[0], textured[0])
    again = render_split(ShapesConfig(size=32, train=4), "train")
    assert np.array_equal(plain[0], again[0])


def test_shape_bias_counts_only_cue_decisions():
    predictions = np.array([0, 0, 1, 2, 3])
    shapes = np.array([0, 0, 0, 0, 0])
    textures = np.array([1, 1, 1, 1, 1])
    bias = shape_bias(predictions, shapes, textures)
    assert (bias.shape_decisions, bias.texture_decisions, bias.other_decisions) == (2, 1, 2)
    assert bias.shape_bias == 2 / 3
    assert shape_bias(np.array([2]), np.array([0]), np.array([1])).shape_bias is None
