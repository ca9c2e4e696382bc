"""Process groups under torchrun: one place that joins them, for training and sharded search.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; with WORLD_SIZE > 1 a process
joins the default group (gloo on CPU, nccl on CUDA) and takes the GPU of its
local rank. Without torchrun everything runs as a single process. The group is
then handed to `run_search` and `train`, which work within whatever group they
are given; `on_rank0` and `rank0_first` order work that one rank must do first.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as torch_dist
from torch import Tensor, nn

from .errors import BlockSwapError

__all__ = ["Distributed", "setup_distributed", "on_rank0", "rank0_first"]

T = TypeVar("T")


@dataclass(frozen=True)
class Distributed:
    """This process's place in a (possibly single-process) run: rank and size within `group`, and its device."""

    rank: int
    world: int
    device: torch.device
    owns_group: bool  # this module started the process group and must end it
    group: torch_dist.ProcessGroup | None = None  # None for a single process

    @classmethod
    def of(cls, group: torch_dist.ProcessGroup | None, device: torch.device | None = None) -> Distributed:
        """The place of this process in `group` (a single process when None), on `device` (default: cuda if any)."""
        local = int(os.environ.get("LOCAL_RANK", "0")) if group is not None else 0
        if device is None:
            device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
        elif device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local)  # one GPU per rank, as torchrun numbers them
        if group is None:
            return cls(0, 1, device, False)
        return cls(torch_dist.get_rank(group), torch_dist.get_world_size(group), device, False, group)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, t: Tensor) -> Tensor:
        """The sum of `t` over processes (in place)."""
        if self.group is not None:
            torch_dist.all_reduce(t, group=self.group)
        return t

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Give every process rank 0's buffers (BN running statistics), which rank 0 saves and tests with."""
        if self.group is not None:
            src = torch_dist.get_global_rank(self.group, 0)
            for buffer in module.buffers():
                torch_dist.broadcast(buffer, src, group=self.group)

    def barrier(self) -> None:
        if self.group is not None:
            torch_dist.barrier(group=self.group)

    def rank0_first(self, fn: Callable[[], T]) -> T:
        """fn() on rank 0, then on the others; see `rank0_first`."""
        return rank0_first(self.group, fn)

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
    if torch_dist.is_initialized() and torch_dist.get_world_size() > 1:
        return Distributed(torch_dist.get_rank(), torch_dist.get_world_size(), device, owns, torch_dist.group.WORLD)
    return Distributed(0, 1, device, owns)


def _from_rank0(group: torch_dist.ProcessGroup, message: tuple[str, object] | None) -> object:
    """Rank 0's ("ok", value) or ("error", text) on every rank; an error is raised on every rank."""
    box: list[object] = [message]
    torch_dist.broadcast_object_list(box, src=torch_dist.get_global_rank(group, 0), group=group)
    kind, value = box[0]  # type: ignore[misc]
    if kind == "error":
        raise BlockSwapError(str(value))
    return value


def _attempt(fn: Callable[[], T]) -> tuple[tuple[str, object], T | None]:
    try:
        result = fn()
    except BlockSwapError as e:
        return ("error", str(e)), None
    return ("ok", None), result


def on_rank0(group: torch_dist.ProcessGroup | None, fn: Callable[[], T]) -> T:
    """fn() on group rank 0 only, its result given to every rank; a BlockSwapError there is raised on every rank."""
    if group is None:
        return fn()
    if torch_dist.get_rank(group) != 0:
        return _from_rank0(group, None)  # type: ignore[return-value]
    status, result = _attempt(fn)
    return _from_rank0(group, status if status[0] == "error" else ("ok", result))  # type: ignore[return-value]


def rank0_first(group: torch_dist.ProcessGroup | None, fn: Callable[[], T]) -> T:
    """fn() on group rank 0, then on the other ranks (e.g. a download done once); rank 0's error stops every rank."""
    if group is None:
        return fn()
    if torch_dist.get_rank(group) != 0:
        _from_rank0(group, None)
        return fn()
    status, result = _attempt(fn)
    _from_rank0(group, status)
    return result  # type: ignore[return-value]
