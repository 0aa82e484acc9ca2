"""idx (MNIST) and CIFAR-10 python batches, including the shared real copies when present."""

from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np
import pytest

from convforge.data import load_dataset
from convforge.errors import DatasetError


def _idx(array: np.ndarray) -> bytes:
    return (
        struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
        + struct.pack(f">{array.ndim}I", *array.shape)
        + array.tobytes()
    )


def write_mnist(folder, n_train=20, n_test=10, compress=True):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    data = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        for kind, array, dims in (("images", images, 3), ("labels", labels, 1)):
            name = f"{prefix}-{kind}-idx{dims}-ubyte"
            raw = _idx(array)
            if compress:
                (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
            else:
                (folder / name).write_bytes(raw)
        data[prefix] = (images, labels)
    return data


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_idx_files(tmp_path, compress):
    written = write_mnist(tmp_path / "mnist", compress=compress)
    dataset = load_dataset(f"mnist:{tmp_path / 'mnist'}")
    assert dataset.channels == 1 and dataset.classes == [str(i) for i in range(10)]
    np.testing.assert_array_equal(dataset.train.gather(np.arange(20))[..., 0], written["train"][0])
    np.testing.assert_array_equal(dataset.test.labels, written["t10k"][1])


def test_truncated_idx_file_is_named(tmp_path):
    write_mnist(tmp_path / "m", compress=False)
    path = tmp_path / "m" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte is truncated"):
        load_dataset(f"fashion-mnist:{tmp_path / 'm'}")


def test_missing_idx_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no train images idx file"):
        load_dataset(f"mnist:{tmp_path / 'empty'}")


def write_cifar_batches(folder):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 255, (4, 3072), dtype=np.uint8)
        batch = {b"data": data, b"labels": [0, 1, 2, 3]}
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle, protocol=2)
        batches[name] = data
    return batches


def test_cifar_python_batches(tmp_path):
    batches = write_cifar_batches(tmp_path / "cifar-10-batches-py")
    dataset = load_dataset(f"cifar10:{tmp_path}")
    assert len(dataset.train) == 20 and len(dataset.test) == 4
    first = dataset.train.gather(np.array([0]))[0]
    np.testing.assert_array_equal(first, batches["data_batch_1"][0].reshape(3, 32, 32).transpose(1, 2, 0))


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_cifar_batch_that_would_run_code_is_refused(tmp_path):
    write_cifar_batches(tmp_path / "c")
    with open(tmp_path / "c" / "data_batch_3", "wb") as handle:
        pickle.dump({b"data": _Exploit(), b"labels": []}, handle, protocol=2)
    with pytest.raises(DatasetError, match=r"data_batch_3 is not a CIFAR-10 python batch.*refusing to load"):
        load_dataset(f"cifar10:{tmp_path / 'c'}")


def test_real_fashion_mnist(shared_datasets):
    dataset = load_dataset(f"fashion-mnist:{shared_datasets / 'fashion-mnist'}")
    assert len(dataset.train) == 60_000 and len(dataset.test) == 10_000
    assert dataset.image_shape == (28, 28, 1)
    assert np.bincount(dataset.test.labels).tolist() == [1000] * 10


def test_real_cifar10_jpeg_archive(shared_datasets):
    dataset = load_dataset(f"cifar10:{shared_datasets / 'cifar10-jpg' / 'cifar10-jpg.tar.gz'}")
    assert dataset.classes[:3] == ["airplane", "automobile", "bird"]
    assert len(dataset.train) == 50_000 and len(dataset.test) == 10_000
    assert dataset.image_shape == (32, 32, 3) and not dataset.skipped


def test_limit_takes_a_stratified_subset_of_every_split_the_same_each_time(shared_datasets):
    from convforge.data import absolute_spec

    spec = f"fashion-mnist:{shared_datasets / 'fashion-mnist'},limit=500"
    dataset = load_dataset(spec, val_fraction=0.1)
    assert (len(dataset.train), len(dataset.val), len(dataset.test)) == (450, 50, 500)
    assert np.bincount(dataset.test.labels).tolist() == [50] * 10  # stratified: every class its share
    assert np.bincount(dataset.train.labels).tolist() == [45] * 10
    again = load_dataset(spec, val_fraction=0.1, seed=7)  # the subset does not follow the run's seed
    assert np.array_equal(again.test.indices, dataset.test.indices)
    full = load_dataset(f"fashion-mnist:{shared_datasets / 'fashion-mnist'}")
    assert dataset.fingerprint != full.fingerprint and dataset.spec == spec
    assert np.array_equal(dataset.test.gather([0, 1]), full.test.gather(dataset.test.indices[:2]))
    assert absolute_spec(spec) == f"fashion-mnist:{(shared_datasets / 'fashion-mnist').resolve()},limit=500"
    assert absolute_spec("shapes:size=32,limit=9") == "shapes:size=32,limit=9"


def test_limit_keeps_class_shares_and_checks_its_value():
    from convforge.data.subsets import split_limit

    dataset = load_dataset("shapes:size=16,train=300,val=0,test=0,classes=3,limit=31")
    counts = np.bincount(dataset.train.labels)
    assert counts.sum() == 31 and counts.max() - counts.min() <= 1
    assert split_limit("shapes:limit=5") == ("shapes", 5) and split_limit("/data/a,b") == ("/data/a,b", None)
    with pytest.raises(DatasetError, match="limit takes a whole number"):
        load_dataset("shapes:size=16,limit=0")
