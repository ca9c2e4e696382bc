"""How well a proxy ranks candidates by the error they train to: the statistics of the ranking study.

Every proxy is read as "higher predicts better", so a good proxy has a
negative rank correlation with error (the paper's Table 1 convention) and its
pick is its highest-scored candidate. Correlations come from scipy; their 95%
intervals are percentile intervals over paired bootstrap resamples of the
candidates (as `scipy.stats.bootstrap(paired=True, method="percentile")`, but
leaving out resamples with a constant column instead of returning NaN).
Candidates whose proxy value is NaN or infinite are left out of that proxy's
statistics (`n` says how many were used).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

__all__ = ["rank_stats", "noise_ceiling", "icc", "tie_means", "expected_best_of", "best_of_curve", "DECILE"]

DECILE = 0.1


def _finite(score: np.ndarray, error: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = np.isfinite(score) & np.isfinite(error)
    return score[keep], error[keep]


def tie_means(score: np.ndarray, error: np.ndarray) -> np.ndarray:
    """Each candidate's error replaced by the mean error of the candidates with the same score.

    A pick among tied scores is any of them with equal chance, so its expected error is their mean.
    """
    out = np.empty_like(error, dtype=float)
    for value in np.unique(score):
        same = score == value
        out[same] = error[same].mean()
    return out


def _pick_error(score: np.ndarray, error: np.ndarray) -> float:
    """Expected error of the top-scored candidate (ties share their mean error)."""
    top = score == score.max()
    return float(error[top].mean())


def _pool(score: np.ndarray, error: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidates with an error; a NaN or infinite score ranks below every finite one (never picked before them)."""
    score, error = np.asarray(score, float), np.asarray(error, float)
    keep = np.isfinite(error)
    score = score[keep]
    return np.where(np.isfinite(score), score, -np.inf), error[keep]


def expected_best_of(score: np.ndarray, error: np.ndarray, n: int) -> float:
    """Expected error of the best-by-score of n candidates drawn without replacement from the pool.

    Exact: with candidates sorted best score first, the one at position r
    (0-based) is the pick when it is drawn and none of the r better ones is,
    with probability C(N-1-r, n-1) / C(N, n). Candidates without an error are
    not in the pool; a non-finite score ranks last.
    """
    score, error = _pool(score, error)
    size = len(score)
    if not 1 <= n <= size:
        raise ValueError(f"n must be in [1, {size}], got {n}")
    order = np.argsort(-score, kind="stable")
    errors = tie_means(score, error)[order]
    total = math.comb(size, n)
    weights = np.array([math.comb(size - 1 - r, n - 1) / total for r in range(size)])  # int / int: no overflow
    return float(weights @ errors)


def best_of_curve(score: np.ndarray, error: np.ndarray, sizes: list[int], resamples: int = 2000,
                  seed: int = 0) -> list[dict[str, float]]:
    """Per n: the expected error of the best-by-score of n samples, its 5-95% range over random draws, the oracle."""
    score, error = _pool(score, error)
    rng = np.random.default_rng(seed)
    rows = []
    for n in sizes:
        picks = []
        for _ in range(resamples):
            idx = rng.choice(len(score), size=n, replace=False)
            picks.append(_pick_error(score[idx], error[idx]))
        rows.append({"n": n, "expected_error_pct": expected_best_of(score, error, n),
                     "p05_error_pct": float(np.percentile(picks, 5)), "p95_error_pct": float(np.percentile(picks, 95)),
                     "oracle_error_pct": expected_best_of(-error, error, n)})
    return rows


def _spearman(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman's rho along `axis` (the Pearson correlation of average ranks), vectorised for the bootstrap."""
    rx = stats.rankdata(x, axis=axis) - (x.shape[axis] + 1) / 2
    ry = stats.rankdata(y, axis=axis) - (y.shape[axis] + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(axis) / np.sqrt((rx * rx).sum(axis) * (ry * ry).sum(axis))


def _kendall(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Kendall's tau-b along `axis`, vectorised: sum sx*sy / sqrt(sum |sx| * sum |sy|) over pairs."""
    x, y = np.moveaxis(x, axis, -1), np.moveaxis(y, axis, -1)
    sx = np.sign(x[..., :, None] - x[..., None, :])
    sy = np.sign(y[..., :, None] - y[..., None, :])
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sx * sy).sum((-2, -1)) / np.sqrt(np.abs(sx).sum((-2, -1)) * np.abs(sy).sum((-2, -1)))


def _interval(statistic: Any, x: np.ndarray, y: np.ndarray, resamples: int, seed: int) -> tuple[float, float]:
    """95% percentile interval of statistic(x, y) over paired bootstrap resamples.

    Resamples in which x or y is constant have no rank correlation and are left
    out (`scipy.stats.bootstrap` would return NaN for the whole interval; small
    pools with ties hit this often).
    """
    if len(np.unique(x)) < 2 or len(np.unique(y)) < 2:
        return math.nan, math.nan
    idx = np.random.default_rng(seed).integers(0, len(x), (resamples, len(x)))
    values = np.concatenate([statistic(x[chunk], y[chunk]) for chunk in np.array_split(idx, max(1, resamples // 100))])
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return math.nan, math.nan
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def rank_stats(score: np.ndarray, error: np.ndarray, resamples: int = 2000, seed: int = 0) -> dict[str, float]:
    """A proxy's ranking quality on a pool: correlations with error (95% intervals) and what its picks train to.

    - spearman, kendall: rank correlations of score with error (negative is good).
    - top1_error_pct: the error of its pick; top5_error_pct: the mean error of its five best-scored.
    - best/median/random_error_pct: the pool's best, median and mean (the expected error of a random pick).
    - top1_in_best_decile: over bootstrap resamples of the pool, how often its pick is within the best tenth.
    With fewer than 3 usable candidates every value is NaN.
    """
    score, error = _finite(np.asarray(score, float), np.asarray(error, float))
    n = len(score)
    if n < 3:  # too few candidates with finite values to say anything
        keys = ("spearman", "spearman_low", "spearman_high", "kendall", "kendall_low", "kendall_high",
                "top1_error_pct", "top5_error_pct", "best_error_pct", "median_error_pct", "random_error_pct",
                "top1_in_best_decile")
        return {"n": n, **dict.fromkeys(keys, math.nan)}
    constant = len(np.unique(score)) < 2
    rho = math.nan if constant else float(stats.spearmanr(score, error).statistic)
    tau = math.nan if constant else float(stats.kendalltau(score, error).statistic)
    rho_ci = _interval(_spearman, score, error, resamples, seed)
    tau_ci = _interval(_kendall, score, error, resamples, seed)
    order = np.argsort(-score, kind="stable")
    idx = np.random.default_rng(seed).integers(0, n, (resamples, n))
    s, e = score[idx], error[idx]
    top = s == s.max(axis=1, keepdims=True)  # ties: the chance that their pick lands in the decile
    in_decile = e <= np.quantile(e, DECILE, axis=1, keepdims=True)
    hits = float(np.mean((top & in_decile).sum(1) / top.sum(1)))
    return {
        "n": n, "spearman": rho, "spearman_low": rho_ci[0], "spearman_high": rho_ci[1],
        "kendall": tau, "kendall_low": tau_ci[0], "kendall_high": tau_ci[1],
        "top1_error_pct": _pick_error(score, error), "top5_error_pct": float(error[order[:5]].mean()),
        "best_error_pct": float(error.min()), "median_error_pct": float(np.median(error)),
        "random_error_pct": float(error.mean()), "top1_in_best_decile": hits,
    }


def icc(runs: np.ndarray) -> np.ndarray:
    """One-way ICC(1) of an (..., candidates, seeds) array: the share of one run's error variance that belongs to
    the candidate rather than to its training seed (negative when the seeds disagree more than candidates differ)."""
    k = runs.shape[-1]
    means = runs.mean(-1)
    between = k * means.var(-1, ddof=1)
    within = ((runs - means[..., None]) ** 2).sum((-2, -1)) / (runs.shape[-2] * (k - 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (between - within) / (between + (k - 1) * within)


def noise_ceiling(runs: np.ndarray, resamples: int = 2000, seed: int = 0) -> dict[str, float]:
    """How alike the training seeds rank the candidates, from a (candidates x seeds) array of final errors.

    - spearman (95% interval): the rank correlation of the first two seeds' errors.
    - candidate_share (95% interval): the one-way ICC over every seed; seed_sd_pct: the SD of one run around its
      candidate's mean.
    - mean_reliability: Spearman-Brown for the mean of all seeds; max_abs_spearman: the most a perfect proxy can
      show against that mean.
    Intervals come from bootstrap resamples of the candidates. Rows with a NaN (a diverged run) are left out.
    """
    runs = np.asarray(runs, float)
    runs = runs[np.isfinite(runs).all(1)]
    n, k = runs.shape
    if n < 3 or k < 2:
        return dict.fromkeys(("spearman", "spearman_low", "spearman_high", "kendall", "candidate_share",
                              "candidate_share_low", "candidate_share_high", "seed_sd_pct", "mean_reliability",
                              "max_abs_spearman"), math.nan) | {"n": n}
    pair = rank_stats(-runs[:, 0], runs[:, 1], resamples, seed)  # -a: "higher predicts better", so rho is positive
    r = -pair["spearman"]
    reliability = k * r / (1 + (k - 1) * r) if r > 0 else math.nan
    idx = np.random.default_rng(seed).integers(0, n, (resamples, n))
    shares = icc(runs[idx])
    finite = shares[np.isfinite(shares)]
    low, high = np.percentile(finite, [2.5, 97.5]) if len(finite) else (math.nan, math.nan)
    within = ((runs - runs.mean(1, keepdims=True)) ** 2).sum() / (n * (k - 1))
    return {"n": n, "spearman": r, "spearman_low": -pair["spearman_high"], "spearman_high": -pair["spearman_low"],
            "kendall": -pair["kendall"], "candidate_share": float(icc(runs)), "candidate_share_low": float(low),
            "candidate_share_high": float(high), "seed_sd_pct": math.sqrt(within), "mean_reliability": reliability,
            "max_abs_spearman": math.sqrt(reliability) if reliability == reliability else math.nan}
