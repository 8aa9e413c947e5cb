"""PyTorch's own distributed engine, as torchrun sets it up (nothing home-made).

``torchrun --nproc_per_node N -m fastvip run RECIPE.py`` starts N processes with
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and the rendezvous in the environment;
:func:`setup` joins the process group (NCCL on CUDA, gloo on CPU). Without those
variables everything runs as a single process (rank 0 of 1).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from fastvip.errors import FastvipError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Only the main process writes checkpoints, logs and progress."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    """Join torchrun's process group when launched by it; returns the process's place and device."""
    if not launched_by_torchrun():
        return Dist(), device
    world = int(os.environ["WORLD_SIZE"])
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise FastvipError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world,
                                device_id=device if device.type == "cuda" else None)
    return Dist(rank, world, local_rank), device


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over processes (in place; a no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """Maximum over processes (in place; a no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def agree(ok: bool, message: str, device: torch.device) -> None:
    """Raise ``FastvipError(message)`` on every process if any process says not ``ok``
    (so one process's bad input never leaves the others waiting in a collective)."""
    flag = torch.tensor([0.0 if ok else 1.0], device=device)
    if all_reduce_sum(flag).item() > 0:
        raise FastvipError(message)
