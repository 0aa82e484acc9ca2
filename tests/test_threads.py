"""Threads: one per core that other work leaves free unless told otherwise, every command that computes
takes --threads, and a run records what it was computed with."""

import json
import subprocess
import sys
import time

import pytest

from tests.helpers import TINY_MODEL, TINY_SHAPES, invoke


def test_the_automatic_count_leaves_out_the_cores_other_work_holds():
    from convforge import threads

    cores = threads.available_cores()
    assert threads.available_threads() >= 1
    if len(cores) < 2:
        pytest.skip("one core: nothing to leave out")
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(len(cores))]
    try:
        time.sleep(0.5)
        busy = threads.busy_elsewhere(cores, seconds=0.5)
        assert busy is not None and busy > 0.5 * len(cores)  # the loops hold most of every core
        assert threads.available_threads() < len(cores)
        assert threads.threads_report()["busy_elsewhere"] > 0.5
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


def test_the_sampling_window_overlaps_the_commands_start_up(monkeypatch):
    """A command takes the window's first reading when it starts: by the time it chooses its threads
    (after importing torch and loading its model), no more waiting is needed; without that reading the
    whole window is waited for."""
    from convforge import threads

    if threads._ticks(threads.available_cores()) is None:
        pytest.skip("no /proc/stat here")
    waits = []
    real_sleep = time.sleep
    threads.start_sampling()
    real_sleep(threads.SAMPLE_SECONDS + 0.05)  # the command's start-up
    monkeypatch.setattr(threads.time, "sleep", waits.append)
    threads.available_threads()
    threads.available_threads()  # the first reading was used up: this one samples afresh
    assert waits[0] == 0.0 and waits[1] == pytest.approx(threads.SAMPLE_SECONDS, abs=0.01)


def test_omp_num_threads_and_a_given_count_win(monkeypatch):
    import torch

    from convforge.threads import set_threads, threads_kept

    with threads_kept():
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert set_threads(None) == 1  # torchrun's share per process is left alone
        with pytest.raises(ValueError, match="--threads must be at least 1"):
            set_threads(0)


@pytest.mark.parametrize("command", ["train", "eval", "predict", "explain", "robust", "prune", "bench", "demo",
                                     "export", "quantize", "serve"])  # fmt: skip
def test_every_command_that_computes_takes_threads(command):
    assert "--threads" in invoke(command, "--help").output


def test_a_training_run_records_its_threads_and_a_bad_count_is_refused(tmp_path):
    import torch

    before = torch.get_num_threads()
    out = tmp_path / "one-thread"
    done = invoke("train", TINY_SHAPES.replace("train=3000", "train=64"), "--model", TINY_MODEL, "--epochs", "1",
                  "--batch-size", "32", "--threads", "1", "--out", out, "-q")  # fmt: skip
    assert done.exit_code == 0, done.output
    info = json.loads((out / "run.json").read_text())
    assert info["config"]["threads"] == 1 and info["threads"]["threads"] == 1
    assert info["threads"]["chosen"] == "given or inherited"
    assert torch.get_num_threads() == before  # the command restored the caller's count
    refused = invoke("train", TINY_SHAPES, "--model", TINY_MODEL, "--threads", "0", "--out", tmp_path / "none")
    assert refused.exit_code == 2 and "--threads" in refused.output and not (tmp_path / "none").exists()
