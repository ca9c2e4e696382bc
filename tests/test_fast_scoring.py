"""FastFisherScorer against the fp32 reference on identical weights and data (issue 4)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

import blockswap as bs
from blockswap.data import probe_images
from blockswap.scoring.fused import FusedBatchNorm, bn_relu_pairs, fused_batch_norms
from blockswap.search.pool import build_candidate

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cifar_batch(cifar_root) -> tuple[torch.Tensor, torch.Tensor]:
    """128 augmented real CIFAR-10 training images, as a search probes with."""
    return probe_images(str(cifar_root)).probe_batch(128, 0)


def _both(genotype: bs.Genotype, index: int, batch, fast: bs.Scorer) -> tuple[bs.Score, bs.Score]:
    return (bs.FisherScorer()(build_candidate(genotype, 0, index), batch),
            fast(build_candidate(genotype, 0, index), batch))


def test_fast_is_registered_and_the_search_default() -> None:
    assert isinstance(bs.make_scorer("fast"), bs.FastFisherScorer)
    assert bs.SearchConfig(budget=400_000).scorer == "fast"


@pytest.mark.parametrize("model,budget,n", [("wrn-16-1", 50_000, 2), ("wrn-16-2", 150_000, 1)])
def test_fast_matches_reference_on_wrn(cifar_batch, model: str, budget: int, n: int) -> None:
    genotypes = bs.sample_genotypes(bs.Backbone.from_name(model), budget, n, seed=1)
    for i, g in enumerate(genotypes):
        ref, fast = _both(g, i, cifar_batch, bs.FastFisherScorer())
        assert len(fast.per_block) == len(ref.per_block) == g.backbone.num_blocks
        np.testing.assert_allclose(fast.per_block, ref.per_block, rtol=1e-2)
        assert fast.total == pytest.approx(ref.total, rel=5e-3)
        assert fast.total == pytest.approx(sum(fast.per_block), rel=1e-12)


@pytest.mark.parametrize("model,budget,size", [("wrn-16-1", 50_000, 128), ("resnet18", 4_000_000, 16)])
def test_fast_without_channels_last_equals_reference_exactly(cifar_batch, model: str, budget: int, size: int) -> None:
    g = bs.sample_genotypes(bs.Backbone.from_name(model), budget, 1, seed=2)[0]
    batch = (cifar_batch[0][:size], cifar_batch[1][:size])  # ResNet-18 on 32x32: 1x1 probes, NCHW and NHWC alike
    ref, fast = _both(g, 0, batch, bs.FastFisherScorer(channels_last=False))
    assert fast == ref


def test_fast_matches_reference_on_resnet(cifar_batch) -> None:
    batch = (cifar_batch[0][:16], cifar_batch[1][:16])  # 32x32 images through ResNet-18: 1x1 at layer4
    g = bs.sample_genotypes(bs.Backbone.from_name("resnet18"), 4_000_000, 1, seed=0)[0]
    ref, fast = _both(g, 0, batch, bs.FastFisherScorer())
    np.testing.assert_allclose(fast.per_block, ref.per_block, rtol=1e-2)
    assert fast.total == pytest.approx(ref.total, rel=5e-3)


def test_fast_ranks_candidates_like_reference(cifar_batch) -> None:
    genotypes = bs.sample_genotypes(bs.Backbone.from_name("wrn-16-1"), 50_000, 10, seed=3)
    pairs = [_both(g, i, cifar_batch, bs.FastFisherScorer()) for i, g in enumerate(genotypes)]
    rho = spearmanr([r.total for r, _ in pairs], [f.total for _, f in pairs]).statistic
    assert rho >= 0.98


def test_fast_leaves_the_model_as_the_reference_does(cifar_batch) -> None:
    g = bs.sample_genotypes(bs.Backbone.from_name("wrn-16-1"), 50_000, 1, seed=4)[0]
    ref_model, fast_model = build_candidate(g, 0, 0), build_candidate(g, 0, 0)
    frozen = next(fast_model.parameters())
    frozen.requires_grad_(False)
    ref_model.eval()
    fast_model.eval()
    bs.FisherScorer()(ref_model, cifar_batch)
    bs.FastFisherScorer()(fast_model, cifar_batch)
    assert not fast_model.training
    assert not frozen.requires_grad
    assert all(p.requires_grad for p in list(fast_model.parameters())[1:])
    assert all(p.grad is None for p in fast_model.parameters())
    for name, a in ref_model.state_dict().items():  # BN running statistics moved the same way
        torch.testing.assert_close(fast_model.state_dict()[name], a, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("model,budget", [("wrn-16-1", 50_000), ("resnet18", 4_000_000)])
def test_fused_batch_norms_swaps_every_bn_and_restores_the_model(model: str, budget: int) -> None:
    net = bs.sample_genotypes(bs.Backbone.from_name(model), budget, 1, seed=5)[0].build()
    before = [(name, id(m)) for name, m in net.named_modules()]
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    n_pairs = len(list(bn_relu_pairs(net)))
    with fused_batch_norms(net):
        fused = [m for m in net.modules() if isinstance(m, FusedBatchNorm)]
        assert len(fused) == n_bn
        assert sum(m.relu for m in fused) == n_pairs
        assert sum(type(m) is torch.nn.Identity for m in net.modules()) == n_pairs
    assert [(name, id(m)) for name, m in net.named_modules()] == before


def test_bn_relu_pairs_follow_execution_order() -> None:
    wrn = bs.Genotype.uniform(bs.Backbone.from_name("wrn-16-1"), "Conv").build()
    # head + one per pre-activation block + the BN -> ReLU inside each Conv body
    assert len(list(bn_relu_pairs(wrn))) == 1 + 2 * 6
    resnet = bs.Genotype.uniform(bs.Backbone.from_name("resnet18"), "Conv").build()
    pairs = {(type(o).__name__, a, b) for o, a, b in bn_relu_pairs(resnet)}
    # stem and bn1 -> relu1 of each body; bn2 feeds the residual add, not a ReLU
    assert pairs == {("PostActNetwork", "bn1", "relu"), ("PostActBlock", "bn1", "relu1")}


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_fused_batch_norm_module_equals_batch_norm(relu: bool, momentum: float | None) -> None:
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(16, momentum=momentum)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
    twin = copy.deepcopy(bn)
    fused = FusedBatchNorm(twin, relu=relu)
    x = (torch.randn(8, 16, 6, 6) * 2 + 1).contiguous(memory_format=torch.channels_last)
    for _ in range(2):
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        want = F.relu(bn(x1)) if relu else bn(x1)
        got = fused(x2)
        assert got.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        g = torch.randn_like(want)
        torch.testing.assert_close(torch.autograd.grad(got, x2, g)[0], torch.autograd.grad(want, x1, g)[0],
                                   rtol=1e-4, atol=1e-5)
    for name, value in bn.state_dict().items():
        torch.testing.assert_close(twin.state_dict()[name], value, rtol=1e-5, atol=1e-6, msg=name)
    twin.eval()
    bn.eval()
    torch.testing.assert_close(fused(x), F.relu(bn(x)) if relu else bn(x))  # eval mode: bn itself
