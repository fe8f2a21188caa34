"""Zeroth-order training over ``torch.distributed``: a few bytes per step instead of a model.

A ZO step's gradient estimate is Σ_k c_k · z(seed_k): the seeds follow from the step number,
so processes that share the seed stream share the directions, and only the scalars c_k need
to travel. Two ways to spread a step over a process group (``torchrun`` starts it):

* **data-parallel** (:class:`DataParallelProbes`): every process probes every query on its own
  shard of the batch; one all-reduce of the ``[q, 2]`` table of probe losses gives the
  batch-mean losses everywhere, so every process computes the same c_k and applies the same
  update. 16·q bytes per step where DDP all-reduces every gradient.
* **query-parallel** (:class:`QueryParallelProbes`): the q queries of a step are dealt to the
  processes, all on the same batch; each fills its rows of the table and one all-reduce (a sum
  of disjoint rows: the all-gather of the (seed, value) pairs, with the seeds implied by
  the row) completes it.

Parameters never need to be broadcast after start-up: every process starts from the same θ
(:func:`broadcast_parameters`) and applies identical updates. Under data-parallel probing the
processes run the same operations on the same values, so they stay bit-identical; under
query-parallel probing each process restores a different probe before the update, which
rounds differently in the last bit (fp32: ~1e-7 relative, not growing with the step count
beyond a random walk of such ulps).

The first-order baselines go through :class:`torch.nn.parallel.DistributedDataParallel`
(:func:`wrap_first_order`), whose gradient traffic :class:`GradientTraffic` counts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..estimators.base import ProbeSharing

MODES = ("data", "query")


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place in the group ``torchrun`` (or a test) started."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    owned: bool = False  # this process initialised the group, so it must also tear it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> torch.device:
        """The device this process should use when the run config asks for ``requested``."""
        if requested.startswith("cuda") and self.backend == "nccl":
            return torch.device("cuda", self.local_rank)
        return torch.device(requested)


def launched_by_torchrun() -> bool:
    """True inside a process that ``torchrun`` started with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    """Rank 0 of a torchrun group, or a process on its own: the one that prints."""
    return int(os.environ.get("RANK", "0")) == 0


# Set by `accelerate launch` in every process it starts (accelerate/utils/launch.py).
ACCELERATE_MARKER = "ACCELERATE_MIXED_PRECISION"


def check_launcher() -> None:
    """Refuse ``accelerate launch`` when it started this process alone: it does so on a CPU
    even for ``--num_processes 2`` (without ``--multi_cpu``), which would train one process
    while the user asked for several. Its multi-process launches set torchrun's variables
    and run as torchrun's."""
    if ACCELERATE_MARKER in os.environ and not launched_by_torchrun():
        raise RuntimeError(
            "accelerate launch started zotune as a single process (it runs one process "
            "on a CPU unless --multi_cpu); for several processes use torchrun "
            "--nproc-per-node N -m zotune train ..., for one run zotune train directly"
        )


def init_process_group(device: str) -> ProcessGroup:
    """Join the group described by torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR…).

    NCCL when the run is on CUDA, gloo on the CPU. A group someone else initialised (a test,
    an outer framework) is used as it is.
    """
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed; cannot run distributed")
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"model.device is {device!r} but this process sees no CUDA device")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    owned = not dist.is_initialized()
    if owned:
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return ProcessGroup(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        backend=dist.get_backend(),
        owned=owned,
    )


def leave_process_group(group: ProcessGroup) -> None:
    """Tear down a group this process initialised; gloo aborts at exit if it is left open."""
    if group.owned and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def spawn_local_group(worker: Callable[..., None], world_size: int, *args: Any) -> None:
    """Run ``worker(rank, port, *args)`` in ``world_size`` spawned processes that join one gloo
    group with :func:`join_local_group` (tests and benchmarks).

    The group's store lives here, in the spawning process, which outlives every worker: with
    torchrun's layout on one machine, rank 0 would host it, and a rank 0 that has left the
    group and exited could leave another rank hanging in ``destroy_process_group``."""
    import torch.multiprocessing as mp

    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    mp.start_processes(
        worker, args=(store.port, *args), nprocs=world_size, start_method="spawn"
    )


def join_local_group(rank: int, world_size: int, port: int) -> ProcessGroup:
    """Join a gloo group of ``world_size`` processes on this machine whose store another
    process hosts on ``port`` (:func:`spawn_local_group`), as torchrun would set it up; the
    caller tears it down (``dist.destroy_process_group``)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    store = dist.TCPStore("127.0.0.1", port, is_master=False)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size)
    return ProcessGroup(rank=rank, world_size=world_size, local_rank=rank, backend="gloo")


class _CountingSharing(ProbeSharing):
    """Counts the bytes this process hands to collectives (payload, not the wire protocol)."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.world_size = dist.get_world_size()
        self.rank = dist.get_rank()
        # NCCL reduces CUDA tensors only; gloo takes CPU tensors.
        self.device = torch.device(device)
        self.bytes_sent = 0
        self.collectives = 0

    def _all_reduce(self, values: torch.Tensor) -> torch.Tensor:
        buffer = values.to(self.device, copy=True)
        dist.all_reduce(buffer)
        self.bytes_sent += buffer.numel() * buffer.element_size()
        self.collectives += 1
        return buffer.to(values.device)

    def take_traffic(self) -> tuple[int, int]:
        """(bytes, collectives) since the last call."""
        traffic = (self.bytes_sent, self.collectives)
        self.bytes_sent = self.collectives = 0
        return traffic


class DataParallelProbes(_CountingSharing):
    """Each process probes every query on its shard; the table is averaged over processes.

    The mean over processes of per-shard mean losses is the batch mean when the shards are
    equally large, which :func:`shard_batch` guarantees.
    """

    def combine(self, table: torch.Tensor) -> torch.Tensor:
        return self._all_reduce(table) / self.world_size

    def average(self, values: torch.Tensor) -> torch.Tensor:
        return self._all_reduce(values.to(torch.float64)) / self.world_size

    def average_gradients(self, grads: Sequence[torch.Tensor]) -> None:
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        flat = self._all_reduce(flat) / self.world_size
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
            offset += grad.numel()


class QueryParallelProbes(_CountingSharing):
    """Process r probes queries r, r + W, r + 2W, … on the full batch; rows are summed."""

    def queries(self, q: int) -> range:
        return range(self.rank, q, self.world_size)

    def combine(self, table: torch.Tensor) -> torch.Tensor:
        return self._all_reduce(table)


def share_probes(optimizer: torch.optim.Optimizer, mode: str, group: ProcessGroup):
    """Make a zotune ZO optimizer's estimator probe as ``mode`` says; returns the sharing."""
    if mode not in MODES:
        raise ValueError(f"Unknown parallel mode: {mode!r} (choose from {MODES})")
    estimator = getattr(optimizer, "estimator", None)
    if estimator is None or not hasattr(estimator, "sharing"):
        raise TypeError(
            f"{type(optimizer).__name__} has no zeroth-order estimator to share; "
            "first-order optimizers go through wrap_first_order (DDP)"
        )
    device = torch.device("cuda", group.local_rank) if group.backend == "nccl" else "cpu"
    sharing = (DataParallelProbes if mode == "data" else QueryParallelProbes)(device)
    estimator.sharing = sharing
    return sharing


@torch.no_grad()
def broadcast_parameters(model: torch.nn.Module, src: int = 0) -> int:
    """Copy process ``src``'s trainable tensors to every process, once, at start-up; returns
    the bytes this process received (0 on ``src``)."""
    received = 0
    for param in model.parameters():
        if param.requires_grad:
            dist.broadcast(param.data, src=src)
            if dist.get_rank() != src:
                received += param.numel() * param.element_size()
    return received


def shard_batch(examples: Sequence, group: ProcessGroup) -> list:
    """This process's contiguous slice of a global batch (the slices concatenate to it)."""
    if len(examples) % group.world_size:
        raise ValueError(
            f"batch_size {len(examples)} is not divisible by the {group.world_size} processes "
            "of a data-parallel run (each must hold an equal shard for the mean to be exact)"
        )
    size = len(examples) // group.world_size
    return list(examples[group.rank * size : (group.rank + 1) * size])


def sharded_accuracy(scorer, examples: Sequence, batch_size: int, group: ProcessGroup) -> float:
    """Accuracy over all of ``examples``, each process scoring every W-th one."""
    mine = list(examples[group.rank :: group.world_size])
    correct = 0.0
    if mine:
        correct = scorer.accuracy(mine, batch_size) * len(mine)
    device = torch.device("cuda", group.local_rank) if group.backend == "nccl" else "cpu"
    counts = torch.tensor([round(correct), len(mine)], dtype=torch.float64, device=device)
    dist.all_reduce(counts)
    return float(counts[0] / counts[1])


class GradientTraffic:
    """A DDP communication hook that counts the gradient bytes all-reduced, then reduces."""

    def __init__(self) -> None:
        self.bytes_sent = 0
        self.collectives = 0

    def hook(self, state, bucket):
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        buffer = bucket.buffer()
        self.bytes_sent += buffer.numel() * buffer.element_size()
        self.collectives += 1
        return allreduce_hook(state, bucket)

    def take_traffic(self) -> tuple[int, int]:
        traffic = (self.bytes_sent, self.collectives)
        self.bytes_sent = self.collectives = 0
        return traffic


def wrap_first_order(model: torch.nn.Module, group: ProcessGroup):
    """(DDP-wrapped model, its traffic counter) for a first-order baseline."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [group.local_rank] if group.backend == "nccl" else None
    wrapped = DistributedDataParallel(model, device_ids=ids)
    traffic = GradientTraffic()
    wrapped.register_comm_hook(None, traffic.hook)
    return wrapped, traffic
