"""Scoring candidates at initialisation: Fisher potential (SPEC section 4).

A scorer maps (model, batch) to a total score and one score per block, so other
zero-cost proxies can be added without touching the search: register a factory
with `@register_scorer("name")` (`blockswap.scoring.scorer`) and name it in `SearchConfig.scorer` (with its
keyword settings in `scorer_settings`). `FisherScorer` ("reference") is the
straightforward fp32 implementation (Theis et al. 2018 channel saliency, summed
over channels and blocks): faster scorers are measured against it.
`FastFisherScorer` ("fast") computes the same quantity with only the work it
needs and is what a search uses by default.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor

from ..space.networks import BlockNetwork
from .fused import fisher_potential, fused_batch_norms
from .scorer import Score, model_state, register_scorer

__all__ = ["FisherScorer", "FastFisherScorer", "fisher_from_probes"]


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
        with model_state(model, True):
            model.zero_grad(set_to_none=True)
            taps = model.forward_taps(x)
            for probe in taps.probes:
                probe.retain_grad()
            F.cross_entropy(taps.logits, y).backward()
            with torch.no_grad():
                per_block = [fisher_from_probes(p, p.grad).item() for p in taps.probes]
            model.zero_grad(set_to_none=True)
        return Score(float(sum(per_block)), tuple(per_block))


def _probe_potential(activations: Tensor, gradients: Tensor, fused: bool) -> float:
    if fused and activations.dtype == torch.float32 and activations.is_contiguous(memory_format=torch.channels_last):
        return fisher_potential(activations, gradients)
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
      (`blockswap.scoring.fused`, statistics in float64), so values stay within fp32 noise
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
        with model_state(model, True, frozen=True):
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
        return Score(float(sum(per_block)), tuple(per_block))


register_scorer("reference", sums_blocks=True)(FisherScorer)
register_scorer("fast", sums_blocks=True)(FastFisherScorer)
