"""Spread samples of a split, class alignment, and telling a dataset spec from image files."""

import numpy as np
from PIL import Image

from convforge.data import load_dataset
from convforge.data.sample import sample_split, spread_positions
from convforge.data.spec import is_dataset_spec
from tests.helpers import TINY_SHAPES


def test_spread_positions_cover_the_ends_and_never_repeat():
    assert spread_positions(10, 3).tolist() == [0, 4, 9]
    assert spread_positions(3, 10).tolist() == [0, 1, 2]
    assert spread_positions(0, 5).tolist() == [] and spread_positions(5, 0).tolist() == []
    positions = spread_positions(1000, 37)
    assert len(positions) == 37 and np.all(np.diff(positions) > 0) and positions[-1] == 999


def test_a_sample_of_a_class_sorted_split_shows_every_class():
    classes = load_dataset(TINY_SHAPES).classes
    reordered = classes[::-1]  # the model's order: labels follow it, matched by name
    sample = sample_split(TINY_SHAPES, reordered, 3, "test", 20, strict=False)
    assert len(sample.pixels) == len(sample.labels) == 20
    assert sorted(set(sample.labels.tolist())) == list(range(len(classes)))
    assert sample.imageset.classes == reordered


def test_is_dataset_spec(tmp_path):
    image = tmp_path / "one.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    (tmp_path / "tree" / "cat").mkdir(parents=True)
    (tmp_path / "flat").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "flat" / "a.png")
    assert is_dataset_spec(["shapes"]) and is_dataset_spec(["shapes:size=32,limit=5"])
    assert is_dataset_spec(["mnist:/no/such/folder"]) and is_dataset_spec([str(tmp_path / "tree")])
    assert not is_dataset_spec([str(image)]) and not is_dataset_spec([str(tmp_path / "flat")])
    assert not is_dataset_spec(["unknownscheme:x"]) and not is_dataset_spec(["shapes", "shapes"])


def test_stratified_positions_share_the_count_over_classes_seeded():
    from convforge.data.sample import stratified_positions

    labels = np.array([0] * 50 + [1] * 5 + [2] * 45)
    positions = stratified_positions(labels, 30, seed=0)
    assert len(set(positions.tolist())) == 30
    assert np.bincount(labels[positions]).tolist() == [13, 5, 12]  # the small class gives all it has
    np.testing.assert_array_equal(positions, stratified_positions(labels, 30, seed=0))
    assert not np.array_equal(positions, stratified_positions(labels, 30, seed=1))
    np.testing.assert_array_equal(stratified_positions(labels, 500, seed=0), np.arange(100))
