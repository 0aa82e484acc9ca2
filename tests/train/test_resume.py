"""A run killed with SIGKILL in the middle of an epoch and resumed ends bit-identical to one never stopped.

Training checkpoints mid-epoch every 0.1 s here, so the kill lands between two such checkpoints and
resuming continues from the step the last one recorded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from convforge.errors import RunFolderError, UserError
from convforge.tensorfile import read_tensors
from convforge.train import resume
from tests.helpers import TINY_MODEL, TINY_MODEL_KWARGS

DATA = "shapes:size=32,train=1600,val=200,test=200"
STEPS_PER_EPOCH = 1600 // 16


def _train_command(out, epochs=3):
    return [
        sys.executable,
        "-m",
        "convforge",
        "train",
        DATA,
        "--model",
        TINY_MODEL,
        "--model-arg",
        f"channels={json.dumps(TINY_MODEL_KWARGS['channels'])}",
        "--model-arg",
        f"stem_width={TINY_MODEL_KWARGS['stem_width']}",
        "--epochs",
        str(epochs),
        "--batch-size",
        "16",
        "--checkpoint-every",
        "0.1s",
        "--crop",
        "pad",
        "--ema",
        "--deterministic",
        "--out",
        str(out),
        "--quiet",
    ]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "2"}


def _wait_for_checkpoint(path, process, accept, timeout=300.0):
    """Poll the training state until its metadata satisfies `accept` (files are replaced atomically)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.is_file():
            _, metadata, _ = read_tensors(path)
            if accept(metadata):
                return metadata
        if process.poll() is not None:
            raise AssertionError(f"training exited early: {process.stderr.read()}")
        time.sleep(0.02)
    raise AssertionError("training did not reach the checkpoint in time")


def _tensors(run):
    model, _, _ = read_tensors(run / "model.safetensors")
    state, metadata, _ = read_tensors(run / "checkpoints" / "last.safetensors")
    return model, state, metadata


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path):
    reference = tmp_path / "uninterrupted"
    subprocess.run(_train_command(reference), check=True, env=_env(), capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen(_train_command(killed), env=_env(), stderr=subprocess.PIPE, text=True)
    # in the first half of epoch 2, so the epoch cannot end between this read and the kill
    in_epoch_two = lambda m: m["epoch"] == 1 and 0 < m["step"] <= STEPS_PER_EPOCH // 2  # noqa: E731
    _wait_for_checkpoint(killed / "checkpoints" / "last.safetensors", process, in_epoch_two)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    _, _, metadata = _tensors(killed)
    assert metadata["epoch"] == 1 and 0 < metadata["step"] < STEPS_PER_EPOCH  # a mid-epoch checkpoint, intact
    info = json.loads((killed / "run.json").read_text())
    assert info["status"] == "running" and info["train_seconds"] > 0

    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # this process runs another count: the resume takes the one run.json recorded
    try:
        result = resume(killed)
    finally:
        torch.set_num_threads(previous)
    assert result.epochs == 3
    ref_model, ref_state, ref_meta = _tensors(reference)
    new_model, new_state, new_meta = _tensors(killed)
    assert sorted(ref_state) == sorted(new_state)
    for name in ref_state:  # model, EMA and optimizer state, bit for bit
        assert ref_state[name].equal(new_state[name]), name
    for name in ref_model:
        assert ref_model[name].equal(new_model[name]), name
    assert ref_meta["scheduler"] == new_meta["scheduler"]
    epochs = [
        r
        for r in map(json.loads, (killed / "metrics.jsonl").read_text().splitlines())
        if r["kind"] == "epoch"
    ]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    info = json.loads((killed / "run.json").read_text())
    assert info["resumes"] == [{"epoch": 1, "step": metadata["step"]}]
    # the time trained before the kill is kept and the resumed process adds its own epochs to it
    resumed_epochs = sum(r["epoch_seconds"] for r in epochs if r["epoch"] > 1)
    assert metadata["train_seconds"] > 0
    assert info["train_seconds"] >= metadata["train_seconds"] + resumed_epochs - 0.02
    assert info["wall_seconds"] >= info["train_seconds"] - 0.02


def test_resume_errors(tmp_path, tiny_run):
    (tmp_path / "plain").mkdir()
    with pytest.raises(RunFolderError, match="not a run folder"):
        resume(tmp_path / "plain")
    with pytest.raises(UserError, match="finished all its epochs already"):
        resume(tiny_run.run.path)
