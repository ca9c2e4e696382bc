"""Search: streamed results, argmax pick, determinism, resume after interruption."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from blockswap.search.candidates import Candidate
from blockswap.search.pool import build_candidate
from blockswap.search.run import SearchConfig, run_search
from blockswap.util.errors import BlockSwapError

CONFIG = SearchConfig(budget=40_000, model="wrn-10-1", samples=6, batch_size=16, seed=3)


def _rows(path: Path) -> list[dict[str, str]]:
    with (path / "candidates.csv").open() as f:
        return list(csv.DictReader(f))


def test_search_writes_ranked_candidates_and_best(tmp_path: Path) -> None:
    result = run_search(CONFIG, tmp_path, progress=False)
    rows = _rows(tmp_path)
    assert [int(r["index"]) for r in rows] == list(range(6))
    assert all(abs(int(r["params"]) - 40_000) < 1_000 for r in rows)
    assert all(len(r["score_per_block"].split()) == 3 for r in rows)
    top = max(rows, key=lambda r: float(r["score"]))
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["index"] == int(top["index"]) == result.best.index
    assert best["blocks"] == top["genotype"].split()
    assert best["score"] == float(top["score"]) and best["params"] == int(top["params"])
    assert best["macs"] == int(top["macs"])
    assert [c.score for c in result.candidates] == sorted((float(r["score"]) for r in rows), reverse=True)
    assert json.loads((tmp_path / "search.json").read_text())["budget"] == 40_000


def test_search_is_deterministic(tmp_path: Path) -> None:
    run_search(CONFIG, tmp_path / "a", progress=False)
    run_search(CONFIG, tmp_path / "b", progress=False)
    assert (tmp_path / "a" / "candidates.csv").read_text() == (tmp_path / "b" / "candidates.csv").read_text()


def test_resume_after_interruption_matches_uninterrupted(tmp_path: Path) -> None:
    run_search(CONFIG, tmp_path / "full", progress=False)

    class Stop(Exception):
        pass

    def stop_after_three(c: Candidate) -> None:
        if c.index == 2:
            raise Stop

    with pytest.raises(Stop):
        run_search(CONFIG, tmp_path / "cut", progress=False, on_scored=stop_after_three)
    cut = tmp_path / "cut"
    assert len(_rows(cut)) == 3 and not (cut / "best.json").exists()
    with (cut / "candidates.csv").open("a") as f:
        f.write("3,Conv DConv")  # a row half-written when the process died
    scored: list[int] = []
    result = run_search(CONFIG, cut, progress=False, on_scored=lambda c: scored.append(c.index))
    assert scored == [3, 4, 5]  # nothing rescored
    assert result.scored_now == 3
    assert (cut / "candidates.csv").read_text() == (tmp_path / "full" / "candidates.csv").read_text()
    assert (cut / "best.json").read_text() == (tmp_path / "full" / "best.json").read_text()
    again = run_search(CONFIG, cut, progress=False)
    assert again.scored_now == 0


def test_resume_refuses_a_different_search(tmp_path: Path) -> None:
    run_search(SearchConfig(**{**CONFIG.__dict__, "samples": 2}), tmp_path, progress=False)
    with pytest.raises(BlockSwapError, match="different search .*seed: 3 -> 4"):
        run_search(SearchConfig(**{**CONFIG.__dict__, "samples": 2, "seed": 4}), tmp_path, progress=False)


def test_candidate_weights_depend_on_seed_and_index_only() -> None:
    from blockswap.space.backbones import Backbone
    from blockswap.space.genotype import Genotype

    g = Genotype.uniform(Backbone.from_name("wrn-10-1"), "G4B2")
    a, b, c = build_candidate(g, 0, 5), build_candidate(g, 0, 5), build_candidate(g, 0, 6)
    wa, wb, wc = (next(m.parameters()) for m in (a, b, c))
    assert wa.equal(wb) and not wa.equal(wc)


def test_nan_scores_are_kept_counted_and_never_chosen(tmp_path: Path) -> None:
    import math

    import blockswap as bs

    if "nan-on-even" not in bs.scorer_names():
        @bs.register_scorer("nan-on-even")
        class NanOnEven:
            """Fisher's value, except NaN for candidates whose first weight is positive (about half of them)."""

            def __call__(self, model, batch):  # type: ignore[no-untyped-def]
                score = bs.FisherScorer()(model, batch)
                bad = float(next(model.parameters()).detach().flatten()[0]) > 0
                return bs.Score(math.nan, score.per_block) if bad else score

    result = run_search(SearchConfig(**{**CONFIG.__dict__, "scorer": "nan-on-even"}), tmp_path, progress=False)
    rows = _rows(tmp_path)
    nan_rows = [r for r in rows if r["score"] == "nan"]
    assert 0 < len(nan_rows) < len(rows) and result.non_finite == len(nan_rows)
    assert math.isfinite(result.best.score)
    best = json.loads((tmp_path / "best.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert best["score"] == max(float(r["score"]) for r in rows if r["score"] != "nan")


SCREENED = SearchConfig(budget=40_000, model="wrn-10-1", samples=6, batch_size=32, seed=3, screen_batch=8,
                        rescore_fraction=0.5)


def test_screening_that_keeps_every_candidate_is_the_paper_search(tmp_path: Path) -> None:
    keep_all = SearchConfig(**{**SCREENED.__dict__, "rescore_fraction": 1.0})
    paper = SearchConfig(**{**SCREENED.__dict__, "screen": False})
    screened = run_search(keep_all, tmp_path / "s", progress=False)
    unscreened = run_search(paper, tmp_path / "p", progress=False)
    assert screened.best.index == unscreened.best.index and screened.best.score == unscreened.best.score
    assert (tmp_path / "s" / "best.json").read_bytes() == (tmp_path / "p" / "best.json").read_bytes()
    full = {r["index"]: (r["score"], r["score_per_block"]) for r in _rows(tmp_path / "p")}
    rows = _rows(tmp_path / "s")
    assert {r["index"]: (r["score"], r["score_per_block"]) for r in rows} == full  # same weights, same batch
    assert all(r["screen_score"] and r["screen_score"] != r["score"] for r in rows)
    assert not any(r["screen_score"] for r in _rows(tmp_path / "p"))


def test_screened_search_rescores_the_best_screened_fraction(tmp_path: Path) -> None:
    result = run_search(SCREENED, tmp_path, progress=False)
    rows = _rows(tmp_path)
    by_screen = sorted(rows, key=lambda r: (-float(r["screen_score"]), int(r["index"])))
    assert {r["index"] for r in rows if r["score"]} == {r["index"] for r in by_screen[:3]}  # ceil(0.5 * 6)
    assert result.scored_now == 3 and result.screened_now == 6
    best = max((r for r in rows if r["score"]), key=lambda r: float(r["score"]))
    assert json.loads((tmp_path / "best.json").read_text())["index"] == int(best["index"]) == result.best.index


@pytest.mark.parametrize("stage", ["screen", "rescore"])
def test_resume_mid_screen_or_mid_rescore_gives_the_uninterrupted_rows(tmp_path: Path, stage: str) -> None:
    run_search(SCREENED, tmp_path / "full", progress=False)

    class Stop(Exception):
        pass

    seen: list[Candidate] = []

    def stop(c: Candidate) -> None:
        seen.append(c)
        rescoring = c.score is not None
        if (stage == "screen" and len(seen) == 2) or (stage == "rescore" and rescoring):
            raise Stop

    with pytest.raises(Stop):
        run_search(SCREENED, tmp_path / "cut", progress=False, on_scored=stop)
    with (tmp_path / "cut" / "candidates.csv").open("a") as f:
        f.write("5,Conv")  # a row half-written when the process died
    again: list[Candidate] = []
    run_search(SCREENED, tmp_path / "cut", progress=False, on_scored=again.append)
    if stage == "screen":
        assert sum(c.score is None for c in again) == 4  # the 4 unscreened, then the 3 re-scored
    else:
        assert all(c.score is not None for c in again) and len(again) == 2  # screening done; 2 of 3 re-scored left
    assert (tmp_path / "cut" / "candidates.csv").read_bytes() == (tmp_path / "full" / "candidates.csv").read_bytes()
    assert (tmp_path / "cut" / "best.json").read_bytes() == (tmp_path / "full" / "best.json").read_bytes()


def test_a_nan_screened_candidate_that_was_rescored_resumes(tmp_path: Path) -> None:
    """NaN on the slice, a real score on the whole batch: a cut re-scoring stage resumes to the same rows."""
    import math

    import blockswap as bs

    if "nan-on-slice" not in bs.scorer_names():
        @bs.register_scorer("nan-on-slice")
        class NanOnSlice:
            def __call__(self, model, batch):  # type: ignore[no-untyped-def]
                score = bs.FisherScorer()(model, batch)
                return bs.Score(math.nan, score.per_block) if len(batch[0]) < 32 else score

    config = SearchConfig(**{**SCREENED.__dict__, "scorer": "nan-on-slice", "rescore_fraction": 1.0})
    run_search(config, tmp_path / "full", progress=False)

    class Stop(Exception):
        pass

    def stop(c: Candidate) -> None:
        if c.score is not None:
            raise Stop

    with pytest.raises(Stop):
        run_search(config, tmp_path / "cut", progress=False, on_scored=stop)
    result = run_search(config, tmp_path / "cut", progress=False)
    assert result.scored_now == 5  # candidate 0 kept its NaN screen and its score; the rest (NaN only) are redone
    assert (tmp_path / "cut" / "candidates.csv").read_bytes() == (tmp_path / "full" / "candidates.csv").read_bytes()


def test_mac_budget_search_writes_only_candidates_inside_the_window(tmp_path: Path) -> None:
    config = SearchConfig(budget=None, budget_macs=8_000_000, model="wrn-10-1", samples=6, batch_size=16, seed=3)
    result = run_search(config, tmp_path, progress=False)
    rows = _rows(tmp_path)
    assert len(rows) == 6 and all(abs(int(r["macs"]) - 8_000_000) < 0.025 * 8_000_000 for r in rows)
    assert all(r["latency_ms"] == "" for r in rows)
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["budget_macs"] == 8_000_000 and best["budget"] is None and best["index"] == result.best.index
    assert not (tmp_path / "latency.json").exists()


def test_latency_budget_search_draws_from_the_table_it_keeps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import blockswap.space.latency as latency
    from blockswap.space.blocks import PALETTE_NAMES
    from blockswap.space.genotype import Genotype

    backbone = SearchConfig(budget=1, model="wrn-10-1").backbone()
    table, _ = latency.latency_table(backbone, PALETTE_NAMES, torch.device("cpu"), min_time=0.002, progress=False)
    target = table.predict(Genotype(backbone, ("G4B2", "DConv", "ConvB2")))
    config = SearchConfig(budget=None, budget_ms=target, model="wrn-10-1", samples=6, batch_size=16, seed=3)
    run_search(config, tmp_path / "s", progress=False)  # the cached table: nothing is timed
    rows = _rows(tmp_path / "s")
    assert len(rows) == 6
    for r in rows:
        g = Genotype(backbone, tuple(r["genotype"].split()))
        assert float(r["latency_ms"]) == table.predict(g)
        assert abs(float(r["latency_ms"]) - target) < 0.025 * target
    assert latency.LatencyTable.load(tmp_path / "s" / "latency.json") == table
    assert json.loads((tmp_path / "s" / "best.json").read_text())["latency_ms"] == table.predict(
        run_search(config, tmp_path / "s", progress=False).best.genotype)

    def no_timing(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a resumed search must use the table in its folder, not measure one")

    monkeypatch.setattr(latency, "measure_latency_table", no_timing)
    monkeypatch.setenv(latency.CACHE_ENV, str(tmp_path / "empty-cache"))
    (tmp_path / "s" / "candidates.csv").write_text((tmp_path / "s" / "candidates.csv").read_text().splitlines()[0]
                                                   + "\n")
    run_search(config, tmp_path / "s", progress=False)
    assert [r["genotype"] for r in _rows(tmp_path / "s")] == [r["genotype"] for r in rows]
    with pytest.raises(BlockSwapError, match="another model, batch size or thread count"):
        run_search(SearchConfig(**{**config.__dict__, "latency_batch": 2}), tmp_path / "s", progress=False)


def test_a_search_needs_a_budget() -> None:
    with pytest.raises(BlockSwapError, match="at least one budget"):
        SearchConfig(model="wrn-10-1")
    with pytest.raises(BlockSwapError, match="MAC budget"):
        SearchConfig(budget_macs="lots")
    with pytest.raises(BlockSwapError, match="latency_threads"):
        SearchConfig(budget=40_000, latency_threads=0)


def test_search_json_records_the_palette_names_and_an_old_null_palette_resumes(tmp_path: Path) -> None:
    from blockswap.space.blocks import PALETTE_NAMES

    run_search(CONFIG, tmp_path, progress=False)
    recorded = json.loads((tmp_path / "search.json").read_text())
    assert recorded["palette"] == list(PALETTE_NAMES) and len(PALETTE_NAMES) == 23
    recorded["palette"] = None  # as versions before the names were recorded wrote it
    (tmp_path / "search.json").write_text(json.dumps(recorded))
    assert run_search(CONFIG, tmp_path, progress=False).scored_now == 0
