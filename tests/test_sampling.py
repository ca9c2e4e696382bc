"""Budget sampler: window, determinism, range errors, and the published sampler's distribution."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import stats

from blockswap.blocks import DEFAULT_PALETTE
from blockswap.counts import BudgetError, parse_budget
from blockswap.sampling import CostTable, sample_genotypes
from blockswap.backbones import Backbone

WRN = Backbone.from_name("wrn-40-2")


@pytest.mark.parametrize("text,value", [("400k", 400_000), ("1.6M", 1_600_000), ("400000", 400_000),
                                        ("400K", 400_000), (" 2.5m ", 2_500_000), ("4e5", 400_000), (1500, 1500)])
def test_parse_budget(text: str, value: int) -> None:
    assert parse_budget(text) == value


@pytest.mark.parametrize("text", ["", "k", "400 kb", "-5k", "0", "abc"])
def test_parse_budget_rejects_garbage(text: str) -> None:
    with pytest.raises(BudgetError):
        parse_budget(text)


def test_cost_table_matches_genotype_counts() -> None:
    table = CostTable.build(WRN)
    assert table.max_params == 2_243_546
    cheapest = [DEFAULT_PALETTE.names[j] for j in np.where(table.params < 0, 1 << 40, table.params).argmin(1)]
    from blockswap.genotype import Genotype

    assert Genotype(WRN, tuple(cheapest)).params() == table.min_params


@pytest.mark.parametrize("budget", [200_000, 400_000, 1_600_000])
def test_samples_lie_in_window_and_are_fast(budget: int) -> None:
    start = time.perf_counter()
    genotypes = sample_genotypes(WRN, budget, 1000, tolerance=0.025, seed=3)
    elapsed = time.perf_counter() - start
    assert len(genotypes) == 1000
    params = np.array([g.params() for g in genotypes])
    assert np.all(np.abs(params - budget) < 0.025 * budget)
    assert len(set(genotypes)) > 990
    assert elapsed < 5  # generous: about 0.2 s here; catches a fall-back to model construction


def test_sampling_is_deterministic_per_seed() -> None:
    a = sample_genotypes(WRN, 400_000, 50, seed=7)
    b = sample_genotypes(WRN, 400_000, 50, seed=7)
    c = sample_genotypes(WRN, 400_000, 50, seed=8)
    assert a == b and a != c
    assert sample_genotypes(WRN, 400_000, 10, seed=7) == a[:10]


@pytest.mark.parametrize("budget", [50_000, 2_500_000])
def test_unreachable_budget_names_range(budget: int) -> None:
    with pytest.raises(BudgetError, match="reachable range for wrn-40-2: 84,410 .* to 2,243,546"):
        sample_genotypes(WRN, budget, 10)


def test_bad_arguments() -> None:
    with pytest.raises(BudgetError, match="positive"):
        sample_genotypes(WRN, 400_000, 0)
    with pytest.raises(BudgetError, match="tolerance"):
        sample_genotypes(WRN, 400_000, 5, tolerance=1.5)


def test_restricted_palette_only_uses_its_types() -> None:
    palette = DEFAULT_PALETTE.families("B")
    genotypes = sample_genotypes(WRN, 200_000, 100, palette=palette)
    assert {b for g in genotypes for b in g.blocks} <= set(palette.names)
    assert all(abs(g.params() - 200_000) < 5_000 for g in genotypes)


def test_invalid_types_are_never_sampled_where_they_cannot_be_built() -> None:
    wrn401 = Backbone.from_name("wrn-40-1")
    shapes = wrn401.block_shapes()
    for g in sample_genotypes(wrn401, 150_000, 200, seed=1):
        for name, s in zip(g.blocks, shapes):
            assert DEFAULT_PALETTE[name].is_valid(s.c_in, s.c_out, s.stride)


def test_distribution_matches_plain_rejection_sampling() -> None:
    """SPEC's sampler (uniform per slot, keep if in window) and ours agree on per-slot type frequencies."""
    budget, n = 800_000, 4000
    table = CostTable.build(WRN)
    rng = np.random.default_rng(0)
    kept = []
    while sum(len(k) for k in kept) < n:
        draw = rng.integers(0, table.params.shape[1], size=(200_000, table.params.shape[0]))
        totals = table.fixed_params + table.params[np.arange(table.params.shape[0]), draw].sum(1)
        kept.append(draw[np.abs(totals - budget) < 0.025 * budget])
    plain = np.concatenate(kept)[:n]
    ours = np.array([[DEFAULT_PALETTE.names.index(b) for b in g.blocks]
                     for g in sample_genotypes(WRN, budget, n, seed=0)])
    k = len(DEFAULT_PALETTE)
    p_values = []
    for slot in (0, 8, 17):
        counts = np.stack([np.bincount(plain[:, slot], minlength=k), np.bincount(ours[:, slot], minlength=k)])
        p_values.append(stats.chi2_contingency(counts + 1).pvalue)
    assert min(p_values) > 1e-3, p_values
    # The mean parameter count inside the window agrees too (both are uniform over the window's genotypes).
    mean_plain = (table.fixed_params + table.params[np.arange(18), plain].sum(1)).mean()
    mean_ours = (table.fixed_params + table.params[np.arange(18), ours].sum(1)).mean()
    assert abs(mean_plain - mean_ours) < 1500
