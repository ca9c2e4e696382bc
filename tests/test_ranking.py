"""The ranking study's statistics against scipy and against brute force on fixed data."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

stats = pytest.importorskip("scipy.stats")

from blockswap.study.ranking import (  # noqa: E402
    _kendall,
    _spearman,
    best_of_curve,
    expected_best_of,
    icc,
    noise_ceiling,
    rank_stats,
    tie_means,
)

RNG = np.random.default_rng(7)
SCORE = RNG.normal(size=25)
ERROR = 5 - 0.6 * SCORE + RNG.normal(size=25)  # a proxy that predicts error with noise: rho clearly negative


def test_vectorised_correlations_equal_scipy_row_by_row_with_ties() -> None:
    x = np.round(RNG.normal(size=(40, 12)), 1)  # rounding makes ties, which tau-b and average ranks must handle
    y = np.round(x + RNG.normal(size=(40, 12)), 1)
    rho, tau = _spearman(x, y), _kendall(x, y)
    for i in range(len(x)):
        assert rho[i] == pytest.approx(stats.spearmanr(x[i], y[i]).statistic, abs=1e-12)
        assert tau[i] == pytest.approx(stats.kendalltau(x[i], y[i]).statistic, abs=1e-12)


def test_rank_stats_match_scipy_and_the_pool() -> None:
    s = rank_stats(SCORE, ERROR, resamples=2000, seed=0)
    assert s["spearman"] == pytest.approx(stats.spearmanr(SCORE, ERROR).statistic)
    assert s["kendall"] == pytest.approx(stats.kendalltau(SCORE, ERROR).statistic)
    assert s["spearman"] < -0.3
    assert s["spearman_low"] < s["spearman"] < s["spearman_high"]
    assert s["kendall_low"] < s["kendall"] < s["kendall_high"]
    order = np.argsort(-SCORE)
    assert s["top1_error_pct"] == ERROR[order[0]]
    assert s["top5_error_pct"] == pytest.approx(ERROR[order[:5]].mean())
    assert (s["best_error_pct"], s["median_error_pct"], s["random_error_pct"]) == pytest.approx(
        (ERROR.min(), np.median(ERROR), ERROR.mean()))
    assert s["n"] == 25 and 0 <= s["top1_in_best_decile"] <= 1


def test_bootstrap_interval_agrees_with_scipy_bootstrap() -> None:
    """Same method as scipy's percentile bootstrap (different draws): the ends agree to Monte-Carlo precision."""
    ours = rank_stats(SCORE, ERROR, resamples=4000, seed=1)
    theirs = stats.bootstrap((SCORE, ERROR), lambda x, y: stats.spearmanr(x, y).statistic, paired=True,
                             vectorized=False, n_resamples=4000, method="percentile",
                             rng=np.random.default_rng(2)).confidence_interval
    assert ours["spearman_low"] == pytest.approx(theirs.low, abs=0.06)
    assert ours["spearman_high"] == pytest.approx(theirs.high, abs=0.06)


def test_a_perfect_proxy_has_rho_minus_one_and_always_picks_the_best() -> None:
    error = np.arange(20.0)
    s = rank_stats(-error, error, resamples=500)
    assert s["spearman"] == pytest.approx(-1) and s["spearman_low"] == pytest.approx(-1)
    assert s["top1_error_pct"] == 0 and s["top1_in_best_decile"] == 1


def test_non_finite_proxy_values_are_left_out() -> None:
    score = SCORE.copy()
    score[[3, 7]] = [math.nan, math.inf]
    s = rank_stats(score, ERROR, resamples=200)
    keep = np.isfinite(score)
    assert s["n"] == 23
    assert s["spearman"] == pytest.approx(stats.spearmanr(score[keep], ERROR[keep]).statistic)


def test_a_constant_proxy_has_no_correlation_and_a_random_pick() -> None:
    s = rank_stats(np.ones(10), np.arange(10.0), resamples=200)
    assert math.isnan(s["spearman"]) and math.isnan(s["spearman_low"])
    assert s["top1_error_pct"] == pytest.approx(4.5)  # every candidate tied: the expected error is the mean


def _brute_force_best_of(score: np.ndarray, error: np.ndarray, n: int) -> float:
    """Mean over every n-subset of the error of its top-scored member (ties: their mean error)."""
    picks = []
    for subset in itertools.combinations(range(len(score)), n):
        s, e = score[list(subset)], error[list(subset)]
        picks.append(e[s == s.max()].mean())
    return float(np.mean(picks))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_expected_best_of_equals_enumerating_every_draw(n: int) -> None:
    score = np.array([3.0, 1.0, 2.0, 2.0, 5.0, 0.5, 4.0, 2.0])  # ties at 2.0
    error = np.array([4.0, 9.0, 6.0, 5.0, 3.5, 8.0, 3.0, 7.0])
    assert expected_best_of(score, error, n) == pytest.approx(_brute_force_best_of(score, error, n))
    assert expected_best_of(-error, error, n) == pytest.approx(
        np.mean([min(error[list(c)]) for c in itertools.combinations(range(8), n)]))


def test_best_of_curve_ends_at_the_pool_pick_and_starts_at_random() -> None:
    rows = best_of_curve(SCORE, ERROR, [1, 5, 25], resamples=300)
    assert rows[0]["expected_error_pct"] == pytest.approx(ERROR.mean())
    assert rows[-1]["expected_error_pct"] == pytest.approx(ERROR[np.argmax(SCORE)])
    assert rows[-1]["oracle_error_pct"] == pytest.approx(ERROR.min())
    assert all(r["p05_error_pct"] <= r["expected_error_pct"] <= r["p95_error_pct"] for r in rows)


def test_tie_means_share_the_error_of_equal_scores() -> None:
    out = tie_means(np.array([1.0, 2.0, 1.0]), np.array([3.0, 5.0, 7.0]))
    assert out.tolist() == [5.0, 5.0, 5.0]


def test_icc_is_one_way_anova_icc1() -> None:
    """ICC(1) from its textbook mean squares: (MSB - MSW) / (MSB + (k - 1) MSW)."""
    runs = np.random.default_rng(0).normal(size=(9, 3)) + np.arange(9)[:, None] * 0.5
    n, k = runs.shape
    msb = k * ((runs.mean(1) - runs.mean()) ** 2).sum() / (n - 1)
    msw = ((runs - runs.mean(1, keepdims=True)) ** 2).sum() / (n * (k - 1))
    assert icc(runs) == pytest.approx((msb - msw) / (msb + (k - 1) * msw))


def test_noise_ceiling_of_seeds_that_agree_and_of_pure_noise() -> None:
    rng = np.random.default_rng(0)
    quality = np.linspace(40, 60, 20)
    agree = noise_ceiling(np.stack([quality + rng.normal(0, 0.1, 20), quality + rng.normal(0, 0.1, 20)], 1))
    assert agree["spearman"] > 0.99 and agree["candidate_share"] > 0.99 and agree["candidate_share_low"] > 0.95
    assert agree["seed_sd_pct"] == pytest.approx(0.1, rel=0.5)
    noise = noise_ceiling(rng.normal(50, 1, (20, 2)))
    assert noise["candidate_share_low"] < 0 < noise["candidate_share_high"]
    assert noise["spearman_low"] < noise["spearman"] < noise["spearman_high"]


def test_noise_ceiling_leaves_out_diverged_runs_and_needs_three_candidates() -> None:
    runs = np.array([[40.0, 41.0], [45.0, 46.0], [math.nan, 50.0], [50.0, 49.0]])
    assert noise_ceiling(runs)["n"] == 3
    assert math.isnan(noise_ceiling(runs[:2])["candidate_share"])
