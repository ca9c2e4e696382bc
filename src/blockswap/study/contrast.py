"""Does the pick matter? Fisher's best students of a large scored pool against random ones and its worst ones.

A contrast study scores the whole pool the way a search does (one search per
ranking, kept in `pool/<ranking>/` so it resumes), then trains only a few
groups of `k` students: Fisher's top-k, k drawn at random from the pool, and
Fisher's bottom-k, plus the top-k of the averaged (`fisher.meanN`) and
screened scores where those differ. It answers the user's question with far
fewer trained students than a correlation over a random pool: at equal budget,
how much lower is the error of Fisher's pick than a random pick's? The
differences of group means come with 95% bootstrap intervals (candidates
resampled within each group) and permutation p-values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist

from ..search.run import SearchConfig, run_search
from ..util.errors import BlockSwapError
from .figures import save_png

__all__ = ["PoolRanking", "pool_rankings", "score_pool", "select_groups", "contrast_stats", "plot_contrast",
           "TOP", "RANDOM", "BOTTOM"]

TOP, RANDOM, BOTTOM = "fisher-top", "random", "fisher-bottom"
_RANDOM_KEY = 0x72616E646F6D  # "random": the random group's draw is its own stream of the study seed


@dataclass(frozen=True)
class PoolRanking:
    """One way of ranking the pool: a search of every candidate with these settings."""

    name: str
    screen: bool
    inits: int


def pool_rankings(inits: int) -> list[PoolRanking]:
    """Fisher on the whole probe batch (the paper's score), its mean over `inits` initialisations when `inits` > 1,
    and the default screened search (what `blockswap search` picks by)."""
    rankings = [PoolRanking("fisher", False, 1)]
    if inits > 1:
        rankings.append(PoolRanking(f"fisher.mean{inits}", False, inits))
    rankings.append(PoolRanking("screened", True, 1))
    return rankings


def score_pool(search: dict[str, Any], inits: int, out: Path, workers: int = 1, device: str | torch.device = "cpu",
               progress: bool = True, group: torch_dist.ProcessGroup | None = None) -> dict[str, dict[int, float]]:
    """Score the pool once per ranking (`search`: SearchConfig settings shared by all); returns each ranking's
    whole-batch score per candidate index (NaN where a screened search did not re-score it)."""
    scores: dict[str, dict[int, float]] = {}
    for ranking in pool_rankings(inits):
        config = SearchConfig(**search, screen=ranking.screen, inits=ranking.inits)
        result = run_search(config, out / "pool" / ranking.name, device=device, progress=progress,
                            workers=workers, group=group)  # every rank gets the merged rows
        scores[ranking.name] = {c.index: math.nan if c.score is None else float(c.score) for c in result.candidates}
    return scores


def _order(scores: dict[int, float]) -> list[int]:
    """Indices with a finite score, best first (ties by index)."""
    return sorted((i for i, s in scores.items() if math.isfinite(s)), key=lambda i: (-scores[i], i))


def select_groups(scores: dict[str, dict[int, float]], k: int, seed: int) -> dict[str, list[int]]:
    """The groups to train: fisher-top, random, fisher-bottom, then `<ranking>-top` for every other ranking whose
    top-k is not Fisher's. Every group has `k` members; a candidate may sit in several (trained once)."""
    fisher = _order(scores["fisher"])
    pool = sorted(scores["fisher"])
    if len(fisher) < 2 * k:
        raise BlockSwapError(f"a contrast of {k} per group needs at least {2 * k} candidates with a finite Fisher "
                             f"score; the pool has {len(fisher)}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, _RANDOM_KEY]))
    groups = {TOP: fisher[:k], RANDOM: sorted(int(i) for i in rng.choice(pool, size=k, replace=False)),
              BOTTOM: fisher[-k:][::-1]}
    for name, ranked in scores.items():
        top = _order(ranked)[:k]
        if name != "fisher" and len(top) == k and set(top) != set(groups[TOP]):
            groups[f"{name}-top"] = top
    return groups


def _mean_difference(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def contrast_stats(errors: dict[int, float], groups: dict[str, list[int]], resamples: int = 10_000,
                   seed: int = 0) -> dict[str, Any]:
    """Each group's mean error (95% bootstrap interval), and every top group against random and against bottom:
    the difference of mean errors (negative: the top group trains to lower error), its 95% bootstrap interval
    (candidates resampled within each group) and a two-sided permutation p-value. Diverged (NaN) runs are left out.
    """
    from scipy import stats  # the `study` extra

    def values(name: str) -> np.ndarray:
        v = np.array([errors[i] for i in groups[name]], float)
        return v[np.isfinite(v)]

    per_group = {}
    for name in groups:
        v = values(name)
        low = high = math.nan
        if len(v) >= 2 and np.ptp(v) > 0:
            ci = stats.bootstrap((v,), np.mean, n_resamples=resamples, method="percentile",
                                 rng=np.random.default_rng(seed)).confidence_interval
            low, high = float(ci.low), float(ci.high)
        per_group[name] = {"n": len(v), "mean_error_pct": float(v.mean()) if len(v) else math.nan,
                           "low": low, "high": high}
    differences = []
    for name in groups:
        if not name.endswith("-top"):
            continue
        for other in (RANDOM, BOTTOM):
            a, b = values(name), values(other)
            row = {"group": name, "versus": other, "difference_pct": math.nan, "low": math.nan, "high": math.nan,
                   "p_value": math.nan}
            if len(a) >= 2 and len(b) >= 2:
                row["difference_pct"] = float(a.mean() - b.mean())
                ci = stats.bootstrap((a, b), _mean_difference, n_resamples=resamples, method="percentile",
                                     rng=np.random.default_rng(seed)).confidence_interval
                row["low"], row["high"] = float(ci.low), float(ci.high)
                row["p_value"] = float(stats.permutation_test((a, b), _mean_difference, n_resamples=resamples,
                                                              alternative="two-sided",
                                                              rng=np.random.default_rng(seed)).pvalue)
            differences.append(row)
    return {"groups": per_group, "differences": differences}


def plot_contrast(path: Path, errors: dict[int, float], groups: dict[str, list[int]], stats: dict[str, Any],
                  title: str) -> None:
    """Left: every trained candidate's mean error by group, with the group mean and its interval. Right: each top
    group minus random and minus bottom, with 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(groups)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4), gridspec_kw={"width_ratios": [1.2, 1]})
    jitter = np.random.default_rng(0)
    for x, name in enumerate(names):
        v = np.array([errors[i] for i in groups[name]], float)
        left.scatter(x + jitter.uniform(-0.12, 0.12, len(v)), v, s=18, alpha=0.7, color=f"C{x}")
        g = stats["groups"][name]
        if math.isfinite(g["low"]):
            left.errorbar([x + 0.3], [g["mean_error_pct"]], yerr=[[g["mean_error_pct"] - g["low"]],
                                                                   [g["high"] - g["mean_error_pct"]]],
                          fmt="D", color="black", capsize=4)
    left.set_xticks(range(len(names)), names, fontsize=8)
    left.set_ylabel("test error % (mean over training seeds)")
    left.set_title("trained students by group (diamond: mean, 95% CI)", fontsize=10)
    rows = stats["differences"]
    y = np.arange(len(rows))[::-1]
    for yi, r in zip(y, rows):
        if math.isfinite(r["difference_pct"]):
            right.errorbar([r["difference_pct"]], [yi], xerr=[[r["difference_pct"] - r["low"]],
                                                              [r["high"] - r["difference_pct"]]],
                           fmt="o", capsize=4, color="C0" if r["versus"] == RANDOM else "C3")
    right.axvline(0, color="black", linewidth=0.8)
    right.set_yticks(y, [f"{r['group']}\n- {r['versus']}" for r in rows], fontsize=8)
    right.set_xlabel("difference of mean test error, points (negative: top is better)")
    right.set_title("top group minus random / bottom, 95% CI", fontsize=10)
    fig.suptitle(title, fontsize=11)
    save_png(fig, path, top=0.92)
