"""The contrast study's pieces: which students it trains, and how it compares their groups."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from blockswap.study.contrast import BOTTOM, RANDOM, TOP, contrast_stats, plot_contrast, select_groups
from blockswap.util.errors import BlockSwapError


def _scores(n: int = 100, seed: int = 0) -> dict[int, float]:
    rng = np.random.default_rng(seed)
    return {i: float(v) for i, v in enumerate(rng.normal(size=n))}


def test_groups_are_fishers_best_a_seeded_draw_and_fishers_worst() -> None:
    fisher = _scores()
    fisher[7], fisher[8] = math.nan, math.inf  # never chosen as best or worst
    groups = select_groups({"fisher": fisher}, 5, seed=0)
    finite = sorted((i for i, s in fisher.items() if math.isfinite(s)), key=lambda i: -fisher[i])
    assert groups[TOP] == finite[:5]
    assert groups[BOTTOM] == finite[-5:][::-1]
    assert len(groups[RANDOM]) == 5 == len(set(groups[RANDOM])) and set(groups[RANDOM]) <= set(fisher)
    assert select_groups({"fisher": fisher}, 5, seed=0)[RANDOM] == groups[RANDOM]
    assert select_groups({"fisher": fisher}, 5, seed=1)[RANDOM] != groups[RANDOM]
    assert list(groups) == [TOP, RANDOM, BOTTOM]


def test_another_ranking_gets_its_own_group_only_when_its_top_differs() -> None:
    fisher = _scores()
    same = {i: 2 * s for i, s in fisher.items()}  # same order: same top-k, no extra group
    other = {i: -s for i, s in fisher.items()}
    screened = {i: (s if i % 2 else math.nan) for i, s in fisher.items()}  # only half re-scored
    groups = select_groups({"fisher": fisher, "fisher.mean4": same, "screened": screened, "other": other}, 4, 0)
    assert "fisher.mean4-top" not in groups
    assert groups["other-top"] == groups[BOTTOM]
    assert all(i % 2 for i in groups.get("screened-top", [1]))


def test_a_pool_too_small_for_two_groups_is_refused() -> None:
    with pytest.raises(BlockSwapError, match="at least 8 candidates"):
        select_groups({"fisher": _scores(7)}, 4, 0)


def test_a_clear_difference_has_an_interval_below_zero_and_a_small_p() -> None:
    groups = {TOP: list(range(8)), RANDOM: list(range(8, 16)), BOTTOM: list(range(16, 24))}
    rng = np.random.default_rng(0)
    errors = {i: 40 + 5 * (i // 8) + float(rng.normal(0, 0.5)) for i in range(24)}
    errors[3] = math.nan  # a diverged run is left out
    stats = contrast_stats(errors, groups, resamples=2000, seed=0)
    assert stats["groups"][TOP]["n"] == 7
    top = stats["groups"][TOP]
    assert top["low"] < top["mean_error_pct"] < top["high"]
    versus_random, versus_bottom = stats["differences"]
    assert (versus_random["group"], versus_random["versus"]) == (TOP, RANDOM)
    assert versus_random["difference_pct"] == pytest.approx(
        np.nanmean([errors[i] for i in range(8)]) - np.mean([errors[i] for i in range(8, 16)]))
    assert versus_random["high"] < 0 and versus_random["p_value"] < 0.01
    assert versus_bottom["difference_pct"] < versus_random["difference_pct"]


def test_no_difference_has_an_interval_around_zero() -> None:
    rng = np.random.default_rng(1)
    groups = {TOP: list(range(8)), RANDOM: list(range(8, 16)), BOTTOM: list(range(16, 24))}
    errors = {i: 50 + float(rng.normal()) for i in range(24)}
    stats = contrast_stats(errors, groups, resamples=2000, seed=0)
    for row in stats["differences"]:
        assert row["low"] < 0 < row["high"] and row["p_value"] > 0.05


def test_the_plot_is_written(tmp_path: Path) -> None:
    groups = {TOP: [0, 1, 2], RANDOM: [3, 4, 5], BOTTOM: [6, 7, 8]}
    errors = {i: 40.0 + i for i in range(9)}
    plot_contrast(tmp_path / "contrast.png", errors, groups, contrast_stats(errors, groups, 500), "title")
    assert (tmp_path / "contrast.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def contrast_study(cifar_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A tiny contrast study: 12 candidates scored, 2 per group trained (inits 2 adds the averaged ranking)."""
    pytest.importorskip("scipy")
    from blockswap.study.config import StudyConfig
    from blockswap.study.run import run_study

    config = StudyConfig(budget=40_000, data_dir=str(cifar_root), model="wrn-10-1", candidates=12, contrast=2,
                         proxies=["fisher", "params"], inits=2, batch_size=32, epochs=1, train_subset=64,
                         test_subset=64, train_seeds=[0, 1])
    out = tmp_path_factory.mktemp("contrast")
    run_study(config, out, progress=False)
    return out, config


def test_a_contrast_study_scores_the_pool_and_trains_only_its_groups(contrast_study: tuple[Path, object]) -> None:
    import csv
    import json

    from blockswap.study.report import read_results

    out, config = contrast_study
    with (out / "pool" / "fisher" / "candidates.csv").open(newline="") as f:
        pool = {int(r["index"]): float(r["score"]) for r in csv.DictReader(f)}
    assert sorted(pool) == list(range(12))
    assert (out / "pool" / "fisher.mean2" / "candidates.csv").is_file()
    assert (out / "pool" / "screened" / "candidates.csv").is_file()
    groups = json.loads((out / "groups.json").read_text())
    assert groups[TOP] == sorted(pool, key=lambda i: -pool[i])[:2]
    assert groups[BOTTOM] == sorted(pool, key=lambda i: pool[i])[:2]
    trained = sorted({i for members in groups.values() for i in members})
    assert sorted(int(p.name) for p in (out / "candidates").iterdir()) == trained
    rows = read_results(out)
    assert [int(r["index"]) for r in rows] == trained
    for r in rows:  # the study's own Fisher proxy is the pool search's score of the same candidate
        assert r["fisher"] == pytest.approx(pool[int(r["index"])], rel=1e-4)
    report = json.loads((out / "study.json").read_text())
    assert report["contrast"]["members"] == groups
    assert {(d["group"], d["versus"]) for d in report["contrast"]["differences"]} >= {(TOP, RANDOM), (TOP, BOTTOM)}
    text = (out / "report.md").read_text()
    assert text.startswith("# Contrast study") and "## Does the pick matter?" in text
    assert (out / "contrast.png").read_bytes()[:4] == b"\x89PNG"


def test_a_contrast_study_without_weight_files_resumes_without_training(contrast_study: tuple[Path, object],
                                                                        tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """What a repository keeps of a study (no .pt files) is a finished study: rerun, it trains and scores nothing."""
    import shutil

    from blockswap.study import contrast as contrast_module
    from blockswap.study import run as study_module
    from blockswap.study.run import run_study

    out, config = contrast_study
    kept = tmp_path / "kept"
    shutil.copytree(out, kept, ignore=shutil.ignore_patterns("*.pt"))
    assert not list(kept.rglob("*.pt"))
    missing = sorted(kept.glob("candidates/*"))[-1]
    shutil.rmtree(missing / "seed-1")  # one run not committed yet: only it is trained again

    trained: list[tuple[str, int]] = []

    def count(run_config: object, run: Path, **kwargs: object) -> dict:
        trained.append((Path(run).parent.name, run_config.seed))
        Path(run).mkdir(parents=True, exist_ok=True)
        shutil.copy(missing / "seed-0" / "final.json", Path(run) / "final.json")
        return {}

    monkeypatch.setattr(study_module, "train", count)
    monkeypatch.setattr(contrast_module, "run_search", None)  # the pool is not searched again
    run_study(config, kept, progress=False)
    assert trained == [(missing.name, 1)]
