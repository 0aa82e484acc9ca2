"""ImageFolder, archive and CSV datasets: splits, classes, the decode cache, streaming and bad data."""

from __future__ import annotations

import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from convforge.data import folder as folder_module
from convforge.data import load_dataset
from convforge.data.loader import BatchLoader
from convforge.errors import DatasetError


def _write_image(path, value: int, size=(12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.full((size[1], size[0], 3), value, dtype=np.uint8)
    array[0, 0] = (value * 7) % 256  # make images distinguishable
    Image.fromarray(array).save(path)


def make_folder(root, classes=("cat", "dog"), per_class=6, splits=None):
    for split in splits or [None]:
        for c, name in enumerate(classes):
            for i in range(per_class):
                base = root / split if split else root
                _write_image(base / name / f"{i}.png", 40 * c + i)
    return root


def test_flat_folder_with_bad_files_counts_and_skips(tmp_path):
    root = make_folder(tmp_path / "pets")
    (root / "cat" / "empty.jpg").write_bytes(b"")
    (root / "dog" / "fake.png").write_text("hello")
    (root / "dog" / "README.txt").write_text("not an image")
    dataset = load_dataset(str(root))
    assert dataset.classes == ["cat", "dog"]
    assert len(dataset.train) == 12
    assert sorted(s.path.rsplit("/", 1)[-1] for s in dataset.skipped) == ["empty.jpg", "fake.png"]
    assert dataset.ignored_files == 1
    assert dataset.summary()["skipped_files"] == 2
    with pytest.raises(DatasetError, match=r"(?s)2 image\(s\) .* cannot be read \(strict mode\).*empty\.jpg"):
        load_dataset(str(root), strict=True)


def test_split_folders_and_pixels(tmp_path):
    root = make_folder(tmp_path / "d", splits=["train", "val", "test"], per_class=3)
    dataset = load_dataset(str(root))
    assert list(dataset.splits) == ["train", "val", "test"]
    assert [len(s) for s in dataset.splits.values()] == [6, 6, 6]
    images = dataset.test.gather(np.arange(len(dataset.test)))
    expected = np.asarray(Image.open(root / "test" / "dog" / "2.png"))
    position = [i for i in range(6) if dataset.test.labels[i] == 1][2]
    np.testing.assert_array_equal(images[position], expected)


def test_validation_fraction_is_stratified_and_seeded(tmp_path):
    root = make_folder(tmp_path / "d", per_class=10)
    first = load_dataset(str(root), val_fraction=0.2, seed=3)
    again = load_dataset(str(root), val_fraction=0.2, seed=3)
    other = load_dataset(str(root), val_fraction=0.2, seed=4)
    assert np.bincount(first.val.labels).tolist() == [2, 2]
    assert len(first.train) == 16
    np.testing.assert_array_equal(first.val.indices, again.val.indices)
    assert not np.array_equal(first.val.indices, other.val.indices)
    assert not set(first.val.indices) & set(first.train.indices)


def test_second_load_never_decodes(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "d")
    first = load_dataset(str(root))

    def refuse(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(folder_module, "decode_image", refuse)
    second = load_dataset(str(root))
    np.testing.assert_array_equal(first.train.gather(np.arange(12)), second.train.gather(np.arange(12)))
    assert second.cache_path == first.cache_path


def test_changed_file_invalidates_the_cache(tmp_path):
    root = make_folder(tmp_path / "d")
    first = load_dataset(str(root))
    _write_image(root / "cat" / "0.png", 99)  # same name, same size, other pixels
    os.utime(root / "cat" / "0.png", ns=(1, 1))
    second = load_dataset(str(root))
    assert second.cache_path != first.cache_path
    assert second.train.gather(np.array([0]))[0, 1, 1, 0] == 99


def test_same_listing_elsewhere_does_not_share_pixels(tmp_path):
    a = load_dataset(str(make_folder(tmp_path / "a")))
    b = load_dataset(str(make_folder(tmp_path / "b")))
    assert a.fingerprint == b.fingerprint  # the data fingerprint ignores where the data lies
    assert a.cache_path != b.cache_path  # the cache does not: b's files could change on their own


def test_archive_dataset_equals_the_folder(tmp_path):
    root = make_folder(tmp_path / "pets", splits=["train", "test"], per_class=4)
    archive = tmp_path / "pets.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="pets")
    from_folder = load_dataset(str(root))
    from_archive = load_dataset(f"cifar10:{archive}")
    again = load_dataset(str(archive))  # a cache hit found by the archive's hash
    for name in ("train", "test"):
        a, b = from_folder.splits[name], from_archive.splits[name]
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.gather(np.arange(len(a))), b.gather(np.arange(len(b))))
    assert again.classes == from_archive.classes == ["cat", "dog"]


def test_mixed_sizes_are_stored_at_one_size(tmp_path):
    root = tmp_path / "d"
    for i, size in enumerate([(40, 30), (50, 60), (33, 33), (80, 40)]):
        _write_image(root / ("a" if i % 2 else "b") / f"{i}.png", 100, size=size)
    dataset = load_dataset(str(root), storage_size=32)
    height, width, _ = dataset.image_shape
    assert height == width <= 32


def test_streaming_yields_the_same_batches_as_the_cache(tmp_path):
    root = make_folder(tmp_path / "d", per_class=5)
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG broken")
    streamed = load_dataset(str(root), memory_budget=1)  # larger than the budget: streamed, not cached
    cached = load_dataset(str(root))
    assert streamed.train.streaming and not cached.train.streaming
    cached_loader = BatchLoader(cached.train, 4, shuffle=False, workers=0)
    stream_loader = BatchLoader(streamed.train, 4, shuffle=False, workers=2)
    cached_images = np.concatenate([b[0].numpy() for b in cached_loader.batches()])
    streamed_images = np.concatenate([b[0].numpy() for b in stream_loader.batches()])
    np.testing.assert_array_equal(cached_images, streamed_images)
    assert stream_loader.skipped == 1  # the broken file, counted while streaming
    fresh = make_folder(
        tmp_path / "fresh", per_class=5
    )  # not in the cache: bad files are met while streaming
    (fresh / "dog" / "broken.png").write_bytes(b"\x89PNG broken")
    strict = load_dataset(str(fresh), memory_budget=1, strict=True)
    with pytest.raises(DatasetError, match=r"cannot read .*broken\.png.*strict mode"):
        list(BatchLoader(strict.train, 4, shuffle=False, workers=2).batches())


def test_csv_dataset(tmp_path):
    make_folder(tmp_path / "imgs", per_class=4)
    rows = ["path,label,split"]
    for name in ("cat", "dog"):
        for i in range(4):
            rows.append(f"imgs/{name}/{i}.png,{name},{'test' if i == 3 else 'train'}")
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    dataset = load_dataset(f"csv:{csv_path}")
    assert dataset.classes == ["cat", "dog"]
    assert len(dataset.train) == 6 and len(dataset.test) == 2


def test_csv_whose_files_are_missing_says_how_many_and_names_the_first(tmp_path, caplog):
    make_folder(tmp_path / "imgs", per_class=3)
    rows = [f"imgs/{name}/{i}.png,{name}" for name in ("cat", "dog") for i in range(3)]
    (tmp_path / "wrong.csv").write_text("\n".join(r.replace("imgs/", "images/") for r in rows) + "\n")
    with pytest.raises(DatasetError, match=r"none of the 6 image files listed in .*wrong\.csv exists "
                                           r"\(first: .*images/cat/0\.png\); paths are read relative"):  # fmt: skip
        load_dataset(f"csv:{tmp_path / 'wrong.csv'}")
    (tmp_path / "some.csv").write_text("\n".join(rows + ["imgs/dog/9.png,dog"]) + "\n")
    with caplog.at_level("WARNING", logger="convforge"):
        dataset = load_dataset(f"csv:{tmp_path / 'some.csv'}")
    assert "1 of the 7 image files listed" in caplog.text and "dog/9.png" in caplog.text
    assert len(dataset.train) == 6 and len(dataset.skipped) == 1


def test_limit_decodes_only_the_subset_and_leaves_the_full_cache_whole(tmp_path, caplog):
    root = make_folder(tmp_path / "d", classes=("a", "b", "c"), per_class=6)
    with caplog.at_level("INFO", logger="convforge"):
        limited = load_dataset(f"{root},limit=5")
    assert "decoding 5 images" in caplog.text
    assert len(limited.train) == 5 and sorted(np.bincount(limited.train.labels).tolist()) == [1, 2, 2]
    full = load_dataset(str(root))
    assert len(full.train) == 18 and full.fingerprint != limited.fingerprint
    again = load_dataset(f"{root},limit=5")
    assert np.array_equal(again.train.gather(np.arange(5)), limited.train.gather(np.arange(5)))


def test_empty_class_folder_is_reported_and_left_out(tmp_path):
    root = make_folder(tmp_path / "d", classes=("a", "b", "c"))
    for path in (root / "c").iterdir():
        path.unlink()
    dataset = load_dataset(str(root))
    assert dataset.classes == ["a", "b"]
    assert dataset.empty_classes == ["c"]


def test_single_class_is_an_error(tmp_path):
    root = make_folder(tmp_path / "d", classes=("only",))
    with pytest.raises(DatasetError, match="single class.*at least two"):
        load_dataset(str(root))


def test_missing_path_suggests_a_neighbour(tmp_path):
    make_folder(tmp_path / "flowers")
    with pytest.raises(DatasetError, match=r"flowrs does not exist.*Did you mean: flowers"):
        load_dataset(str(tmp_path / "flowrs"))


def test_folder_without_images_is_an_error(tmp_path):
    root = tmp_path / "docs"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        (root / name / "x.txt").write_text("text")
    with pytest.raises(DatasetError, match="holds no image files"):
        load_dataset(str(root))


def test_absolute_spec(tmp_path, monkeypatch):
    from convforge.data import absolute_spec

    monkeypatch.chdir(tmp_path)
    assert absolute_spec("data/imgs") == str(tmp_path / "data" / "imgs")
    assert absolute_spec("cifar10:c.tar.gz") == f"cifar10:{tmp_path / 'c.tar.gz'}"
    assert absolute_spec("shapes:size=32") == "shapes:size=32"


def test_non_image_specs(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset scheme 'imagenet'.*known"):
        load_dataset("imagenet:/data")
    with pytest.raises(DatasetError, match="Did you mean: mnist"):
        load_dataset("mnst:/data")
    text = tmp_path / "train.txt"
    text.write_text("x")
    with pytest.raises(DatasetError, match="is a file, not a dataset"):
        load_dataset(str(text))
    with pytest.raises(DatasetError, match="empty dataset spec"):
        load_dataset("")


def test_unknown_split_folder_class_is_an_error(tmp_path):
    root = make_folder(tmp_path / "d", splits=["train"])
    _write_image(root / "test" / "zebra" / "0.png", 5)
    with pytest.raises(DatasetError, match="test/zebra has no counterpart"):
        load_dataset(str(root))


def test_only_the_splits_a_caller_uses_are_decoded(tmp_path):
    root = make_folder(tmp_path / "pets", splits=["train", "test"])
    (root / "train" / "cat" / "broken.png").write_text("not a png")
    test_only = load_dataset(str(root), splits=("test",))
    assert list(test_only.splits) == ["test"] and not test_only.skipped  # train's broken file never decoded
    full = load_dataset(str(root))
    assert [s.path for s in full.skipped] == [str(root / "train" / "cat" / "broken.png")]
    np.testing.assert_array_equal(test_only.splits["test"].images, full.splits["test"].images)
    np.testing.assert_array_equal(test_only.splits["test"].labels, full.splits["test"].labels)
    assert test_only.fingerprint == full.fingerprint  # the same data, whatever was decoded of it
    # a preference order takes the first split the data has; "val" carved from train keeps train
    assert list(load_dataset(str(root), splits=("val", "test", "train")).splits) == ["test"]
    carved = load_dataset(str(root), splits=("val",), val_fraction=0.5)
    reference = load_dataset(str(root), val_fraction=0.5)
    np.testing.assert_array_equal(carved.splits["val"].labels, reference.splits["val"].labels)
    np.testing.assert_array_equal(carved.splits["val"].images, reference.splits["val"].images)
    with pytest.raises(DatasetError, match="has no 'holdout' split; it has \\['test', 'train'\\]"):
        load_dataset(str(root), splits=("holdout",))
