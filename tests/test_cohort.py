"""Cohorts, the floor of the paper's studies: every student trained once per seed, resumed, checked, tabulated."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import blockswap.study.cohort as cohort_module
from blockswap import Backbone, Genotype
from blockswap.study.cohort import (
    Student,
    claim_out_dir,
    cohort_ceiling,
    cohort_rows,
    student_dir,
    train_cohort,
    write_cohort_csv,
)
from blockswap.study.config import CohortConfig
from blockswap.util.errors import BlockSwapError

BACKBONE = Backbone.from_name("wrn-10-1")
STUDENTS = [Student("all-Conv", "single", Genotype.uniform(BACKBONE)),
            Student("all-G4B2", "single", Genotype.uniform(BACKBONE, "G4B2")),
            Student("mixed", "mixed", Genotype(BACKBONE, ("DConv", "G4B2", "Conv")))]


def _config(cifar_root: Path, **changes: object) -> CohortConfig:
    settings = dict(data_dir=str(cifar_root), model="wrn-10-1", epochs=1, batch_size=32, train_subset=64,
                    test_subset=50, train_seeds=[0, 1])
    config = CohortConfig(**{**settings, **changes})  # type: ignore[arg-type]
    config.check_cohort()
    return config


@pytest.fixture(scope="module")
def trained(cifar_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cohort")
    train_cohort(_config(cifar_root), STUDENTS, out, progress=False)
    return out


def test_rows_hold_each_runs_final_error_and_their_mean(trained: Path, cifar_root: Path) -> None:
    rows = cohort_rows(_config(cifar_root), STUDENTS, trained)
    assert [r["name"] for r in rows] == [s.name for s in STUDENTS]
    for row, student in zip(rows, STUDENTS):
        finals = [json.loads((trained / "students" / student.name / f"seed-{k}" / "final.json").read_text())
                  for k in (0, 1)]
        errors = [f["test_error_pct"] for f in finals]
        assert [row["test_error_pct_seed0"], row["test_error_pct_seed1"]] == errors
        assert row["test_error_pct"] == pytest.approx(np.mean(errors))
        assert row["test_error_sd_pct"] == pytest.approx(np.std(errors, ddof=1))
        assert finals[0]["blocks"] == list(student.genotype.blocks)  # each folder trained its own student
        assert row["params"] == student.genotype.params() == finals[0]["params"]
        assert row["macs"] == student.genotype.macs()
    ceiling = cohort_ceiling(_config(cifar_root), rows)
    assert ceiling is not None and ceiling["seeds"] == [0, 1] and ceiling["n"] == 3
    assert cohort_ceiling(_config(cifar_root, train_seeds=[0]), rows) is None


def test_a_rerun_trains_nothing(trained: Path, cifar_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cohort_module, "train", lambda *a, **k: pytest.fail("a finished run was trained again"))
    train_cohort(_config(cifar_root), STUDENTS, trained, progress=False)


def test_a_cohort_at_another_data_path_is_refused_with_the_recorded_path_to_link(cifar_root: Path,
                                                                                 tmp_path: Path) -> None:
    claim_out_dir(tmp_path / "study", _config(cifar_root), "cohort")
    here = tmp_path / "cifar-here"
    here.symlink_to(cifar_root, target_is_directory=True)
    with pytest.raises(BlockSwapError, match=f"give --data-dir {cifar_root} as recorded: a link there to your copy"):
        claim_out_dir(tmp_path / "study", _config(here), "cohort")


def test_a_finished_run_of_another_student_is_refused(trained: Path, cifar_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "edited"
    shutil.copytree(trained, out)
    swapped = out / "students" / "all-G4B2" / "seed-1"
    shutil.rmtree(swapped)
    shutil.copytree(out / "students" / "all-Conv" / "seed-1", swapped)
    with pytest.raises(BlockSwapError, match=r"all-G4B2/seed-1 holds another training run .*genotype"):
        train_cohort(_config(cifar_root), STUDENTS, out, progress=False)


def test_an_interrupted_cohort_resumes_to_the_same_rows(trained: Path, cifar_root: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    real_train, calls = cohort_module.train, {"n": 0}

    def train_then_stop(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 3:  # the second student's first seed, stopped as Ctrl-C would stop it
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(cohort_module, "train", train_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train_cohort(_config(cifar_root), STUDENTS, tmp_path, progress=False)
    monkeypatch.setattr(cohort_module, "train", real_train)
    train_cohort(_config(cifar_root), STUDENTS, tmp_path, progress=False)
    assert cohort_rows(_config(cifar_root), STUDENTS, tmp_path) == cohort_rows(_config(cifar_root), STUDENTS, trained)


def test_two_workers_train_the_same_runs_as_one(trained: Path, cifar_root: Path, tmp_path: Path) -> None:
    config = _config(cifar_root, train_seeds=[0])
    train_cohort(config, STUDENTS[:2], tmp_path, workers=2, progress=False)
    for student in STUDENTS[:2]:
        assert (student_dir(tmp_path, student) / "seed-0" / "final.json").read_text() != ""
        assert (json.loads((student_dir(tmp_path, student) / "seed-0" / "final.json").read_text())["test_error_pct"]
                == json.loads((student_dir(trained, student) / "seed-0" / "final.json").read_text())["test_error_pct"])


def test_a_diverged_run_is_left_out_of_the_mean(trained: Path, cifar_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "diverged"
    shutil.copytree(trained, out)
    run = out / "students" / "mixed" / "seed-1"
    shutil.rmtree(run)
    run.mkdir()
    (run / "failed.json").write_text('{"reason": "loss became nan"}')
    row = cohort_rows(_config(cifar_root), STUDENTS, out)[2]
    assert np.isnan(row["test_error_pct_seed1"]) and np.isnan(row["test_error_sd_pct"])
    assert row["test_error_pct"] == row["test_error_pct_seed0"]


def test_an_unfinished_cohort_has_no_rows(trained: Path, cifar_root: Path, tmp_path: Path) -> None:
    with pytest.raises(BlockSwapError, match="is not finished; rerun the study"):
        cohort_rows(_config(cifar_root), STUDENTS, tmp_path)


def test_student_names_are_folder_names_and_unique(cifar_root: Path, tmp_path: Path) -> None:
    for bad in ("", "../up", "a/b", "-flag", "with space"):
        with pytest.raises(BlockSwapError, match="a student's name"):
            Student(bad, "g", Genotype.uniform(BACKBONE))
    with pytest.raises(BlockSwapError, match="two students are named 'all-Conv'"):
        train_cohort(_config(cifar_root), [STUDENTS[0], STUDENTS[0]], tmp_path, progress=False)
    assert not (tmp_path / "students").exists()


def test_a_pruned_student_has_no_macs() -> None:
    pruned = Student("snip-10K", "snip", Genotype.uniform(BACKBONE), prune="snip", prune_budget=10_000)
    assert pruned.macs() is None and STUDENTS[0].macs() == Genotype.uniform(BACKBONE).macs()


def test_the_folder_is_claimed_once_for_one_configuration(cifar_root: Path, tmp_path: Path) -> None:
    claim_out_dir(tmp_path, _config(cifar_root), "test")
    claim_out_dir(tmp_path, _config(cifar_root), "test")
    with pytest.raises(BlockSwapError, match=r"holds a different test .*epochs: 1 -> 2"):
        claim_out_dir(tmp_path, _config(cifar_root, epochs=2), "test")


def test_csv_cells_keep_commas_and_leave_missing_values_empty(tmp_path: Path) -> None:
    write_cohort_csv(tmp_path / "r.csv", [{"name": "a,b", "macs": None, "err": float("nan"), "x": 0.1}])
    assert (tmp_path / "r.csv").read_text() == 'name,macs,err,x\n"a,b",,,0.1\n'


def test_an_edited_final_record_is_refused(trained: Path, cifar_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "edited"
    shutil.copytree(trained, out)
    final_path = out / "students" / "all-G4B2" / "seed-0" / "final.json"
    final = json.loads(final_path.read_text())
    final["blocks"] = ["Conv", "Conv", "Conv"]
    final_path.write_text(json.dumps(final))
    with pytest.raises(BlockSwapError, match=r"all-G4B2/seed-0/final.json is not the record of the run"):
        cohort_rows(_config(cifar_root), STUDENTS, out)


def test_torchrun_ranks_share_a_cohort_study_and_rank_0_reports(cifar_root: Path, tmp_path: Path) -> None:
    """Two torchrun ranks train their share of a placement study's students; rank 0 reports them all, with the
    single process's students and errors (up to thread-count rounding on 64 test images)."""
    import os
    import subprocess
    import sys

    from test_workers import REPO

    from blockswap.cli import main

    options = ["study", "placement", "--model", "wrn-10-1", "--epochs", "1", "--batch-size", "32", "--train-subset",
               "96", "--test-subset", "64", "--data-dir", str(cifar_root), "--quiet"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
           "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "blockswap",
            *options, "--out", str(tmp_path / "ranks")]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("most sensitive") == 1  # rank 0 alone reports
    assert main([*options, "--out", str(tmp_path / "one")]) == 0
    ranks, one = (list(csv.DictReader((tmp_path / name / "results.csv").open())) for name in ("ranks", "one"))
    assert [(r["name"], r["genotype"], r["params"]) for r in ranks] == [(r["name"], r["genotype"], r["params"])
                                                                        for r in one]
    for a, b in zip(ranks, one):
        assert float(a["test_error_pct"]) == pytest.approx(float(b["test_error_pct"]), abs=5)
