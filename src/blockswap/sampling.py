"""Budget-constrained sampling of genotypes (SPEC section 3).

Each slot's type is drawn uniformly from the palette types buildable at that
slot; a genotype is accepted when its parameter count P satisfies
|P - budget| < tolerance * budget. Costs come from a (slots x types) table of
closed-form counts, so sampling never builds a model and runs vectorised in
NumPy chunks. Chunks are drawn from one seeded generator in a fixed order, so a
seed always gives the same candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .backbones import Backbone
from .blocks import DEFAULT_PALETTE, Palette, block_type
from .counts import BudgetError, format_count
from .genotype import Genotype
from .networks import fixed_costs

__all__ = ["DEFAULT_TOLERANCE", "CostTable", "sample_genotypes"]

DEFAULT_TOLERANCE = 0.025  # the published window: |params - budget| < 2.5% of the budget
_CHUNK = 2_048
_MAX_DRAWS = 2_000_000
_MAX_BINS = 50_000


@dataclass(frozen=True)
class CostTable:
    """Parameter cost of every palette type at every slot (-1 where it cannot be built)."""

    backbone: Backbone
    type_names: tuple[str, ...]
    params: np.ndarray  # (slots, types) int64, -1 = invalid
    fixed_params: int

    @classmethod
    def build(cls, backbone: Backbone, palette: Palette = DEFAULT_PALETTE) -> CostTable:
        """The table for every slot of `backbone` and every type of `palette` (each must be registered)."""
        for name, kind in palette.items():
            if block_type(name) != kind:
                raise BudgetError(f"palette type {name!r} differs from the block type registered under that name")
        post = backbone.post_activation
        shapes = backbone.block_shapes()
        table = np.full((len(shapes), len(palette)), -1, dtype=np.int64)
        for i, s in enumerate(shapes):
            for j, name in enumerate(palette):
                t = palette[name]
                if t.is_valid(s.c_in, s.c_out, s.stride):
                    table[i, j] = t.params(s.c_in, s.c_out, s.stride, post)
        empty = np.flatnonzero((table < 0).all(axis=1))
        if empty.size:
            raise BudgetError(f"no palette type can be built at block slot(s) {empty.tolist()} of {backbone.name}")
        return cls(backbone, tuple(palette.names), table, fixed_costs(backbone).params)

    @property
    def min_params(self) -> int:
        return self.fixed_params + int(np.where(self.params < 0, np.iinfo(np.int64).max, self.params).min(1).sum())

    @property
    def max_params(self) -> int:
        return self.fixed_params + int(self.params.max(1).sum())

    def check_reachable(self, budget: int) -> None:
        """Raise BudgetError naming the reachable range when the budget is outside it."""
        lo, hi = self.min_params, self.max_params
        if not lo <= budget <= hi:
            raise BudgetError(
                f"budget {format_count(budget)} ({budget:,} params) is outside the reachable range for "
                f"{self.backbone.name}: {lo:,} (all cheapest) to {hi:,} (all most expensive)"
            )


def sample_genotypes(
    backbone: Backbone,
    budget: int,
    n: int,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
    palette: Palette = DEFAULT_PALETTE,
) -> list[Genotype]:
    """N genotypes with |params - budget| < tolerance * budget, reproducible for a seed.

    The result has the distribution of SPEC's rejection sampler (uniform types
    per slot, conditioned on the window), i.e. uniform over the window's
    genotypes, but is drawn without rejecting almost everything near the edges
    of the range: a dynamic programme over coarsely binned costs counts the
    genotypes of each binned total, genotypes are drawn exactly uniformly from
    a binned window slightly wider than the real one, and those outside the
    real window are rejected. Uniform over a superset, conditioned on the
    subset, is uniform over the subset.
    """
    if n < 1:
        raise BudgetError(f"number of samples must be positive, got {n}")
    if not 0 < tolerance < 1:
        raise BudgetError(f"tolerance must be in (0, 1), got {tolerance}")
    table = CostTable.build(backbone, palette)
    table.check_reachable(budget)
    costs, valid = table.params, table.params >= 0
    slots, types = costs.shape
    low = budget - tolerance * budget - table.fixed_params  # exact window on the body total, open
    high = budget + tolerance * budget - table.fixed_params
    max_total = int(costs.max(1).sum())
    step = max(1, int(2 * tolerance * budget / (4 * slots)), -(-max_total // _MAX_BINS))
    binned = np.where(valid, np.rint(costs / step), 0).astype(np.int64)
    slack = slots / 2 + 1  # rounding moves a binned total by at most slots / 2 bins
    lo_bin, hi_bin = max(0, int(np.floor(low / step - slack))), int(np.ceil(high / step + slack))
    size = int(binned.max(1).sum()) + 1
    ways = np.zeros((slots + 1, size))  # ways[p, s]: genotypes of slots p.. whose binned total is s
    ways[slots, 0] = 1.0
    for p in range(slots - 1, -1, -1):
        for t in np.flatnonzero(valid[p]):
            ways[p, binned[p, t]:] += ways[p + 1, : size - binned[p, t]]
    window = np.zeros(size)
    window[lo_bin : hi_bin + 1] = ways[0, lo_bin : hi_bin + 1]
    window /= window.sum()
    rng = np.random.default_rng(seed)
    accepted: list[np.ndarray] = []
    found = draws = 0
    while found < n:
        if draws >= _MAX_DRAWS:
            raise BudgetError(
                f"only {found} of {n} genotypes fell within {tolerance:.1%} of {format_count(budget)} after "
                f"{draws:,} draws: widen the tolerance or move the budget"
            )
        remaining = rng.choice(size, size=_CHUNK, p=window)
        choice = np.empty((_CHUNK, slots), dtype=np.int64)
        for p in range(slots):
            after = remaining[:, None] - binned[p][None, :]
            weight = np.where(valid[p] & (after >= 0), ways[p + 1][np.clip(after, 0, None)], 0.0)
            choice[:, p] = _pick(rng, weight)
            remaining = after[np.arange(_CHUNK), choice[:, p]]
        totals = costs[np.arange(slots), choice].sum(axis=1)
        accepted.append(choice[(totals > low) & (totals < high)])
        found += len(accepted[-1])
        draws += _CHUNK
    chosen = np.concatenate(accepted)[:n]
    names = table.type_names
    return [Genotype(backbone, tuple(names[j] for j in row)) for row in chosen]


def _pick(rng: np.random.Generator, weight: np.ndarray) -> np.ndarray:
    """One index per row, drawn with probability proportional to that row's weights."""
    cumulative = np.cumsum(weight, axis=1)
    u = rng.random(len(weight)) * cumulative[:, -1]
    return np.minimum((cumulative <= u[:, None]).sum(axis=1), weight.shape[1] - 1)
