"""FastFisherScorer against the fp32 reference on identical weights and data (issue 4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

import blockswap as bs
from blockswap.scoring import _NHWCBatchNorm
from blockswap.search import build_candidate, probe_data

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cifar_batch(cifar_root) -> tuple[torch.Tensor, torch.Tensor]:
    """128 augmented real CIFAR-10 training images, as a search probes with."""
    return probe_data(str(cifar_root)).probe_batch(128, 0)


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


def test_fast_without_channels_last_equals_reference_exactly(cifar_batch) -> None:
    g = bs.sample_genotypes(bs.Backbone.from_name("wrn-16-1"), 50_000, 1, seed=2)[0]
    ref, fast = _both(g, 0, cifar_batch, bs.FastFisherScorer(channels_last=False))
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


def test_nhwc_batch_norm_is_as_precise_as_fp64() -> None:
    torch.manual_seed(0)
    x64 = torch.randn(64, 24, 12, 12, dtype=torch.float64) * 0.2 + 3.0  # mean >> std: where serial sums drift
    w64, b64 = torch.rand(24, dtype=torch.float64) + 0.5, torch.randn(24, dtype=torch.float64)
    g64 = torch.randn_like(x64)
    leaves64 = [t.clone().requires_grad_() for t in (x64, w64, b64)]
    y64 = F.batch_norm(leaves64[0], None, None, leaves64[1], leaves64[2], training=True)
    grads64 = torch.autograd.grad(y64, leaves64, g64)
    x = x64.float().contiguous(memory_format=torch.channels_last).requires_grad_()
    w, b = w64.float().requires_grad_(), b64.float().requires_grad_()
    y, mean, var = _NHWCBatchNorm.apply(x, w, b, 1e-5)
    grads = torch.autograd.grad(y, (x, w, b), g64.float().contiguous(memory_format=torch.channels_last))
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y.double(), y64, rtol=0, atol=2e-5)
    torch.testing.assert_close(mean.double(), x64.mean((0, 2, 3)), rtol=1e-6, atol=0)
    torch.testing.assert_close(var.double(), x64.var((0, 2, 3), unbiased=False), rtol=1e-5, atol=0)
    for got, want in zip(grads, grads64):
        torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-5 * want.abs().max().item())
