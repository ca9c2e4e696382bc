"""Per-weight importance, the way Torch-Pruning passes `Importance` objects to its pruners: an object called
with (model, batch) that returns one score tensor per prunable weight. Pruning keeps the highest-scoring
weights (`blockswap.train.pruning.Pruner`); the `snip` proxy sums `SnipImportance`, so SNIP is computed once.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..util.errors import BlockSwapError
from .scorer import model_state

__all__ = ["Importance", "MagnitudeImportance", "SnipImportance", "prunable_weights"]


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The conv and Linear weight tensors, by parameter name, in module order."""
    return {
        f"{name}.weight" if name else "weight": m.weight
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    }


class Importance(Protocol):
    """Scores every prunable weight of `model`; `needs_data` says whether it reads `batch`, and `trained`
    whether its scores only mean something for trained weights."""

    needs_data: bool
    trained: bool

    def __call__(self, model: nn.Module, batch: tuple[Tensor, Tensor] | None = None) -> dict[str, Tensor]: ...


class MagnitudeImportance:
    """|w| of every prunable weight (global magnitude pruning, of trained weights)."""

    needs_data = False
    trained = True

    def __call__(self, model: nn.Module, batch: tuple[Tensor, Tensor] | None = None) -> dict[str, Tensor]:
        return {name: w.detach().abs() for name, w in prunable_weights(model).items()}


class SnipImportance:
    """SNIP connection sensitivity |w * dL/dw| for the mean cross-entropy of one batch, BN on batch statistics
    (Lee et al. 2019); the model's mode is restored and its weights untouched."""

    needs_data = True
    trained = False

    def __call__(self, model: nn.Module, batch: tuple[Tensor, Tensor] | None = None) -> dict[str, Tensor]:
        if batch is None:
            raise BlockSwapError("SNIP importance needs a batch of images and labels")
        images, labels = batch
        weights = prunable_weights(model)
        with model_state(model, True):
            grads = torch.autograd.grad(F.cross_entropy(model(images), labels), list(weights.values()))
        return {name: (w.detach() * g).abs() for (name, w), g in zip(weights.items(), grads)}
