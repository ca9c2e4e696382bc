"""Scoring candidates at initialisation: Fisher potential (SPEC section 4).

A scorer maps (model, batch) to a total score and one score per block, so other
zero-cost proxies can be added without touching the search. `FisherScorer` is
the straightforward fp32 reference (Theis et al. 2018 channel saliency, summed
over channels and blocks): faster scorers are measured against it.
`FastFisherScorer` computes the same quantity with only the work it needs and
is what a search uses by default.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .errors import BlockSwapError
from .networks import BlockNetwork, bn_relu_pairs

__all__ = [
    "Score",
    "Scorer",
    "FisherScorer",
    "FastFisherScorer",
    "FusedBatchNorm",
    "fused_batch_norms",
    "fisher_from_probes",
    "SCORERS",
    "make_scorer",
]


@dataclass(frozen=True)
class Score:
    """A candidate's total score and its per-block contributions (forward order)."""

    total: float
    per_block: tuple[float, ...]


class Scorer(Protocol):
    """Anything that scores a freshly initialised network on one minibatch."""

    name: str

    def __call__(self, model: BlockNetwork, batch: tuple[Tensor, Tensor]) -> Score: ...


def fisher_from_probes(activations: Tensor, gradients: Tensor) -> Tensor:
    """Block Fisher potential: sum_c 0.5 * mean_n (sum_hw A * G)^2 for N x C x H x W tensors."""
    per_channel = (activations * gradients).sum(dim=(2, 3))
    return 0.5 * per_channel.pow(2).mean(dim=0).sum()


class FisherScorer:
    """Reference Fisher potential: fp32, full backward of the mean cross-entropy.

    The model is put in training mode (BN uses batch statistics); weights are
    not updated. Probe gradients are kept with `retain_grad`, as a reader of
    the paper would write it.
    """

    name = "reference"

    def __call__(self, model: BlockNetwork, batch: tuple[Tensor, Tensor]) -> Score:
        x, y = batch
        was_training = model.training
        model.train()
        try:
            model.zero_grad(set_to_none=True)
            taps = model.forward_taps(x)
            for probe in taps.probes:
                probe.retain_grad()
            F.cross_entropy(taps.logits, y).backward()
            with torch.no_grad():
                per_block = [fisher_from_probes(p, p.grad).item() for p in taps.probes]
            model.zero_grad(set_to_none=True)
        finally:
            model.train(was_training)
        return Score(float(sum(per_block)), tuple(per_block))


def _cpu_kernels() -> Any:
    """`blockswap.cpu_kernels`, imported on first use: Numba takes about 0.4 s to import."""
    from . import cpu_kernels

    return cpu_kernels


class _FusedBatchNormFn(torch.autograd.Function):
    """Training-mode BN (optionally followed by ReLU) of an NHWC float32 CPU tensor, by `cpu_kernels`."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, relu: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        cpu_kernels = _cpu_kernels()
        c = x.shape[1]
        out = torch.empty_like(x, memory_format=torch.channels_last)
        weight64 = np.ones(c) if weight is None else weight.detach().double().numpy()
        bias64 = np.zeros(c) if bias is None else bias.detach().double().numpy()
        mean, var = cpu_kernels.batch_norm_forward(cpu_kernels.as_rows(x), weight64, bias64, eps, relu,
                                                   cpu_kernels.as_rows(out))
        ctx.save_for_backward(x)
        ctx.stats = (mean, var, weight64, bias64, eps, relu)
        mean_t, var_t = torch.from_numpy(mean).float(), torch.from_numpy(var).float()
        ctx.mark_non_differentiable(mean_t, var_t)
        return out, mean_t, var_t

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor, *_: Tensor) -> tuple[Tensor | None, ...]:
        cpu_kernels = _cpu_kernels()
        (x,) = ctx.saved_tensors
        mean, var, weight64, bias64, eps, relu = ctx.stats
        grad = grad.contiguous(memory_format=torch.channels_last)
        gx = torch.empty_like(x, memory_format=torch.channels_last)
        gw, gb = cpu_kernels.batch_norm_backward(cpu_kernels.as_rows(grad), cpu_kernels.as_rows(x), mean, var,
                                                 weight64, bias64, eps, relu, cpu_kernels.as_rows(gx))
        wanted = ctx.needs_input_grad
        return (gx if wanted[0] else None, torch.from_numpy(gw).float() if wanted[1] else None,
                torch.from_numpy(gb).float() if wanted[2] else None, None, None)


class FusedBatchNorm(nn.Module):
    """`bn` (then ReLU if `relu`) with `cpu_kernels` on NHWC float32 CPU batches in training mode.

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


@contextmanager
def fused_batch_norms(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every `BatchNorm2d` of `model` runs as a `FusedBatchNorm`; restored on exit.

    A BN whose output goes only into a ReLU (`networks.bn_relu_pairs`) absorbs
    that ReLU, which becomes an identity for the duration.
    """
    swaps: list[tuple[nn.Module, str, nn.Module, nn.Module]] = []
    fused: set[int] = set()
    for owner, bn_name, relu_name in bn_relu_pairs(model):
        bn = owner._modules[bn_name]
        if type(bn) is not nn.BatchNorm2d or type(owner._modules[relu_name]) is not nn.ReLU:
            continue  # a subclass may do more than the kernels know
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


def _probe_potential(activations: Tensor, gradients: Tensor, fused: bool) -> float:
    if fused and activations.dtype == torch.float32 and activations.is_contiguous(memory_format=torch.channels_last):
        return _cpu_kernels().fisher_potential(activations, gradients)
    return fisher_from_probes(activations, gradients).item()


class FastFisherScorer:
    """Fisher potential as `FisherScorer` defines it, computing only what the probes need.

    - Gradients go to the probe activations only (`torch.autograd.grad` with the
      parameters frozen), so no convolution or BN computes weight gradients.
    - The backward pass stops at the first probe: autograd runs no node that
      leads only to the stem or into the first block's body.
    - With `channels_last` (default), activations are NHWC, where oneDNN's
      convolutions run several times faster on CPU, and on CPU every batch
      norm (with the ReLU after it) and the Fisher sums run as fused kernels
      (`cpu_kernels`, statistics in float64), so values stay within fp32 noise
      of the reference (about 1e-3 relative per block on WRN-40-2, the
      reference's own distance from fp64). `channels_last=False` gives the
      reference's values exactly.

    Only `nn.BatchNorm2d` modules are fused (`fused_batch_norms`; hooks on them
    do not run while scoring); a BN subclass or an `F.batch_norm` call in a
    custom body runs PyTorch's NHWC batch norm, whose serial statistics move
    per-block values by up to a few percent.
    """

    name = "fast"

    def __init__(self, channels_last: bool = True) -> None:
        self.channels_last = channels_last

    def __call__(self, model: BlockNetwork, batch: tuple[Tensor, Tensor]) -> Score:
        x, y = batch
        was_training = model.training
        trainable = [p for p in model.parameters() if p.requires_grad]
        model.train()
        try:
            for p in trainable:
                p.requires_grad_(False)
            nhwc = self.channels_last and x.dim() == 4
            if nhwc:
                x = x.contiguous(memory_format=torch.channels_last)
            fuse = nhwc and x.device.type == "cpu"
            with fused_batch_norms(model) if fuse else nullcontext():
                # An input that requires grad roots the graph now that no parameter does.
                taps = model.forward_taps(x.detach().requires_grad_())
                loss = F.cross_entropy(taps.logits, y)
                grads = torch.autograd.grad(loss, taps.probes)
            with torch.no_grad():
                per_block = [_probe_potential(a, g, fuse) for a, g in zip(taps.probes, grads)]
        finally:
            for p in trainable:
                p.requires_grad_(True)
            model.train(was_training)
        return Score(float(sum(per_block)), tuple(per_block))


SCORERS = {"reference": FisherScorer, "fast": FastFisherScorer}


def make_scorer(name: str) -> Scorer:
    """The scorer registered under `name`."""
    try:
        return SCORERS[name]()
    except KeyError:
        raise BlockSwapError(f"unknown scorer {name!r}; valid choices: {', '.join(SCORERS)}") from None
