"""Names read from archives, folders, CSVs and shard manifests stay inside where they belong: a member
named `/abs/x.png` or `../x.png` is refused, counted and named (never written or read, never a class);
a symbolic-link loop is walked once; a relative CSV reads its images; a manifest's shard names, sample
counts and digests are checked; labels without a manifest must be 0..N-1."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convforge.data import load_dataset
from convforge.data.members import safe_member_name
from convforge.data.shard_writer import write_shards
from convforge.errors import DatasetError

pytestmark = pytest.mark.xdist_group("untrusted_names")  # its module fixtures are built once, on one worker


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _hostile_archive(path: Path, outside: Path) -> Path:
    """train/{cat,dog}/i.png, plus members whose names point outside the archive."""
    with tarfile.open(path, "w") as tar:
        members = [(f"pets/train/{c}/{i}.png", _png(20 * i + 100 * n)) for n, c in enumerate(("cat", "dog"))
                   for i in range(4)]  # fmt: skip
        members += [(str(outside / "abs.png"), _png(1)), ("pets/train/../../up.png", _png(2)),
                    ("C:/drive.png", _png(3))]  # fmt: skip
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize(("name", "kept"), [
    ("a/b.png", "a/b.png"), ("./a//b.png", "a/b.png"), ("/etc/x.png", None), ("../x.png", None),
    ("a/../../x.png", None), ("C:/x.png", None), ("a\\..\\x.png", None), ("x\x00.png", None), ("", None),
])  # fmt: skip
def test_a_member_name_is_kept_only_as_a_relative_path_inside(name, kept):
    assert safe_member_name(name) == kept


def test_members_named_outside_the_archive_are_refused_counted_and_never_written(tmp_path, monkeypatch):
    outside = tmp_path / "outside"
    archive = _hostile_archive(tmp_path / "pets.tar", outside)
    dataset = load_dataset(str(archive))
    assert dataset.classes == ["cat", "dog"] and len(dataset.train) == 8  # no class called '/' or '..'
    refused = [s for s in dataset.skipped if s.reason.startswith("refused")]
    assert len(refused) == 3 and any(str(outside / "abs.png") in s.path for s in refused)

    from convforge.data import shard_writer

    monkeypatch.setattr(shard_writer, "default_memory_budget", lambda: 0)  # the archive spills to disk
    summary = write_shards(str(archive), tmp_path / "shards", shard_size=10**6)
    assert summary.splits["train"]["samples"] == 8 and len(summary.skipped) == 3
    assert not outside.exists() and not (tmp_path / "up.png").exists()
    assert not [p for p in tmp_path.rglob("*") if p.name in ("abs.png", "up.png", "drive.png")]  # nowhere at all
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["skipped"] == 3 and manifest["skipped_files"][0]["reason"].startswith("refused")


def test_a_symbolic_link_loop_is_walked_once(tmp_path):
    root = tmp_path / "d"
    for c in ("circle", "square"):
        (root / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.full((8, 8, 3), 30 * i, dtype=np.uint8)).save(root / c / f"{i}.png")
    os.symlink("..", root / "circle" / "loop")  # loops in both class folders once hung the listing
    os.symlink("..", root / "square" / "loop")
    dataset = load_dataset(str(root))
    assert len(dataset.train) == 12 and dataset.train.class_counts().tolist() == [6, 6]
    assert sum("not followed" in s.reason for s in dataset.skipped) == 2


def test_a_csv_named_by_a_relative_path_reads_its_images(tmp_path, monkeypatch):
    for n, c in enumerate(("cat", "dog")):
        (tmp_path / "data" / "img").mkdir(parents=True, exist_ok=True)
        for i in range(3):
            (tmp_path / "data" / "img" / f"{c}{i}.png").write_bytes(_png(40 * i + 120 * n))
    rows = [f"img/{c}{i}.png,{c}" for c in ("cat", "dog") for i in range(3)]
    (tmp_path / "data" / "list.csv").write_text("\n".join(rows) + "\n")
    monkeypatch.chdir(tmp_path)
    relative = load_dataset("csv:data/list.csv")  # joined the folder twice: 0 of 6 images, top-1 0.00%
    assert len(relative.train) == 6 and not relative.skipped
    assert len(load_dataset(f"csv:{tmp_path / 'data' / 'list.csv'}").train) == 6


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("m") / "shards"
    write_shards("shapes:size=16,train=40,val=0,test=0", out, shard_size=20_000)
    return out


def _edited(written: Path, to: Path, edit) -> Path:
    shutil.copytree(written, to)
    manifest = json.loads((to / "manifest.json").read_text())
    edit(manifest)
    (to / "manifest.json").write_text(json.dumps(manifest))
    return to


@pytest.mark.parametrize(("field", "edit"), [
    ("name", lambda m: m["splits"]["train"]["shards"][0].update(name="../../elsewhere.tar")),
    ("name", lambda m: m["splits"]["train"]["shards"][0].update(name="/etc/passwd")),
    ("samples", lambda m: m["splits"]["train"]["shards"][0].update(samples=10**15)),
    ("samples", lambda m: m["splits"]["train"]["shards"][0].update(samples="7")),
    ("sha256", lambda m: m["splits"]["train"]["shards"][0].update(sha256=["x"])),
    ("classes", lambda m: m.update(classes="circle")),
])  # fmt: skip
def test_a_manifest_field_that_is_wrong_is_refused_by_name(written, tmp_path, field, edit):
    copy = _edited(written, tmp_path / "copy", edit)
    with pytest.raises(DatasetError, match=rf"manifest\.json: .*{field}"):
        load_dataset(f"wds:{copy}")


def test_a_shard_changed_after_writing_is_left_out_and_counted(written, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(written, copy)
    shard = copy / "train" / "shard-000000.tar"
    samples = json.loads((copy / "manifest.json").read_text())["splits"]["train"]["shards"][0]["samples"]
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w") as tar:  # every label flipped, the tar as sound as before
        for member, data in members:
            data = str(1 - int(data)).encode() if member.name.endswith(".cls") else data
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    dataset = load_dataset(f"wds:{copy}")
    changed = [s for s in dataset.skipped if "changed after" in s.reason]
    assert len(changed) == samples and len(dataset.train) == 40 - samples


def _raw_shard(path: Path, samples: list[tuple[str, int]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, label in samples:
            for ext, data in (("png", _png(label % 5 * 50)), ("cls", str(label).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_labels_without_a_manifest_must_count_from_zero_without_gaps(tmp_path):
    _raw_shard(tmp_path / "a.tar", [(f"{i:04d}", i % 2) for i in range(10)] + [("stray", 5000)])
    with pytest.raises(DatasetError, match=r"not 0 to N-1 without gaps \(found 3 distinct: 0, 1, 5000\)"):
        load_dataset(f"wds:{tmp_path}/a.tar")
    _raw_shard(tmp_path / "b.tar", [(f"{i:04d}", i % 2) for i in range(10)] + [("/abs/x", 1)])
    dataset = load_dataset(f"wds:{tmp_path}/b.tar")  # a member named outside: refused, not a key
    assert dataset.classes == ["0", "1"] and len(dataset.train) == 10
    assert sum(s.reason.startswith("refused") for s in dataset.skipped) == 2  # its image and its label
