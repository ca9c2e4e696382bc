"""Protocols side by side: each study folder's noise ceiling and cost, read from its candidates' run files."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("scipy")

from blockswap.cli import main  # noqa: E402
from blockswap.study.config import StudyConfig  # noqa: E402
from blockswap.study.protocols import compare_protocols, protocol_row  # noqa: E402
from blockswap.study.ranking import noise_ceiling  # noqa: E402


def _study(folder: Path, errors: np.ndarray, seconds: float, epochs: int = 2, unfinished: int = 0) -> Path:
    """A study folder as `study rank` leaves it: config.json and each candidate's seed runs' final.json."""
    config = StudyConfig(budget=60_000, data_dir="data", model="wrn-16-1", candidates=len(errors) + unfinished,
                         epochs=epochs, train_seeds=[0, 1])
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(asdict(config)))
    for i, pair in enumerate(errors):
        for seed, error in zip((0, 1), pair):
            run = folder / "candidates" / f"{i:04d}" / f"seed-{seed}"
            run.mkdir(parents=True)
            (run / "final.json").write_text(json.dumps({"test_error_pct": float(error), "seconds": seconds}))
    if unfinished:  # a candidate with one seed done: not counted yet
        run = folder / "candidates" / f"{len(errors):04d}" / "seed-0"
        run.mkdir(parents=True)
        (run / "final.json").write_text(json.dumps({"test_error_pct": 50.0, "seconds": seconds}))
    return folder


def test_a_row_holds_the_noise_ceiling_of_the_finished_candidates(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    quality = np.linspace(40, 50, 8)
    errors = np.stack([quality + rng.normal(0, 0.3, 8), quality + rng.normal(0, 0.3, 8)], 1)
    row = protocol_row(_study(tmp_path / "p", errors, seconds=120.0, unfinished=1))
    expected = noise_ceiling(errors)
    assert row["candidates_finished"] == 8 and row["candidates"] == 9
    assert row["seed_spearman"] == pytest.approx(expected["spearman"])
    assert row["icc"] == pytest.approx(expected["candidate_share"]) and row["icc"] > 0.9
    assert row["icc_low"] <= row["icc"] <= row["icc_high"]
    assert row["run_minutes"] == pytest.approx(2.0)
    assert (row["train_images"], row["test_images"], row["epochs"]) == (50_000, 10_000, 2)


def test_the_cli_writes_the_table_the_csv_and_the_plot(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rng = np.random.default_rng(1)
    quality = np.linspace(40, 50, 6)
    agree = _study(tmp_path / "agree", np.stack([quality, quality + rng.normal(0, 0.2, 6)], 1), 60.0, epochs=3)
    noise = _study(tmp_path / "noise", rng.normal(45, 2, (6, 2)), 30.0)
    assert main(["study", "protocols", str(agree), str(noise), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "| agree |" in printed and "| noise |" in printed
    with (tmp_path / "out" / "protocols.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["protocol"] for r in rows] == ["agree", "noise"]
    assert float(rows[0]["icc"]) > float(rows[1]["icc"])
    table = (tmp_path / "out" / "protocols.md").read_text()
    assert table.splitlines()[2].endswith("| yes |") and table.splitlines()[3].endswith("| no |")
    assert (tmp_path / "out" / "protocols.png").read_bytes()[:4] == b"\x89PNG"


def test_a_committed_report_without_candidate_folders_is_read_from_results_csv() -> None:
    folder = Path(__file__).resolve().parents[1] / "studies" / "rank-wrn16-2-200k-cpu-6ep"
    row = protocol_row(folder)
    assert row["candidates_finished"] == 11
    assert row["seed_spearman"] == pytest.approx(0.5467, abs=1e-3) and row["icc"] == pytest.approx(0.3347, abs=1e-3)
    assert row["run_minutes"] != row["run_minutes"]  # no timings in a report: NaN, not a made-up figure


def test_compare_needs_a_folder(tmp_path: Path) -> None:
    from blockswap.util.errors import BlockSwapError

    with pytest.raises(BlockSwapError, match="at least one"):
        compare_protocols([], tmp_path)
