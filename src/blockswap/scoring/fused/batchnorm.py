"""Training-mode BatchNorm(+ReLU) as one fused kernel, swapped into a model for the length of a block.

`bn_relu_pairs` decides which ReLUs may be folded into the BN before them by
reading each module's own forward as a torch.fx graph with its children as
leaves: a pair is a BN child whose output is read by a ReLU child and nothing
else, each called once. For this package's and torch.nn's modules the pairs
are cached per (module class, children), so a search traces each kind of
block once, not each candidate; a user's module is traced every time. A module whose
forward cannot be traced contributes no pairs (its BNs still run fused,
without the ReLU).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = ["FusedBatchNorm", "bn_relu_pairs", "fisher_potential", "fused_batch_norms"]


def _kernels() -> ModuleType:
    """`blockswap.scoring.fused.kernels`, imported on first use: Numba takes about 0.4 s to import."""
    from . import kernels

    return kernels


class _FusedBatchNormFn(torch.autograd.Function):
    """Training-mode BN (optionally followed by ReLU) of an NHWC float32 CPU tensor, by `kernels`."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, relu: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        k = _kernels()
        c = x.shape[1]
        out = torch.empty_like(x, memory_format=torch.channels_last)
        weight64 = np.ones(c) if weight is None else weight.detach().double().numpy()
        bias64 = np.zeros(c) if bias is None else bias.detach().double().numpy()
        mean, var = k.batch_norm_forward(k.as_rows(x), weight64, bias64, eps, relu, k.as_rows(out))
        ctx.save_for_backward(x)
        ctx.stats = (mean, var, weight64, bias64, eps, relu)
        mean_t, var_t = torch.from_numpy(mean).float(), torch.from_numpy(var).float()
        ctx.mark_non_differentiable(mean_t, var_t)
        return out, mean_t, var_t

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor, *_: Tensor) -> tuple[Tensor | None, ...]:
        k = _kernels()
        (x,) = ctx.saved_tensors
        mean, var, weight64, bias64, eps, relu = ctx.stats
        grad = grad.contiguous(memory_format=torch.channels_last)
        gx = torch.empty_like(x, memory_format=torch.channels_last)
        gw, gb = k.batch_norm_backward(k.as_rows(grad), k.as_rows(x), mean, var, weight64, bias64, eps, relu,
                                       k.as_rows(gx))
        wanted = ctx.needs_input_grad
        return (gx if wanted[0] else None, torch.from_numpy(gw).float() if wanted[1] else None,
                torch.from_numpy(gb).float() if wanted[2] else None, None, None)


class FusedBatchNorm(nn.Module):
    """`bn` (then ReLU if `relu`) with the fused kernels on NHWC float32 CPU batches in training mode.

    Shares `bn`'s parameters and running statistics and updates the latter as
    `nn.BatchNorm2d` does; any other input (eval mode, CUDA, NCHW, other
    dtypes) goes through `bn` itself.
    """

    def __init__(self, bn: nn.BatchNorm2d, relu: bool) -> None:
        super().__init__()
        self.bn, self.relu = bn, relu

    def forward(self, x: Tensor) -> Tensor:
        bn = self.bn
        if not (bn.training and x.dim() == 4 and x.dtype == torch.float32 and x.device.type == "cpu"
                and x.is_contiguous(memory_format=torch.channels_last) and x.numel() > x.shape[1]):
            y = bn(x)
            return F.relu(y) if self.relu else y
        y, mean, var = _FusedBatchNormFn.apply(x, bn.weight, bn.bias, bn.eps, self.relu)
        if bn.track_running_stats and bn.running_mean is not None and bn.running_var is not None:
            factor = bn.momentum
            if bn.num_batches_tracked is not None:
                bn.num_batches_tracked.add_(1)
                if factor is None:
                    factor = 1.0 / float(bn.num_batches_tracked)
            count = x.numel() // x.shape[1]
            with torch.no_grad():
                bn.running_mean.lerp_(mean, factor)
                bn.running_var.lerp_(var * (count / (count - 1)), factor)
        return y


class _ChildrenAsLeaves(torch.fx.Tracer):
    """Traces one module's own forward: every submodule call is a single node."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


_PAIRS: dict[tuple, tuple[tuple[str, str], ...]] = {}


def _own_pairs(owner: nn.Module) -> tuple[tuple[str, str], ...]:
    """(BN child, ReLU child) names where the ReLU alone reads the BN's output, from `owner`'s traced forward."""
    children = tuple((name, type(child)) for name, child in owner.named_children())
    key = (type(owner), children)
    # Only forwards known to depend on nothing but the children (this package's and torch.nn's) are cached;
    # a user's module may branch on its own attributes, so it is traced each time.
    cacheable = type(owner).__module__.startswith(("blockswap.", "torch.nn."))
    if cacheable and key in _PAIRS:
        return _PAIRS[key]
    pairs: list[tuple[str, str]] = []
    if any(t is nn.BatchNorm2d for _, t in children):
        try:
            graph = _ChildrenAsLeaves().trace(owner)
        except Exception:  # noqa: BLE001 - an untraceable forward (data-dependent control flow) fuses no ReLU
            graph = None
        if graph is not None:
            calls: dict[str, list[torch.fx.Node]] = {}
            for node in graph.nodes:
                if node.op == "call_module":
                    calls.setdefault(str(node.target), []).append(node)
            for target, nodes in calls.items():
                bn = owner._modules.get(target)
                if type(bn) is not nn.BatchNorm2d or len(nodes) != 1 or len(nodes[0].users) != 1:
                    continue
                (user,) = nodes[0].users
                relu_name = str(user.target)
                if (user.op == "call_module" and type(owner._modules.get(relu_name)) is nn.ReLU
                        and len(calls.get(relu_name, ())) == 1 and user.args == (nodes[0],) and not user.kwargs):
                    pairs.append((target, relu_name))
    if cacheable:
        _PAIRS[key] = tuple(pairs)
    return tuple(pairs)


def bn_relu_pairs(model: nn.Module) -> Iterator[tuple[nn.Module, str, str]]:
    """(owner, BN name, ReLU name) for each `BatchNorm2d` child whose output goes only into a ReLU child.

    Read from each module's traced forward (cached per module class and
    children), so a fused scorer can run each pair as one kernel.
    """
    for owner in model.modules():
        for bn_name, relu_name in _own_pairs(owner):
            yield owner, bn_name, relu_name


@contextmanager
def fused_batch_norms(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every `BatchNorm2d` of `model` runs as a `FusedBatchNorm`; restored on exit.

    A BN whose output goes only into a ReLU (`bn_relu_pairs`) absorbs that
    ReLU, which becomes an identity for the duration.
    """
    swaps: list[tuple[nn.Module, str, nn.Module, nn.Module]] = []
    fused: set[int] = set()
    for owner, bn_name, relu_name in bn_relu_pairs(model):
        bn = owner._modules[bn_name]
        swaps += [(owner, bn_name, bn, FusedBatchNorm(bn, relu=True)),
                  (owner, relu_name, owner._modules[relu_name], nn.Identity())]
        fused.add(id(bn))
    for owner in list(model.modules()):
        for name, child in owner._modules.items():
            if type(child) is nn.BatchNorm2d and id(child) not in fused:
                swaps.append((owner, name, child, FusedBatchNorm(child, relu=False)))
    for owner, name, _, new in swaps:
        setattr(owner, name, new)
    try:
        yield model
    finally:
        for owner, name, old, _ in reversed(swaps):
            setattr(owner, name, old)


def fisher_potential(activations: Tensor, gradients: Tensor) -> float:
    """Block Fisher potential (SPEC section 4) of NHWC float32 CPU tensors by the fused kernel, in float64."""
    return _kernels().fisher_potential(activations, gradients)
