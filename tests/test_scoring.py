"""Fisher potential against an independent computation via per-channel mask gradients."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from blockswap.scoring.fisher import FisherScorer, fisher_from_probes
from blockswap.scoring.scorer import Score, make_scorer, model_state
from blockswap.space.backbones import Backbone
from blockswap.space.genotype import Genotype
from blockswap.space.networks import PostActBlock, PreActBlock


class ChannelMask(nn.Module):
    """Multiplies its input by a per-sample, per-channel mask of ones."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.mask = mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask


def mask_fisher(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Theis et al.: dL/dm for a mask m = 1 at each body output; fisher = sum_c 0.5 * mean_n (dL/dm_nc)^2."""
    model = copy.deepcopy(model).train()
    masks = []
    for block in model.blocks:
        if isinstance(block, PreActBlock):
            c = block.body[-1].out_channels
            mask = torch.ones(x.shape[0], c, 1, 1, requires_grad=True)
            block.body = nn.Sequential(block.body, ChannelMask(mask))
        else:
            assert isinstance(block, PostActBlock)
            last = block.body_names[-1]
            layer = getattr(block, last)
            mask = torch.ones(x.shape[0], layer.num_features, 1, 1, requires_grad=True)
            setattr(block, last, nn.Sequential(layer, ChannelMask(mask)))
        masks.append(mask)
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, masks)
    return [0.5 * g.flatten(1).pow(2).mean(0).sum().item() for g in grads]


@pytest.mark.parametrize("model,blocks", [("wrn-10-1", ["Conv", "G4B2", "DConvA2"]),
                                          ("resnet18", ["DConv", "Conv", "A2B2", "G2B4"] * 2)])
def test_fisher_equals_mask_gradient_computation(model: str, blocks: list[str]) -> None:
    torch.manual_seed(0)
    g = Genotype(Backbone.from_name(model), tuple(blocks))
    net = g.build()
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    expected = mask_fisher(net, x, y)
    score = FisherScorer()(net, (x, y))
    assert isinstance(score, Score) and len(score.per_block) == len(blocks)
    torch.testing.assert_close(torch.tensor(score.per_block), torch.tensor(expected), rtol=1e-4, atol=0)
    assert score.total == pytest.approx(sum(expected), rel=1e-5)
    assert score.total > 0


def test_fisher_formula_on_hand_values() -> None:
    a = torch.tensor([[[[1.0, 2.0]], [[0.0, 1.0]]], [[[3.0, 0.0]], [[1.0, 1.0]]]])  # N=2, C=2, H=1, W=2
    g = torch.tensor([[[[1.0, 1.0]], [[2.0, 2.0]]], [[[1.0, 5.0]], [[-1.0, 1.0]]]])
    # per (n, c) sums: n0: c0 = 3, c1 = 2; n1: c0 = 3, c1 = 0 -> 0.5 * (mean(9, 9) + mean(4, 0)) = 0.5 * 11
    assert fisher_from_probes(a, g).item() == pytest.approx(5.5)


def test_scoring_leaves_weights_and_mode_alone() -> None:
    torch.manual_seed(1)
    net = Genotype.uniform(Backbone.from_name("wrn-10-1"), "DConvG4").build().eval()
    before = {k: v.clone() for k, v in net.named_parameters()}
    FisherScorer()(net, (torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))))
    assert not net.training
    assert all(torch.equal(before[k], v) for k, v in net.named_parameters())
    assert all(p.grad is None for p in net.parameters())


def test_scoring_uses_batch_statistics() -> None:
    """Scores come from training-mode BN whatever mode the model is in; eval-mode BN would differ."""
    torch.manual_seed(2)
    net = Genotype.uniform(Backbone.from_name("wrn-10-1")).build()
    x, y = torch.randn(16, 3, 32, 32) * 3 + 1, torch.randint(0, 10, (16,))
    a = FisherScorer()(copy.deepcopy(net).train(), (x, y)).total
    b = FisherScorer()(copy.deepcopy(net).eval(), (x, y)).total
    assert a == b
    frozen = copy.deepcopy(net).eval()
    taps = frozen.forward_taps(x)
    grads = torch.autograd.grad(F.cross_entropy(taps.logits, y), taps.probes)
    eval_mode = sum(fisher_from_probes(p, g).item() for p, g in zip(taps.probes, grads))
    assert eval_mode != pytest.approx(a, rel=0.01)


def test_unknown_scorer_lists_choices() -> None:
    with pytest.raises(ValueError, match="valid choices: reference"):
        make_scorer("magic")


def test_model_state_sets_then_restores_mode_and_flags_even_on_error() -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).eval()
    net[1].bias.requires_grad_(False)
    with model_state(net, True, frozen=True):
        assert net.training and net[1].training
        assert not any(p.requires_grad for p in net.parameters())
    assert not net.training and not net[1].training
    assert [p.requires_grad for p in net.parameters()] == [True, True, True, False]
    with pytest.raises(RuntimeError, match="inside"), model_state(net, True):
        assert net.training and net[0].weight.requires_grad
        raise RuntimeError("inside")
    assert not net.training and [p.requires_grad for p in net.parameters()] == [True, True, True, False]
