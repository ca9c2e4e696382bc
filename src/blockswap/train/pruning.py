"""Unstructured pruning baselines: global weight magnitude (L1) and SNIP (Lee et al. 2019).

The paper compares BlockSwap students with the teacher pruned to the same
budget of non-zero parameters. Conv and Linear weights are prunable; BN
parameters and biases stay dense and count in full. A budget of P non-zero
parameters therefore keeps the P - (dense parameters) highest-scoring weights
over the whole network: |w| for magnitude pruning of trained weights, |w * dL/dw|
on one minibatch at initialisation for SNIP. Masks are re-applied after every
optimiser step so pruned weights stay exactly zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..util.counts import format_count
from ..util.errors import BlockSwapError

__all__ = ["PRUNE_METHODS", "Pruner", "prunable_weights", "nonzero_params", "magnitude_scores", "snip_scores"]

PRUNE_METHODS = ("l1", "snip")


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The conv and Linear weight tensors, by parameter name."""
    return {
        f"{name}.weight" if name else "weight": m.weight
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    }


def nonzero_params(model: nn.Module) -> int:
    """Trainable parameters counted as the paper does: prunable weights by non-zeros, the rest in full."""
    weights = {id(p) for p in prunable_weights(model).values()}
    return sum(int(torch.count_nonzero(p)) if id(p) in weights else p.numel() for p in model.parameters())


def magnitude_scores(model: nn.Module) -> dict[str, Tensor]:
    """|w| of every prunable weight."""
    return {name: w.detach().abs() for name, w in prunable_weights(model).items()}


def snip_scores(model: nn.Module, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """SNIP connection sensitivity |w * dL/dw| for the mean cross-entropy on one batch (training-mode BN)."""
    weights = prunable_weights(model)
    was_training = model.training
    model.train()
    try:
        grads = torch.autograd.grad(F.cross_entropy(model(images), labels), list(weights.values()))
    finally:
        model.train(was_training)
    return {name: (w.detach() * g).abs() for (name, w), g in zip(weights.items(), grads)}


class Pruner:
    """Fixed binary masks over a model's prunable weights."""

    def __init__(self, masks: dict[str, Tensor]) -> None:
        self.masks = masks

    @classmethod
    def to_budget(cls, model: nn.Module, scores: dict[str, Tensor], budget: int) -> Pruner:
        """Keep the highest-scoring weights so the model has exactly `budget` non-zero parameters."""
        weights = prunable_weights(model)
        total = sum(p.numel() for p in model.parameters())
        dense = total - sum(w.numel() for w in weights.values())
        keep = budget - dense
        if not 0 < keep < total - dense:
            raise BlockSwapError(
                f"pruning budget {format_count(budget)} ({budget:,}) must lie between the {dense:,} parameters "
                f"that stay dense (BN, biases) and the network's {total:,}"
            )
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
