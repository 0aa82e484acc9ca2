"""WebDataset shards (`convforge shard`, `wds:` specs): the shards hold the source's images exactly,
webdataset reads the same samples from them, an epoch's rank shares cover every sample once, the
bad inputs (a pattern matching nothing, a corrupt or missing member, a damaged tar) are counted or
refused with a message, and 2 processes train one epoch from CIFAR-10 shards seeing each image once."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from convforge.data import load_dataset
from convforge.data.loader import BatchLoader
from convforge.data.shard_writer import write_shards
from convforge.data.shards import buffer_shuffle
from convforge.errors import DatasetError
from tests.helpers import TINY_MODEL, TINY_MODEL_KWARGS

pytestmark = pytest.mark.xdist_group("shards")  # its module fixtures are built once, on one worker

SHAPES = "shapes:size=24,train=240,val=0,test=40"
TINY = ["--model", TINY_MODEL, "--model-arg", f"channels={json.dumps(TINY_MODEL_KWARGS['channels'])}",
        "--model-arg", f"stem_width={TINY_MODEL_KWARGS['stem_width']}"]


@pytest.fixture(scope="module")
def shapes_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "shapes"
    summary = write_shards(SHAPES, out, shard_size=60_000)
    return out, summary


def _digests(images: np.ndarray) -> list[str]:
    return sorted(hashlib.sha256(image.tobytes()).hexdigest() for image in images)


def test_shards_hold_every_image_of_the_source_exactly(shapes_shards):
    out, summary = shapes_shards
    assert summary.splits["train"]["samples"] == 240 and summary.splits["train"]["shards"] > 2
    sizes = [path.stat().st_size for path in sorted(out.glob("train/*.tar"))]
    # a shard closes at the first sample past the size; tar pads to 10 KiB records
    assert all(60_000 <= size < 60_000 + 20_480 for size in sizes[:-1]) and sizes[-1] < 60_000 + 20_480
    source, shards = load_dataset(SHAPES), load_dataset(f"wds:{out}")
    assert shards.classes == source.classes and shards.image_shape == source.image_shape
    for split in ("train", "test"):
        loaded = BatchLoader(shards.splits[split], 64, shuffle=False, workers=0)
        images = np.concatenate([b[0].numpy() for b in loaded.batches()])
        labels = np.concatenate([b[1].numpy() for b in loaded.batches()])
        assert _digests(images) == _digests(source.splits[split].gather(np.arange(len(source.splits[split]))))
        assert np.bincount(labels).tolist() == source.splits[split].class_counts().tolist()
    manifest = json.loads((out / "manifest.json").read_text())
    first = manifest["splits"]["train"]["shards"][0]
    assert hashlib.sha256((out / first["name"]).read_bytes()).hexdigest() == first["sha256"]


def test_webdataset_reads_the_same_samples(shapes_shards):
    webdataset = pytest.importorskip("webdataset")
    out, _ = shapes_shards
    count = len(list(out.glob("train/*.tar")))
    pattern = f"{out}/train/shard-{{000000..{count - 1:06d}}}.tar"
    ours = load_dataset(f"wds:{pattern}").train
    theirs = list(webdataset.WebDataset(pattern, shardshuffle=False, empty_check=False))
    assert len(theirs) == len(ours) == 240
    assert [int(s["cls"]) for s in theirs] == ours.labels.tolist()
    assert all(s["png"] == ours.storage.raw(i) for i, s in enumerate(theirs))


def test_shards_of_digits_are_not_mirrored(tmp_path):
    from convforge.data.spec import mirror_invariant

    digits = tmp_path / "idx"
    digits.mkdir()
    write_shards("shapes:size=16,train=20,val=0,test=0", tmp_path / "s", shard_size=10_000)
    assert mirror_invariant(f"wds:{tmp_path / 's'}") and mirror_invariant(f"wds:{tmp_path}/nothing-{{0..1}}.tar")
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    (tmp_path / "s" / "manifest.json").write_text(json.dumps({**manifest, "source": f"mnist:{digits}"}))
    assert not mirror_invariant(f"wds:{tmp_path / 's'}")
    assert not mirror_invariant(f"wds:{tmp_path / 's'}/train/shard-{{000000..000001}}.tar")


def test_a_pattern_inside_a_shard_folder_finds_its_split_and_classes(shapes_shards):
    out, _ = shapes_shards
    dataset = load_dataset(f"wds:{out}/test/shard-{{000000..000000}}.tar")
    assert list(dataset.splits) == ["test"] and dataset.classes == load_dataset(SHAPES).classes


def test_rank_shares_of_an_epoch_cover_every_sample_once(shapes_shards):
    out, _ = shapes_shards
    train = load_dataset(f"wds:{out}").train
    shares = [BatchLoader(train, 16, shuffle=True, rank=r, world_size=2).order(7, r, 2) for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == 120
    assert sorted(np.concatenate(shares).tolist()) == list(range(240))
    again = BatchLoader(train, 16, shuffle=True).order(7, 0, 2)
    assert again.tolist() == shares[0].tolist()  # the same seed, the same stream
    assert BatchLoader(train, 16, shuffle=True).order(8, 0, 1).tolist() != sorted(np.concatenate(shares).tolist())


def test_buffer_shuffle_is_a_permutation_that_moves_items_within_about_the_buffer():
    stream = np.arange(5000)
    out = buffer_shuffle(stream, 100, np.random.default_rng(0))
    assert sorted(out.tolist()) == stream.tolist() and out.tolist() != stream.tolist()
    assert np.median(np.abs(out[:4000] - np.arange(4000))) < 200  # local: reads stay near the stream position


def _copy_shards(src: Path, dst: Path) -> Path:
    dst.mkdir()
    (dst / "train").mkdir()
    for path in sorted(src.glob("train/*.tar"))[:2]:
        (dst / "train" / path.name).write_bytes(path.read_bytes())
    return dst


def _rewrite_tar(path: Path, change) -> None:
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w") as tar:
        for member, data in change(members):
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


def test_a_corrupt_image_and_a_missing_label_are_skipped_and_counted(shapes_shards, tmp_path):
    out, _ = shapes_shards
    copy = _copy_shards(out, tmp_path / "copy")
    first = copy / "train" / "shard-000000.tar"

    def damage(members):
        keys = sorted({m.name.split(".")[0] for m, _ in members})
        for member, data in members:
            if member.name == f"{keys[0]}.cls":  # the first sample's label: gone
                continue
            yield member, (b"not a png" if member.name == f"{keys[1]}.png" else data)  # the second's image: garbage

    _rewrite_tar(first, damage)
    dataset = load_dataset(f"wds:{copy}/train/shard-{{000000..000001}}.tar")
    assert [s.reason for s in dataset.skipped] == ["no .cls member with the class index"]
    loader = BatchLoader(dataset.train, 8, shuffle=True, workers=0)
    seen = sum(len(b[1]) for b in loader.batches(seed=1))
    assert loader.skipped == 1 and seen == len(dataset.train) - 1


def test_a_damaged_tar_loses_its_tail_and_says_how_many_samples(shapes_shards, tmp_path):
    out, _ = shapes_shards
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shard = copy / "train" / "shard-000001.tar"
    data = bytearray(shard.read_bytes())
    expected = json.loads((copy / "manifest.json").read_text())["splits"]["train"]["shards"][1]["samples"]
    with tarfile.open(shard) as tar:
        header = tar.getmembers()[6].offset  # the fourth sample's first member
    data[header : header + 512] = b"\x17" * 512  # a damaged header in the middle: tarfile stops there
    shard.write_bytes(bytes(data))
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["splits"]["train"]["shards"][1]["sha256"]  # with it, the whole shard is left out (next test)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    dataset = load_dataset(f"wds:{copy}")
    lost = [s for s in dataset.skipped if str(shard) in s.path]
    assert lost and "damaged tar header" in lost[0].reason
    assert len(dataset.train) + len(dataset.skipped) == 240  # every sample of the manifest is read or counted
    assert f"{len(lost)} of its {expected} samples are lost" in lost[0].reason


def test_bad_specs_are_refused_with_what_to_do(shapes_shards, tmp_path):
    out, _ = shapes_shards
    with pytest.raises(DatasetError, match="matches no file"):
        load_dataset(f"wds:{tmp_path}/shard-{{000000..000009}}.tar")
    present = len(list(out.glob("test/*.tar")))
    with pytest.raises(DatasetError, match=f"{10 - present} of the 10 shards the pattern .* do not exist"):
        load_dataset(f"wds:{out}/test/shard-{{000000..000009}}.tar")
    with pytest.raises(DatasetError, match="has no manifest.json"):
        load_dataset(f"wds:{tmp_path}")
    with pytest.raises(DatasetError, match="already exists"):
        write_shards(SHAPES, out)


def test_a_failed_write_leaves_no_folder(tmp_path, monkeypatch):
    from convforge.data import shard_writer

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(shard_writer, "_describe_split", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        write_shards(SHAPES, tmp_path / "out", shard_size=60_000)
    assert os.listdir(tmp_path) == []  # neither OUT nor a partial folder


def test_the_cli_writes_shards_and_refuses_a_bad_size(tmp_path):
    from typer.testing import CliRunner

    from convforge.cli.app import app

    runner = CliRunner()
    small = "shapes:size=16,train=30,val=0,test=0"
    done = runner.invoke(app, ["shard", small, str(tmp_path / "s"), "--shard-size", "8KiB"])
    assert done.exit_code == 0, done.output
    assert "train: 30 samples in" in done.output and (tmp_path / "s" / "manifest.json").is_file()
    done = runner.invoke(app, ["shard", "shapes", str(tmp_path / "t"), "--shard-size", "lots"])
    assert done.exit_code == 2 and "--shard-size takes a size such as 1GB" in done.output


# A launcher that records the positions every rank's training batches hold, then runs the CLI.
RECORDING_LAUNCHER = """
import os, sys, numpy as np
from convforge.data import loader

seen, batches = [], loader.BatchLoader.batches
def recorded(self, seed=None, start=0):
    for batch in batches(self, seed, start):
        if self.shuffle:
            seen.append(batch[2].numpy().copy())
        yield batch
loader.BatchLoader.batches = recorded
from convforge.cli import main
sys.argv = ["convforge", *sys.argv[1:]]
try:
    main()
finally:
    if seen:
        np.save(os.path.join(os.environ["SEEN_DIR"], f"rank{os.environ['RANK']}.npy"), np.concatenate(seen))
"""


def test_two_processes_train_one_epoch_from_cifar10_shards_seeing_each_image_once(shared_datasets, tmp_path):
    archive = shared_datasets / "cifar10-jpg" / "cifar10-jpg.tar.gz"
    shards = tmp_path / "cifar-shards"
    summary = write_shards(f"cifar10:{archive},limit=1000", shards, shard_size=600_000)
    assert summary.splits["train"]["samples"] == 1000 and summary.splits["train"]["shards"] >= 4
    launcher = tmp_path / "launch.py"
    launcher.write_text(RECORDING_LAUNCHER)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(launcher),
               "train", f"wds:{shards}", *TINY, "--epochs", "1",
               "--batch-size", "50", "--val-fraction", "0", "--out", str(tmp_path / "run"), "--quiet"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SEEN_DIR": str(tmp_path)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = [np.load(tmp_path / f"rank{r}.npy") for r in range(2)]
    assert len(seen[0]) == len(seen[1]) == 500
    assert sorted(np.concatenate(seen).tolist()) == list(range(1000))  # every training image exactly once
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["status"] == "finished" and run["distributed"]["processes"] == 2
    assert run["data"]["spec"].startswith("wds:")
