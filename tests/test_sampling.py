"""Budget sampler: window, determinism, range errors, and the published sampler's distribution."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import stats

from blockswap.space.backbones import Backbone
from blockswap.space.blocks import DEFAULT_PALETTE
from blockswap.space.sampling import CostTable, sample_genotypes, uniform_genotypes
from blockswap.util.counts import BudgetError, parse_budget

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
    from blockswap.space.genotype import Genotype

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


def test_parameter_only_sampling_is_unchanged_by_the_other_budgets() -> None:
    """Every search recorded so far (pick #669 at 400K included) depends on these exact draws."""
    first = sample_genotypes(WRN, 400_000, 1, seed=0)[0]
    assert first.blocks == ("DConvG4", "DConvA8", "A16B2", "DConvG16", "G2B4", "Conv", "DConvA2", "G2B4", "DConvA8",
                            "G4B2", "G4B2", "G8B2", "A8B2", "ConvB4", "ConvB4", "DConvG16", "DConvA4", "DConvA16")


@pytest.mark.parametrize("budget, macs", [(None, 30_000_000), (None, 150_000_000), (400_000, 60_000_000),
                                          (800_000, 100_000_000)])
def test_mac_budgets_alone_or_with_parameters_hold_every_window(budget: int | None, macs: int) -> None:
    genotypes = sample_genotypes(WRN, budget, 500, seed=1, macs=macs)
    assert len(set(genotypes)) > 490
    m = np.array([g.macs() for g in genotypes])
    assert np.all(np.abs(m - macs) < 0.025 * macs)
    if budget is not None:
        p = np.array([g.params() for g in genotypes])
        assert np.all(np.abs(p - budget) < 0.025 * budget)
    assert sample_genotypes(WRN, budget, 20, seed=1, macs=macs) == genotypes[:20]


def test_unreachable_mac_budget_and_empty_intersection_name_the_range() -> None:
    table = CostTable.build(WRN)
    lo, hi = table.fixed_macs + int(table.macs.min(1).sum()), table.fixed_macs + int(table.macs.max(1).sum())
    with pytest.raises(BudgetError, match=f"MAC budget.*{lo:,} MACs .all cheapest. to {hi:,} MACs"):
        sample_genotypes(WRN, None, 10, macs=lo // 2)
    with pytest.raises(BudgetError, match="inside every window at once"):
        sample_genotypes(WRN, 200_000, 10, macs=300_000_000)  # each reachable, never both
    with pytest.raises(BudgetError, match="at least one budget"):
        sample_genotypes(WRN, None, 10)


def test_joint_windows_match_plain_rejection_sampling() -> None:
    """With two budgets the draw is still SPEC's: uniform types per slot, kept when both windows hold."""
    budget, macs, tol, n = 600_000, 90_000_000, 0.05, 3000
    table = CostTable.build(WRN)
    rng = np.random.default_rng(0)
    kept, slots = [], np.arange(18)
    while sum(len(k) for k in kept) < n:
        draw = rng.integers(0, table.params.shape[1], size=(200_000, 18))
        p = table.fixed_params + table.params[slots, draw].sum(1)
        m = table.fixed_macs + table.macs[slots, draw].sum(1)
        kept.append(draw[(np.abs(p - budget) < tol * budget) & (np.abs(m - macs) < tol * macs)])
    plain = np.concatenate(kept)[:n]
    ours = np.array([[DEFAULT_PALETTE.names.index(b) for b in g.blocks]
                     for g in sample_genotypes(WRN, budget, n, tolerance=tol, seed=0, macs=macs)])
    k = len(DEFAULT_PALETTE)
    p_values = [stats.chi2_contingency(np.stack([np.bincount(plain[:, s], minlength=k),
                                                 np.bincount(ours[:, s], minlength=k)]) + 1).pvalue
                for s in (0, 6, 12, 17)]
    assert min(p_values) > 1e-3, p_values
    for costs, fixed, spread in ((table.params, table.fixed_params, 1500), (table.macs, table.fixed_macs, 300_000)):
        assert abs((fixed + costs[slots, plain].sum(1)).mean() - (fixed + costs[slots, ours].sum(1)).mean()) < spread


class _Table:
    """A latency table stand-in: milliseconds proportional to MACs plus a per-type constant."""

    context = "at batch 1 on a test"
    fixed_ms = 0.5

    def __init__(self, table: CostTable) -> None:
        self.ms = table.macs / 1e7 + np.arange(table.macs.shape[1]) * 0.01

    def matrix(self, backbone: Backbone, names: tuple[str, ...]) -> np.ndarray:
        assert tuple(names) == tuple(DEFAULT_PALETTE.names)
        return self.ms


def test_latency_budget_holds_alone_and_with_the_others() -> None:
    table = CostTable.build(WRN)
    lat = _Table(table)
    slots = np.arange(18)
    both = sample_genotypes(WRN, 400_000, 1, seed=2, macs=60_000_000)[0]
    reachable = lat.fixed_ms + lat.ms[slots, [DEFAULT_PALETTE.names.index(b) for b in both.blocks]].sum()
    for kwargs in ({"budget": None, "ms": 9.0}, {"budget": 400_000, "ms": 7.0},
                   {"budget": 400_000, "ms": float(reachable), "macs": 60_000_000}):
        genotypes = sample_genotypes(WRN, kwargs.pop("budget"), 300, seed=2, latency=lat, **kwargs)  # type: ignore
        idx = np.array([[DEFAULT_PALETTE.names.index(b) for b in g.blocks] for g in genotypes])
        ms = lat.fixed_ms + lat.ms[slots, idx].sum(1)
        assert np.all(np.abs(ms - kwargs["ms"]) < 0.025 * kwargs["ms"])
        if "macs" in kwargs:
            assert all(abs(g.macs() - 60_000_000) < 0.025 * 60_000_000 for g in genotypes)
    with pytest.raises(BudgetError, match=r"latency budget 0.1 ms .* at batch 1 on a test: .* \(all cheapest\)"):
        sample_genotypes(WRN, None, 5, ms=0.1, latency=lat)
    with pytest.raises(BudgetError, match="needs a latency table"):
        sample_genotypes(WRN, None, 5, ms=4.0)


def test_uniform_genotypes_draw_only_buildable_types() -> None:
    wrn401 = Backbone.from_name("wrn-40-1")
    shapes = wrn401.block_shapes()
    genotypes = uniform_genotypes(wrn401, 200, seed=4)
    assert genotypes == uniform_genotypes(wrn401, 200, seed=4) and len(set(genotypes)) == 200
    for g in genotypes:
        for name, s in zip(g.blocks, shapes):
            assert DEFAULT_PALETTE[name].is_valid(s.c_in, s.c_out, s.stride)
    counts = np.bincount([DEFAULT_PALETTE.names.index(g.blocks[-1]) for g in genotypes], minlength=23)
    assert (counts > 0).sum() > 15  # spread over the palette, not stuck on a few types
