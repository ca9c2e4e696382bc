"""Scoring candidates at initialisation: Fisher potential (SPEC section 4).

A scorer maps (model, batch) to a total score and one score per block, so other
zero-cost proxies can be added without touching the search. `FisherScorer` is
the straightforward fp32 reference (Theis et al. 2018 channel saliency, summed
over channels and blocks): faster scorers are measured against it.
`FastFisherScorer` computes the same quantity with only the work it needs and
is what a search uses by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

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


class FastFisherScorer:
    """Fisher potential as `FisherScorer` defines it, computing only what the probes need.

    - Gradients go to the probe activations only (`torch.autograd.grad` with the
      parameters frozen), so no convolution or BN computes weight gradients.
    - The backward pass stops at the first probe: autograd runs no node that
      leads only to the stem or into the first block's body.
    - With `channels_last` (default), activations are NHWC, where oneDNN's
      convolutions run several times faster on CPU. Its batch-norm statistics
      then sum in a different order, which moves per-block values by up to a
      few percent (the ranking holds: see benchmarks/README.md);
      `channels_last=False` gives the reference's values exactly.
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
            # An input that requires grad roots the graph now that no parameter does.
            taps = model.forward_taps(x.detach().requires_grad_())
            grads = torch.autograd.grad(F.cross_entropy(taps.logits, y), taps.probes)
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
