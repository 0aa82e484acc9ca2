"""Training on several processes with PyTorch's own engine: DistributedDataParallel over
torch.distributed (gloo on CPUs, NCCL on GPUs), started by `torchrun` or by `convforge train --nproc N`,
which runs torchrun's launcher for the user. convforge adds no cluster code: what is its own is that
the run folder, resume, lineage and report stay as they are on one process.

- Every process reads `World` from the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK) and
  joins the process group with a timeout, so a rendezvous that never forms ends with a message.
- Each rank trains on its share of every epoch's permutation (`BatchLoader.order`: every world-th
  position from the rank on), with `--batch-size` images per rank: batch i of the ranks together is
  exactly batch i of one process with the global batch, and DDP's averaged gradients are its gradient.
- Only rank 0 writes the run folder (train/recorder.py's `writes`); validation and the final evaluation
  run on every rank's share and are gathered (`gather_by_position`), so the figures are the ones a single
  process computes on the whole split.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from convforge.errors import UserError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE = World()


def launched_world() -> World:
    """The world torchrun describes in the environment (one process when it did not start this one)."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise UserError("WORLD_SIZE, RANK and LOCAL_RANK must be whole numbers (torchrun sets them)") from None
    return World(rank, size, local) if size > 1 else SINGLE


def join(device: torch.device, timeout_s: float) -> World:
    """Join the process group torchrun set up (gloo for CPU training, NCCL for CUDA), waiting at most
    `timeout_s` (TrainConfig.dist_timeout) here and in every collective after; SINGLE without one."""
    world = launched_world()
    if not world.distributed or dist.is_initialized():
        return world
    if device.type == "cuda":
        torch.cuda.set_device(world.local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        atexit.register(leave, world)  # once, whatever number of runs this process trains
    except Exception as exc:  # noqa: BLE001 - rendezvous failures come as several types
        raise UserError(
            f"rank {world.rank} of {world.size} could not join the other processes within {timeout_s:.0f} s "
            f"({type(exc).__name__}: {str(exc)[:200]}); check that every node was started with the same "
            "--nnodes and --rdzv-endpoint and can reach it"
        ) from None
    return world


def leave(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def rank_device(world: World, device: torch.device) -> torch.device:
    """One GPU per process, chosen by the local rank; the CPU is shared."""
    return torch.device("cuda", world.local_rank) if device.type == "cuda" and world.distributed else device


def rank_seed(seed: int, world: World) -> int:
    """A seed for the random draws of one rank (augmentation, dropout): rank 0 draws what one process
    would; the others draw independently of it."""
    if world.rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, world.rank]).generate_state(1, dtype=np.uint64)[0] % 2**63)


def wrap(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """The module the training step calls: DDP around `model` when distributed (the optimizer, EMA and
    saving keep using `model` itself)."""
    if not world.distributed:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


class PeerLost(UserError):
    """Another process of the run stopped (crashed, killed, or refused a mistake); this one stops too."""


@contextlib.contextmanager
def peers_lost(world: World) -> Iterator[None]:
    """A collective that fails because another process went away becomes one line naming this rank, instead
    of gloo's traceback in every surviving process (torchrun's launcher names the rank that went first)."""
    try:
        yield
    except RuntimeError as exc:
        lost = ("closed by peer", "Connection reset", "Broken pipe", "Timed out", "timeout")
        if not world.distributed or not any(text.lower() in str(exc).lower() for text in lost):
            raise
        reason = "no answer within --dist-timeout" if "time" in str(exc).lower() else "its connection closed"
        raise PeerLost(f"rank {world.rank}: another process of this run stopped ({reason}); stopping too. What was "
                       "checkpointed stays in the run folder (--resume RUN continues it)") from None  # fmt: skip


@contextlib.contextmanager
def rank_zero_first(world: World) -> Iterator[None]:
    """Rank 0 runs the block, then the others do: it fills the decode cache that they then only read, and
    a mistake it reports (a bad dataset, an existing run folder) ends the run before the others start."""
    with peers_lost(world):
        if not world.main:
            barrier(world)
        yield
        if world.main:
            barrier(world)


def prepare_model(model: nn.Module, config, world: World, device: torch.device) -> nn.Module:
    """The model a distributed run trains (SyncBatchNorm with `sync_bn`), or a refusal of what several
    processes cannot do yet; one process: the model as it is."""
    if not world.distributed:
        return model
    if config.adv is not None:
        raise UserError("adversarial training on several processes is not supported yet: its attacks run the model "
                        "forward and backward outside the training step; train it on one process")  # fmt: skip
    return convert_sync_batchnorm(model, device) if config.sync_bn else model


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm statistics over the global batch (`--sync-bn`). PyTorch's SyncBatchNorm runs on GPUs only."""
    if device.type != "cuda":
        raise UserError("--sync-bn needs GPUs (PyTorch's SyncBatchNorm has no CPU kernel); on CPUs each process "
                        "keeps BatchNorm statistics over its own share of the batch. Drop --sync-bn")  # fmt: skip
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def sum_across(world: World, values: Sequence[float]) -> list[float]:
    """Each value summed over the ranks (float64)."""
    if not world.distributed:
        return [float(v) for v in values]
    tensor = torch.tensor(list(values), dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def gather_by_position(world: World, total: int, positions: np.ndarray, columns: dict[str, np.ndarray]) -> dict:
    """Per-image results each rank computed on its share, put back in the order of the whole split:
    `positions` are the rank's images' places in the split, `columns` one value per image each (the same
    names and dtypes on every rank). Every rank gets the whole arrays. Gathered as tensors of fixed dtypes,
    never as pickles: `dist.all_gather_object` would unpickle whatever another process of the group sent."""
    if not world.distributed:
        return columns
    cuda = dist.get_backend() == "nccl"
    counts = _all_gather(torch.tensor([len(positions)], dtype=torch.int64), world, cuda)
    counts = [int(c) for c in counts]
    shares_positions = _gather_ragged(np.asarray(positions, dtype=np.int64), counts, world, cuda)
    whole = {}
    for name, values in columns.items():
        shares = _gather_ragged(values, counts, world, cuda)
        whole[name] = np.empty(total, dtype=values.dtype)
        for share_positions, share in zip(shares_positions, shares, strict=True):
            whole[name][share_positions] = share
    return whole


def _all_gather(tensor: torch.Tensor, world: World, cuda: bool) -> list[torch.Tensor]:
    tensor = tensor.cuda() if cuda else tensor
    parts = [torch.empty_like(tensor) for _ in range(world.size)]
    dist.all_gather(parts, tensor)
    return [part.cpu() for part in parts]


def _gather_ragged(values: np.ndarray, counts: list[int], world: World, cuda: bool) -> list[np.ndarray]:
    """One 1-D array per rank, of `counts[rank]` values each (padded to the longest for all_gather)."""
    as_bytes = values.dtype == np.bool_  # gloo has no bool all_gather
    tensor = torch.from_numpy(np.ascontiguousarray(values.astype(np.uint8) if as_bytes else values))
    padded = torch.zeros(max(counts), dtype=tensor.dtype)
    padded[: len(tensor)] = tensor
    parts = _all_gather(padded, world, cuda)
    return [part[:count].numpy().astype(values.dtype) for part, count in zip(parts, counts, strict=True)]


def broadcast_state(world: World, model: nn.Module) -> None:
    """Rank 0's weights in every rank's `model` (the same architecture and widths everywhere). A
    channels_last weight goes through a contiguous copy: gloo fills the storage in the sender's element
    order, which would scramble a tensor laid out otherwise."""
    if world.distributed:
        for tensor in model.state_dict().values():
            if tensor.is_contiguous():
                dist.broadcast(tensor, src=0)
            else:
                received = tensor.contiguous()
                dist.broadcast(received, src=0)
                tensor.copy_(received)


def describe(world: World, config, device: torch.device) -> dict[str, Any]:
    """What run.json records about the processes of a run (nothing for one process)."""
    if not world.distributed:
        return {}
    return {"distributed": {"processes": world.size, "backend": "nccl" if device.type == "cuda" else "gloo",
                            "batch_per_process": config.batch_size, "global_batch": config.batch_size * world.size,
                            "lr": config.lr * (world.size if config.scale_lr else 1), "scale_lr": config.scale_lr,
                            "sync_bn": config.sync_bn}}  # fmt: skip


def summary_line(world: World, config, device: torch.device) -> str:
    record = describe(world, config, device)["distributed"]
    lr = (f"lr {record['lr']:g} (--lr x {world.size}, --scale-lr)" if config.scale_lr
          else f"lr {config.lr:g} as given (--scale-lr multiplies it by {world.size})")  # fmt: skip
    return (f"{world.size} processes ({record['backend']}): global batch {record['global_batch']} "
            f"({world.size} x {config.batch_size}), {lr}")  # fmt: skip


@dataclass
class LaunchFailure(Exception):
    """A process of `launch` failed: which rank, its exit code, and whether it reported a user's mistake."""

    rank: int
    exitcode: int
    signal: str | None

    @property
    def user_error(self) -> bool:
        return self.exitcode == 2  # convforge's exit status for a message the user can act on

    def __str__(self) -> str:
        if self.user_error:
            return f"rank {self.rank} stopped with the message above; torchrun stopped the other processes"
        how = f"was killed by {self.signal}" if self.signal else f"stopped with exit status {self.exitcode}"
        return (f"rank {self.rank} {how}; torchrun stopped the other processes. The run folder keeps its last "
                "checkpoint (continue it with --resume RUN, on any number of processes)")  # fmt: skip


def launch(nproc: int, argv: Sequence[str]) -> None:
    """`python -m convforge ARGV` on `nproc` processes of this machine through torchrun's own launcher; raises
    LaunchFailure naming the first rank that failed.

    Not `torchrun --standalone`: its c10d rendezvous keeps pickled state in a TCPStore that listens on every
    interface, so anyone who can reach the port could make the launcher unpickle what they wrote. A static
    rendezvous on 127.0.0.1 holds plain keys only; its TCPStore still listens on every interface (PyTorch
    offers no way to bind it) but the ranks reach it, and each other, on 127.0.0.1, with gloo's transport
    bound to the loopback device (GLOO_SOCKET_IFNAME). What a multi-node run exposes is in the README."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if nproc < 1:
        raise UserError(f"--nproc is a number of processes, at least 1; got {nproc}")
    # torchrun gives each process 1 thread unless told, and says so; here each gets its share of the cores
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    loopback = _loopback_device()
    if loopback:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", loopback)
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # LaunchFailure says what failed
    with socket.socket() as probe:  # a free port for the rendezvous, on loopback
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = get_args_parser().parse_args(["--nnodes", "1", "--node-rank", "0", "--rdzv-backend", "static",
                                         "--master-addr", "127.0.0.1", "--master-port", str(port),
                                         "--nproc-per-node", str(nproc), "--module", "convforge", *argv])  # fmt: skip
    try:
        run(args)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        signal = failure.signal_name() if failure.exitcode < 0 else None
        raise LaunchFailure(rank, failure.exitcode, signal) from None


def _loopback_device() -> str | None:
    """The loopback interface's name (`lo` on Linux, `lo0` on macOS), None where there is none to name."""
    try:
        names = [name for _, name in socket.if_nameindex()]
    except (OSError, AttributeError):
        return None
    return next((name for name in ("lo", "lo0") if name in names), None)
