"""Unstructured pruning baselines: global weight magnitude (L1) and SNIP (Lee et al. 2019).

The paper compares BlockSwap students with the teacher pruned to the same
budget of non-zero parameters. Conv and Linear weights are prunable; BN
parameters and biases stay dense and count in full. A budget of P non-zero
parameters therefore keeps the P - (dense parameters) highest-scoring weights
over the whole network: |w| for magnitude pruning of trained weights, |w * dL/dw|
on one minibatch at initialisation for SNIP (the `Importance` objects of
`blockswap.scoring.importance`, which `PRUNE_IMPORTANCE` names). Masks are re-applied after every
optimiser step so pruned weights stay exactly zero.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..scoring.importance import Importance, MagnitudeImportance, SnipImportance, prunable_weights
from ..util.counts import format_count
from ..util.errors import BlockSwapError

__all__ = ["PRUNE_IMPORTANCE", "PRUNE_METHODS", "Pruner", "prunable_weights", "nonzero_params"]

PRUNE_IMPORTANCE: dict[str, type[Importance]] = {"l1": MagnitudeImportance, "snip": SnipImportance}
PRUNE_METHODS = tuple(PRUNE_IMPORTANCE)


def nonzero_params(model: nn.Module) -> int:
    """Trainable parameters counted as the paper does: prunable weights by non-zeros, the rest in full."""
    weights = {id(p) for p in prunable_weights(model).values()}
    return sum(int(torch.count_nonzero(p)) if id(p) in weights else p.numel() for p in model.parameters())


class Pruner:
    """Fixed binary masks over a model's prunable weights."""

    def __init__(self, masks: dict[str, Tensor]) -> None:
        self.masks = masks

    @classmethod
    def to_budget(cls, model: nn.Module, importance: Importance, budget: int,
                  batch: tuple[Tensor, Tensor] | None = None) -> Pruner:
        """Keep the weights `importance` scores highest (on `batch`) so the model has exactly `budget` non-zeros."""
        weights = prunable_weights(model)
        total = sum(p.numel() for p in model.parameters())
        dense = total - sum(w.numel() for w in weights.values())
        keep = budget - dense
        if not 0 < keep < total - dense:
            raise BlockSwapError(
                f"pruning budget {format_count(budget)} ({budget:,}) must lie between the {dense:,} parameters "
                f"that stay dense (BN, biases) and the network's {total:,}"
            )
        scores = importance(model, batch)
        flat = torch.cat([scores[name].flatten().float() for name in weights])
        kept = torch.zeros_like(flat, dtype=torch.bool)
        kept[torch.topk(flat, keep, sorted=False).indices] = True
        masks, start = {}, 0
        for name, w in weights.items():
            masks[name] = kept[start : start + w.numel()].view_as(w)
            start += w.numel()
        pruner = cls(masks)
        pruner.apply(model)
        return pruner

    @torch.no_grad()
    def apply(self, model: nn.Module) -> None:
        """Zero the pruned weights (call after every optimiser step)."""
        for name, w in prunable_weights(model).items():
            w.mul_(self.masks[name].to(device=w.device, dtype=w.dtype))

    def state_dict(self) -> dict[str, Tensor]:
        """The masks by weight name, as saved in checkpoint.pt (`Pruner(masks)` restores them)."""
        return dict(self.masks)
