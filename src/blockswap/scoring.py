"""Scoring candidates at initialisation: Fisher potential (SPEC section 4).

A scorer maps (model, batch) to a total score and one score per block, so other
zero-cost proxies can be added without touching the search. `FisherScorer` is
the straightforward fp32 reference (Theis et al. 2018 channel saliency, summed
over channels and blocks): faster scorers are measured against it.
`FastFisherScorer` computes the same quantity with only the work it needs and
is what a search uses by default.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from .errors import BlockSwapError
from .networks import BlockNetwork

__all__ = ["Score", "Scorer", "FisherScorer", "FastFisherScorer", "fisher_from_probes", "SCORERS", "make_scorer"]


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


def _channel(v: Tensor) -> Tensor:
    return v.view(1, -1, 1, 1)


class _NHWCBatchNorm(torch.autograd.Function):
    """Training-mode batch norm of an NHWC tensor with statistics summed by `torch.sum`.

    oneDNN's NHWC batch norm accumulates its statistics serially over N*H*W
    rows, which moves Fisher potentials by up to a few percent; `torch.sum`
    sums in cascade, as precisely as the NCHW kernel. Two passes (mean, then
    squared deviations) keep the variance accurate when the mean is large. The
    backward is PyTorch's own, given these statistics.
    """

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        dims, count = (0, 2, 3), x.numel() // x.shape[1]
        mean = x.sum(dims) / count
        centred = x - _channel(mean)
        var = (centred * centred).sum(dims) / count
        invstd = (var + eps).rsqrt()
        scale = invstd if weight is None else invstd * weight
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        ctx.mark_non_differentiable(mean, var)
        # Scale the centred values (not x * scale - mean * scale, which cancels for near-constant channels).
        y = centred.mul_(_channel(scale)) if bias is None else torch.addcmul(_channel(bias), centred, _channel(scale))
        return y, mean, var

    @staticmethod
    def backward(ctx: Any, grad: Tensor, *_: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, mean, invstd = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]]
        gx, gw, gb = torch.ops.aten.native_batch_norm_backward(
            grad, x, weight, None, None, mean, invstd, True, ctx.eps, mask
        )
        return gx, gw, gb, None


_BATCH_NORM_ARGS = inspect.signature(F.batch_norm)


class _PreciseNHWCBatchNorm(TorchFunctionMode):
    """Routes training-mode `F.batch_norm` on NHWC CPU tensors to `_NHWCBatchNorm` (running stats updated alike)."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is not F.batch_norm:
            return func(*args, **kwargs)
        bound = _BATCH_NORM_ARGS.bind(*args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        x = a["input"]
        if not (a["training"] and x.dim() == 4 and x.device.type == "cpu"
                and x.is_contiguous(memory_format=torch.channels_last)):
            return func(*args, **kwargs)
        y, mean, var = _NHWCBatchNorm.apply(x, a["weight"], a["bias"], a["eps"])
        count = x.numel() // x.shape[1]
        with torch.no_grad():
            if a["running_mean"] is not None:
                a["running_mean"].lerp_(mean, a["momentum"])
            if a["running_var"] is not None:
                a["running_var"].lerp_(var * (count / max(count - 1, 1)), a["momentum"])
        return y


class FastFisherScorer:
    """Fisher potential as `FisherScorer` defines it, computing only what the probes need.

    - Gradients go to the probe activations only (`torch.autograd.grad` with the
      parameters frozen), so no convolution or BN computes weight gradients.
    - The backward pass stops at the first probe: autograd runs no node that
      leads only to the stem or into the first block's body.
    - With `channels_last` (default), activations are NHWC, where oneDNN's
      convolutions run several times faster on CPU; batch-norm statistics are
      then summed by `_NHWCBatchNorm`, so values stay within fp32 noise of the
      reference (about 1e-3 relative per block on WRN-40-2, the reference's
      own distance from fp64). `channels_last=False` gives the reference's
      values exactly.
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
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with _PreciseNHWCBatchNorm():
                # An input that requires grad roots the graph now that no parameter does.
                taps = model.forward_taps(x.detach().requires_grad_())
                loss = F.cross_entropy(taps.logits, y)
            grads = torch.autograd.grad(loss, taps.probes)
            with torch.no_grad():
                per_block = torch.stack([fisher_from_probes(a, g) for a, g in zip(taps.probes, grads)]).tolist()
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
