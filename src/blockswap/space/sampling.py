"""Budget-constrained sampling of genotypes (SPEC section 3), in parameters, MACs and measured latency.

Each slot's type is drawn uniformly from the palette types buildable at that
slot; a genotype is accepted when every budget's window holds: for each given
budget B on a cost C (parameters, MACs for one image, or the milliseconds a
`LatencyTable` predicts), |C - B| < tolerance * B. Costs come from
(slots x types) tables (closed-form counts, or latencies measured once), so
sampling never builds a model and runs vectorised in NumPy chunks. Chunks are
drawn from one seeded generator in a fixed order, so a seed always gives the
same candidates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..util.counts import BudgetError, format_count
from .backbones import Backbone
from .blocks import DEFAULT_PALETTE, Palette, block_type
from .genotype import Genotype
from .networks import fixed_costs

if TYPE_CHECKING:
    from .latency import LatencyTable

__all__ = ["DEFAULT_TOLERANCE", "CostTable", "Window", "budget_windows", "sample_genotypes", "uniform_genotypes"]

DEFAULT_TOLERANCE = 0.025  # the published window: |params - budget| < 2.5% of the budget
_CHUNK = 2_048
_MAX_DRAWS = 2_000_000
_MAX_BINS = 50_000
_MAX_CELLS = 8_000_000  # counting-table cells over all slots when several budgets bin jointly (64 MB of float64)


@dataclass(frozen=True)
class CostTable:
    """Parameter and MAC cost of every palette type at every slot (-1 where it cannot be built)."""

    backbone: Backbone
    type_names: tuple[str, ...]
    params: np.ndarray  # (slots, types) int64, -1 = invalid
    fixed_params: int
    macs: np.ndarray  # (slots, types) int64 MACs of the body for one image, -1 = invalid
    fixed_macs: int

    @classmethod
    def build(cls, backbone: Backbone, palette: Palette = DEFAULT_PALETTE) -> CostTable:
        """The table for every slot of `backbone` and every type of `palette` (each must be registered)."""
        for name, kind in palette.items():
            if block_type(name) != kind:
                raise BudgetError(f"palette type {name!r} differs from the block type registered under that name")
        post = backbone.post_activation
        shapes = backbone.block_shapes()
        params = np.full((len(shapes), len(palette)), -1, dtype=np.int64)
        macs = np.full_like(params, -1)
        for i, s in enumerate(shapes):
            for j, name in enumerate(palette):
                t = palette[name]
                if t.is_valid(s.c_in, s.c_out, s.stride):
                    params[i, j] = t.params(s.c_in, s.c_out, s.stride, post)
                    macs[i, j] = t.macs(s.c_in, s.c_out, s.stride, s.size_in)
        empty = np.flatnonzero((params < 0).all(axis=1))
        if empty.size:
            raise BudgetError(f"no palette type can be built at block slot(s) {empty.tolist()} of {backbone.name}")
        fixed = fixed_costs(backbone)
        return cls(backbone, tuple(palette.names), params, fixed.params, macs, fixed.macs)

    @property
    def valid(self) -> np.ndarray:
        """(slots, types) bool: where each type can be built."""
        return self.params >= 0

    @property
    def min_params(self) -> int:
        return self.fixed_params + int(np.where(self.valid, self.params, np.iinfo(np.int64).max).min(1).sum())

    @property
    def max_params(self) -> int:
        return self.fixed_params + int(self.params.max(1).sum())

    def check_reachable(self, budget: int) -> None:
        """Raise BudgetError naming the reachable range when the parameter budget is outside it."""
        budget_windows(self, budget).pop().check_reachable(self.backbone.name)


@dataclass(frozen=True)
class Window:
    """One budget: a genotype's total `fixed + sum of costs[slot, type]` must lie within tolerance of `target`."""

    what: str  # how errors name the budget: "budget", "MAC budget", "latency budget"
    unit: str  # "params", "MACs", "ms"
    target: float
    tolerance: float
    costs: np.ndarray  # (slots, types); entries where a type is invalid are ignored
    fixed: float
    integral: bool  # whole-number costs (bins of at least one unit)
    context: str = ""  # where the costs hold, e.g. "at batch 1 on cpu (AMD EPYC, 1 thread)"

    @property
    def low(self) -> float:
        """The open window's lower edge on the total."""
        return self.target - self.tolerance * self.target

    @property
    def high(self) -> float:
        return self.target + self.tolerance * self.target

    def text(self, value: float) -> str:
        """A value of this cost as users read it: 404.2K params, 90.00M MACs, 3.21 ms."""
        return f"{value:.3g} ms" if self.unit == "ms" else f"{format_count(value)} {self.unit}"

    def exact(self, value: float) -> str:
        return f"{value:.4f} ms" if self.unit == "ms" else f"{int(value):,} {self.unit}"

    def reachable(self, valid: np.ndarray) -> tuple[float, float]:
        """The smallest and largest total any genotype has."""
        lo = self.fixed + float(np.where(valid, self.costs, np.inf).min(1).sum())
        hi = self.fixed + float(np.where(valid, self.costs, -np.inf).max(1).sum())
        return lo, hi

    def check_reachable(self, model: str, valid: np.ndarray | None = None) -> None:
        """Raise BudgetError naming the reachable range when the target is outside it."""
        lo, hi = self.reachable(self.costs >= 0 if valid is None else valid)
        if not lo <= self.target <= hi:
            where = f" {self.context}" if self.context else ""
            raise BudgetError(
                f"{self.what} {self.text(self.target)} ({self.exact(self.target)}) is outside the reachable range "
                f"for {model}{where}: {self.exact(lo)} (all cheapest) to {self.exact(hi)} (all most expensive)")


def budget_windows(
    table: CostTable,
    budget: int | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    macs: int | None = None,
    ms: float | None = None,
    latency: LatencyTable | None = None,
) -> list[Window]:
    """The windows of the given budgets (parameters, MACs, milliseconds by `latency`), in that order."""
    windows = []
    if budget is not None:
        windows.append(Window("budget", "params", budget, tolerance, table.params, table.fixed_params, True))
    if macs is not None:
        windows.append(Window("MAC budget", "MACs", macs, tolerance, table.macs, table.fixed_macs, True))
    if ms is not None:
        if latency is None:
            raise BudgetError("a latency budget needs a latency table (blockswap.space.latency.latency_table)")
        windows.append(Window("latency budget", "ms", ms, tolerance, latency.matrix(table.backbone, table.type_names),
                              latency.fixed_ms, False, latency.context))
    if not windows:
        raise BudgetError("give at least one budget: parameters (budget), MACs (macs) or milliseconds (ms)")
    return windows


def sample_genotypes(
    backbone: Backbone,
    budget: int | None,
    n: int,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
    palette: Palette = DEFAULT_PALETTE,
    *,
    macs: int | None = None,
    ms: float | None = None,
    latency: LatencyTable | None = None,
) -> list[Genotype]:
    """N genotypes inside every given budget's window, reproducible for a seed.

    `budget` is in parameters, `macs` in multiply-accumulates for one image,
    `ms` in milliseconds as `latency` (a measured `LatencyTable`) predicts;
    each given one must satisfy |cost - target| < tolerance * target.

    The result has the distribution of SPEC's rejection sampler (uniform types
    per slot, conditioned on the windows), i.e. uniform over the genotypes
    inside all windows, but is drawn without rejecting almost everything near
    the edges of the range: a dynamic programme over coarsely binned costs (one
    axis per budget) counts the genotypes of each binned total, genotypes are
    drawn exactly uniformly from a binned box slightly wider than the real
    windows, and those outside a real window are rejected. Uniform over a
    superset, conditioned on the subset, is uniform over the subset.
    """
    if n < 1:
        raise BudgetError(f"number of samples must be positive, got {n}")
    if not 0 < tolerance < 1:
        raise BudgetError(f"tolerance must be in (0, 1), got {tolerance}")
    table = CostTable.build(backbone, palette)
    windows = budget_windows(table, budget, tolerance, macs, ms, latency)
    valid = table.valid
    for w in windows:
        w.check_reachable(backbone.name, valid)
    slots = valid.shape[0]
    costs = [np.where(valid, w.costs, 0) for w in windows]
    low = [w.low - w.fixed for w in windows]  # exact windows on the body totals, open
    high = [w.high - w.fixed for w in windows]
    slack = slots / 2 + 1  # rounding moves a binned total by at most slots / 2 bins
    steps = [_first_step(w, c, slots) for w, c in zip(windows, costs)]
    if len(windows) > 1:
        steps = _joint_steps(windows, steps, high, slack, slots)
    binned = np.stack([np.where(valid, np.rint(c / s), 0).astype(np.int64) for c, s in zip(costs, steps)], axis=-1)
    lo_bin = [max(0, int(np.floor(lo / s - slack))) for lo, s in zip(low, steps)]
    hi_bin = [int(np.ceil(hi / s + slack)) for hi, s in zip(high, steps)]
    full = binned.max(1).sum(0) + 1
    sizes = (int(full[0]),) if len(windows) == 1 else tuple(int(min(f, h + 1)) for f, h in zip(full, hi_bin))
    ways = np.zeros((slots + 1, *sizes))  # ways[p, s]: genotypes of slots p.. whose binned totals are s
    ways[(slots,) + (0,) * len(sizes)] = 1.0
    for p in range(slots - 1, -1, -1):
        for t in np.flatnonzero(valid[p]):
            b = binned[p, t]
            if (b >= sizes).any():
                continue  # this type alone overshoots a window: no genotype inside it uses it here
            ways[p][tuple(slice(int(o), None) for o in b)] += ways[p + 1][
                tuple(slice(0, size - int(o)) for size, o in zip(sizes, b))]
    box = tuple(slice(lo, hi + 1) for lo, hi in zip(lo_bin, hi_bin))
    window = np.zeros(sizes)
    window[box] = ways[0][box]
    if window.sum() == 0:
        raise BudgetError(f"no genotype of {backbone.name} lies inside every window at once: "
                          + ", ".join(f"{w.text(w.target)} ± {tolerance:.1%}" for w in windows)
                          + "; widen the tolerance or move a budget")
    window = (window / window.sum()).ravel()
    rng = np.random.default_rng(seed)
    accepted: list[np.ndarray] = []
    found = draws = 0
    rows = np.arange(_CHUNK)
    while found < n:
        if draws >= _MAX_DRAWS:
            raise BudgetError(
                f"only {found} of {n} genotypes fell within {tolerance:.1%} of "
                + " and ".join(w.text(w.target) for w in windows)
                + f" after {draws:,} draws (distinct genotypes run out there): ask for fewer samples, widen the "
                "tolerance or move the budget")
        remaining = np.stack(np.unravel_index(rng.choice(window.size, size=_CHUNK, p=window), sizes), axis=-1)
        choice = np.empty((_CHUNK, slots), dtype=np.int64)
        for p in range(slots):
            after = remaining[:, None, :] - binned[p][None, :, :]
            inside = valid[p] & (after >= 0).all(axis=-1)
            counts = ways[p + 1][tuple(np.clip(after[..., d], 0, None) for d in range(len(sizes)))]
            choice[:, p] = _pick(rng, np.where(inside, counts, 0.0))
            remaining = after[rows, choice[:, p]]
        keep = np.ones(_CHUNK, dtype=bool)
        for c, lo, hi in zip(costs, low, high):
            totals = c[np.arange(slots), choice].sum(axis=1)
            keep &= (totals > lo) & (totals < hi)
        accepted.append(choice[keep])
        found += len(accepted[-1])
        draws += _CHUNK
    chosen = np.concatenate(accepted)[:n]
    names = table.type_names
    return [Genotype(backbone, tuple(names[j] for j in row)) for row in chosen]


def uniform_genotypes(backbone: Backbone, n: int, seed: int = 0, palette: Palette = DEFAULT_PALETTE) -> list[Genotype]:
    """N genotypes with no budget: each slot's type drawn uniformly from the palette types buildable there."""
    valid = CostTable.build(backbone, palette).valid
    rng = np.random.default_rng(seed)
    names = palette.names
    return [Genotype(backbone, tuple(names[rng.choice(np.flatnonzero(row))] for row in valid)) for _ in range(n)]


def _first_step(window: Window, costs: np.ndarray, slots: int) -> float:
    """The bin width of one budget alone: about 4 * slots bins across its window, at most _MAX_BINS in all."""
    max_total = float(costs.max(1).sum())
    if window.integral:
        return max(1, int(2 * window.tolerance * window.target / (4 * slots)), -(-int(max_total) // _MAX_BINS))
    return max(2 * window.tolerance * window.target / (4 * slots), max_total / _MAX_BINS, 1e-12)


def _joint_steps(windows: list[Window], steps: list[float], high: list[float], slack: float,
                 slots: int) -> list[float]:
    """Bin widths for several budgets binned jointly: widened alike until the joint table fits _MAX_CELLS."""
    limit = max(1, _MAX_CELLS // (slots + 1))
    for _ in range(200):
        cells = math.prod(max(1.0, hi / s + slack) + 1 for hi, s in zip(high, steps))
        if cells <= limit:
            break
        steps = [s * 1.25 for s in steps]
    return [max(1, math.ceil(s)) if w.integral else s for w, s in zip(windows, steps)]


def _pick(rng: np.random.Generator, weight: np.ndarray) -> np.ndarray:
    """One index per row, drawn with probability proportional to that row's weights."""
    cumulative = np.cumsum(weight, axis=1)
    u = rng.random(len(weight)) * cumulative[:, -1]
    return np.minimum((cumulative <= u[:, None]).sum(axis=1), weight.shape[1] - 1)
