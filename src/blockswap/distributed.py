"""Process groups under torchrun: one place that joins them, for training and sharded search.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; with WORLD_SIZE > 1 a process
joins the default group (gloo on CPU, nccl on CUDA) and takes the GPU of its
local rank. Without torchrun everything runs as a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import Tensor, nn

__all__ = ["Distributed", "setup_distributed"]


@dataclass(frozen=True)
class Distributed:
    """This process's place in a (possibly single-process) run."""

    rank: int
    world: int
    device: torch.device
    owns_group: bool  # this module started the process group and must end it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def group(self) -> torch_dist.ProcessGroup | None:
        """The process group to share work over; None for a single process."""
        return torch_dist.group.WORLD if self.world > 1 else None

    def all_reduce_sum(self, t: Tensor) -> Tensor:
        """The sum of `t` over processes (in place)."""
        if self.world > 1:
            torch_dist.all_reduce(t)
        return t

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Give every process rank 0's buffers (BN running statistics), which rank 0 saves and tests with."""
        if self.world > 1:
            for buffer in module.buffers():
                torch_dist.broadcast(buffer, 0)

    def barrier(self) -> None:
        if self.world > 1:
            torch_dist.barrier()

    def close(self) -> None:
        if self.owns_group:
            torch_dist.destroy_process_group()


def setup_distributed(device: torch.device | None = None) -> Distributed:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, ...), or run as a single process.

    An already initialised group (e.g. from a test) is used as it is.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    elif device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = False
    if not torch_dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        owns = True
    if torch_dist.is_initialized():
        return Distributed(torch_dist.get_rank(), torch_dist.get_world_size(), device, owns)
    return Distributed(0, 1, device, False)
