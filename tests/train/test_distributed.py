"""Training on several processes (DDP over gloo, launched by torchrun's own launcher through --nproc):
the ranks' shares interleave into the single-process batches; two processes with per-rank batch B/2
follow one process with batch B; their reduced evaluation is the single-process one; a rank killed
mid-run is named and the run resumes on another number of processes; and the bad inputs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from convforge.checkpoint import load_model
from convforge.data import load_dataset
from convforge.data.loader import BatchLoader
from convforge.tensorfile import read_tensors
from convforge.train.evaluate import evaluate
from tests.helpers import TINY_MODEL, TINY_MODEL_KWARGS

DATA = "shapes:size=32,train=1600,val=200,test=200"
# GroupNorm: nothing depends on how a batch is split, so the two runs differ by float summation order only
EXACT_MODEL = ["--model", TINY_MODEL, "--model-arg", f"channels={json.dumps(TINY_MODEL_KWARGS['channels'])}",
               "--model-arg", f"stem_width={TINY_MODEL_KWARGS['stem_width']}", "--model-arg", "norm_layer=groupnorm1"]
NO_RANDOM_DRAWS = ["--crop", "none", "--no-hflip", "--deterministic", "--lr", "4e-3", "--quiet"]


def _train(*args, env=None, check=True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    command = [sys.executable, "-m", "convforge", "train", *map(str, args)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def _records(run, kind):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def test_rank_shares_interleave_into_the_single_process_batches():
    train = load_dataset("shapes:size=16,train=203,val=0,test=10").train
    single = BatchLoader(train, 8, shuffle=True, drop_last=True)
    ranks = [BatchLoader(train, 4, shuffle=True, drop_last=True, rank=r, world_size=2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 203 // 2 // 4 == 25  # as many steps on every rank
    whole = [set(positions.tolist()) for _, _, positions in single.batches(seed=5)]
    shares = [[set(p.tolist()) for _, _, p in loader.batches(seed=5)] for loader in ranks]
    for step, (a, b) in enumerate(zip(*shares, strict=True)):
        assert not a & b and a | b == whole[step]  # batch i of the two ranks is batch i of one process
    seen = np.concatenate([np.fromiter(s, int) for share in shares for s in share])
    assert len(seen) == len(set(seen.tolist())) == 200  # each image at most once; 3 left over by full batches


def test_two_processes_follow_one_process_with_the_global_batch(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _train(DATA, *EXACT_MODEL, *NO_RANDOM_DRAWS, "--epochs", 2, "--batch-size", 32, "--out", one)
    _train(DATA, *EXACT_MODEL, *NO_RANDOM_DRAWS, "--epochs", 2, "--batch-size", 16, "--nproc", 2, "--out", two)
    info = json.loads((two / "run.json").read_text())
    assert info["status"] == "finished"
    assert info["distributed"] == {"processes": 2, "backend": "gloo", "batch_per_process": 16, "global_batch": 32,
                                   "lr": 4e-3, "scale_lr": False, "sync_bn": False}  # fmt: skip
    for a, b in zip(_records(one, "epoch"), _records(two, "epoch"), strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=5e-4)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=5e-4)
    curve_one, curve_two = _records(one, "step"), _records(two, "step")
    assert [r["step"] for r in curve_one] == [r["step"] for r in curve_two]  # the same steps per epoch
    assert _records(two, "eval")[0]["images"] == 200  # the test split, evaluated across the ranks


def _evaluate_as_rank(rank: int, run: str, data: str, store: str, out: str) -> None:
    import torch
    import torch.distributed as dist

    from convforge.train.distributed import World, broadcast_state

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)

    def no_pickles(*args, **kwargs):
        raise AssertionError("ranks exchange results as tensors: an object gather unpickles what others send")

    dist.all_gather_object = dist.broadcast_object_list = dist.gather_object = no_pickles
    model, spec = load_model(run)
    if rank:  # as in the engine's final evaluation: rank 1's own (here: scrambled) channels_last copy gets rank 0's
        model.to(memory_format=torch.channels_last)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.normal_()
    broadcast_state(World(rank, 2, rank), model)
    result = evaluate(model, load_dataset(data).test, spec.preprocessing, batch_size=64, world=World(rank, 2, rank))
    Path(out, f"rank{rank}.json").write_text(json.dumps(result.to_dict()))
    dist.destroy_process_group()


def test_an_evaluation_split_across_ranks_is_the_single_process_one(tiny_run, tmp_path):
    """Each rank evaluates every other image; the gathered figures are those of one process on the whole split
    (rank 1 with rank 0's weights broadcast into its channels_last model), exchanged without pickles."""
    import torch.multiprocessing as mp

    from tests.helpers import TINY_SHAPES

    model, spec = load_model(tiny_run.run.path)
    alone = evaluate(model, load_dataset(TINY_SHAPES).test, spec.preprocessing, batch_size=64)
    mp.spawn(_evaluate_as_rank, args=(str(tiny_run.run.path), TINY_SHAPES, str(tmp_path / "store"), str(tmp_path)),
             nprocs=2)  # fmt: skip
    for rank in range(2):
        gathered = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert gathered["images"] == alone.images == 300 and gathered["top1"] == alone.top1 > 0.5  # chance: 0.1
        assert gathered["confusion"] == alone.confusion and gathered["per_class"] == alone.per_class
        assert gathered["loss"] == pytest.approx(alone.loss, rel=1e-5)
        assert gathered["calibration"]["ece"] == pytest.approx(alone.calibration["ece"], rel=1e-4)


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found += [int(entry), *_children(int(entry))]
    return found


def _rank_pid(launcher: int, rank: int) -> int | None:
    for pid in _children(launcher):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and b"LOCAL_RANK=" + str(rank).encode() in environ:
            return pid
    return None


def test_a_rank_killed_mid_run_is_named_and_the_run_resumes_on_one_process(tmp_path):
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "convforge", "train", DATA, *EXACT_MODEL, *NO_RANDOM_DRAWS, "--epochs", "3",
               "--batch-size", "16", "--nproc", "2", "--out", str(out)]  # fmt: skip
    launcher = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE, text=True)
    checkpoint, deadline = out / "checkpoints" / "last.safetensors", time.time() + 300
    while not (checkpoint.is_file() and read_tensors(checkpoint)[1]["epoch"] == 1):
        assert launcher.poll() is None and time.time() < deadline, "training ended before its first epoch"
        time.sleep(0.05)
    victim = _rank_pid(launcher.pid, 1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    _, stderr = launcher.communicate(timeout=120)
    assert launcher.returncode == 1
    assert "rank 1 was killed by SIGKILL" in stderr and "--resume RUN" in stderr, stderr[-2000:]
    assert read_tensors(checkpoint)[1]["epoch"] >= 1  # the last good checkpoint stays

    _train("--resume", out)  # on one process now
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "finished" and info["resumes"][0]["epoch"] >= 1
    assert [r["epoch"] for r in _records(out, "epoch")] == [1, 2, 3]
    assert "distributed" in info  # recorded when it ran on two


def test_two_nodes_on_one_machine_write_one_run_folder(tmp_path):
    """Two torchrun launchers, --nnodes 2 with one process each, meet at a c10d rendezvous on 127.0.0.1."""
    out, port = tmp_path / "two-nodes", _free_port()
    launchers = []
    for node in range(2):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node),
                   "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
                   "--rdzv-id", "convforge-test", "--rdzv-conf", "join_timeout=120", "-m", "convforge", "train", DATA,
                   *EXACT_MODEL, *NO_RANDOM_DRAWS, "--epochs", "1", "--batch-size", "16",
                   "--out", str(out)]  # fmt: skip
        log = (tmp_path / f"node{node}.log").open("w")  # a file, not a pipe: neither launcher can block on it
        launchers.append((subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=log,
                                           stderr=subprocess.STDOUT), log))  # fmt: skip
    for node, (launcher, log) in enumerate(launchers):
        launcher.wait(timeout=300)
        log.close()
        assert launcher.returncode == 0, (tmp_path / f"node{node}.log").read_text()[-3000:]
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "finished" and info["distributed"]["processes"] == 2
    assert len(_records(out, "epoch")) == 1 and load_model(out)[0] is not None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_bad_inputs_are_one_message(tmp_path):
    nothing = _train(DATA, "--nproc", 0, "--out", tmp_path / "zero", check=False)
    assert nothing.returncode == 2 and "--nproc is a number of processes, at least 1; got 0" in nothing.stderr
    # a rendezvous that never forms: rank 0 of 2 alone, told to wait 3 s
    env = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port())}  # fmt: skip
    started = time.time()
    alone = _train(DATA, "--dist-timeout", 3, "--out", tmp_path / "alone", env=env, check=False)
    assert alone.returncode == 2 and time.time() - started < 120
    assert "rank 0 of 2 could not join the other processes within 3 s" in alone.stderr, alone.stderr[-2000:]
    assert not (tmp_path / "alone").exists()
    sync = _train(DATA, "--nproc", 2, "--sync-bn", "--epochs", 1, "--out", tmp_path / "sync", check=False)
    assert sync.returncode == 2 and "--sync-bn needs GPUs" in sync.stderr and not (tmp_path / "sync").exists()


def test_one_machine_rendezvous_keeps_to_loopback_and_holds_no_pickles(monkeypatch):
    """--nproc's launcher: a static rendezvous on 127.0.0.1 (torchrun --standalone's c10d rendezvous keeps
    pickled state in a store every interface can reach) and gloo's transport on the loopback device."""
    import torch.distributed.run as torchrun

    from convforge.train import distributed

    seen = {}
    monkeypatch.setattr(torchrun, "run", lambda args: seen.update(vars(args)))
    for name in ("GLOO_SOCKET_IFNAME", "OMP_NUM_THREADS"):  # launch sets them for its processes: restored after
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    distributed.launch(2, ["train", "shapes"])
    assert seen["rdzv_backend"] == "static" and seen["master_addr"] == "127.0.0.1" and not seen["standalone"]
    assert seen["nproc_per_node"] == "2" and seen["training_script"] == "convforge"
    if "lo" in [name for _, name in socket.if_nameindex()]:
        assert os.environ["GLOO_SOCKET_IFNAME"] == "lo"


def test_a_distributed_run_killed_before_its_first_checkpoint_resumes_on_all_its_ranks(tmp_path):
    """With no checkpoint a resume starts the run afresh; on two processes each rank once started it alone
    (as a single process, without joining the others). It must join: run.json says two processes."""
    out = tmp_path / "early"
    command = [sys.executable, "-m", "convforge", "train", DATA, *EXACT_MODEL, *NO_RANDOM_DRAWS, "--epochs", "2",
               "--batch-size", "8", "--nproc", "2", "--out", str(out)]  # fmt: skip
    launcher = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / "run.json").is_file() or "data" not in json.loads((out / "run.json").read_text()):
        assert launcher.poll() is None and time.time() < deadline, "training ended before it started"
        time.sleep(0.05)  # the run is set up and its first epoch under way: no checkpoint yet
    victim = _rank_pid(launcher.pid, 1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    launcher.communicate(timeout=120)
    assert launcher.returncode == 1 and not (out / "checkpoints" / "last.safetensors").exists()

    _train("--resume", out, "--nproc", "2")
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "finished" and info["distributed"]["processes"] == 2
    assert [r["epoch"] for r in _records(out, "epoch")] == [1, 2]
