"""The ranking study: outputs, resuming after an interruption, nothing retrained on a rerun, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("scipy")
pytest.importorskip("matplotlib")

from blockswap.study import run as study_module  # noqa: E402
from blockswap.study.config import StudyConfig, parse_proxy
from blockswap.study.report import read_results, study_samples
from blockswap.study.run import run_study
from blockswap.util.errors import BlockSwapError  # noqa: E402


def _config(cifar_root: Path, **changes: object) -> StudyConfig:
    base = StudyConfig(budget=40_000, data_dir=str(cifar_root), model="wrn-10-1", candidates=4,
                       proxies=["fisher", "synflow", "params", "l2@2", "accuracy@2"], inits=2, average=["fisher"],
                       batch_size=32, epochs=1, train_subset=96, test_subset=64, train_seeds=[0, 1])
    return replace(base, **changes)


@pytest.fixture(scope="module")
def finished(cifar_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("study")
    run_study(_config(cifar_root), out, progress=False)
    return out


def test_a_study_writes_its_four_outputs(finished: Path, cifar_root: Path) -> None:
    for name in ("results.csv", "study.json", "report.md", "proxies.png"):
        assert (finished / name).is_file(), name
    rows = read_results(finished)
    config = _config(cifar_root)
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    assert [r["genotype"] for r in rows] == [" ".join(g.blocks) for g in config.genotypes()]
    for r in rows:
        assert r["params"] == r["params"]  # the params proxy is the count column itself
        assert r["test_error_pct"] == pytest.approx((r["test_error_pct_seed0"] + r["test_error_pct_seed1"]) / 2)
        assert r["fisher.mean2"] > 0
    report = json.loads((finished / "study.json").read_text())
    assert set(report["proxies"]) == {"fisher", "synflow", "params", "l2@2", "accuracy@2", "fisher.mean2"}
    assert report["noise_ceiling"]["seeds"] == [0, 1]
    table = (finished / "report.md").read_text()
    assert "| fisher.mean2 |" in table and "Noise ceiling" in table


def test_scores_are_the_search_candidates_scores(finished: Path, cifar_root: Path) -> None:
    """Candidate i of a study is candidate i of a search with the same seed: same genotype, weights, batch."""
    import blockswap as bs

    search = bs.run_search(bs.SearchConfig(budget=40_000, model="wrn-10-1", samples=4, batch_size=32, screen=False,
                                           data_dir=str(cifar_root), scorer="fisher"),
                           finished.parent / "search", progress=False)
    rows = read_results(finished)
    for c in search.candidates:
        assert rows[c.index]["fisher"] == pytest.approx(c.score, rel=1e-5)  # thread counts may differ


def test_rerunning_a_finished_study_trains_and_scores_nothing(finished: Path, cifar_root: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished study was worked on again")

    monkeypatch.setattr(study_module, "train", refuse)
    monkeypatch.setattr(study_module, "_score_all", refuse)
    before = (finished / "results.csv").read_bytes()
    run_study(_config(cifar_root), finished, progress=False)
    assert (finished / "results.csv").read_bytes() == before


def test_a_resumed_study_equals_an_uninterrupted_one(finished: Path, cifar_root: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    real_train = study_module.train
    calls = {"n": 0}

    def train_then_stop(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 4:  # candidate 1, seed 1: interrupted as Ctrl-C would
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(study_module, "train", train_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_study(_config(cifar_root), tmp_path, progress=False)
    assert not (tmp_path / "results.csv").exists()
    monkeypatch.setattr(study_module, "train", real_train)
    run_study(_config(cifar_root), tmp_path, progress=False)
    assert (tmp_path / "results.csv").read_bytes() == (finished / "results.csv").read_bytes()


def test_a_study_folder_refuses_other_settings(finished: Path, cifar_root: Path) -> None:
    with pytest.raises(BlockSwapError, match="epochs"):
        run_study(_config(cifar_root, epochs=2), finished, progress=False)


def test_samples_from_a_finished_study(finished: Path) -> None:
    table = study_samples(finished, sizes=[1, 2, 4], proxies=["fisher", "params"])
    rows = read_results(finished)
    error = np.array([r["test_error_pct"] for r in rows])
    fisher = [r for r in table if r["proxy"] == "fisher"]
    assert [r["n"] for r in fisher] == [1, 2, 4]
    assert fisher[0]["expected_error_pct"] == pytest.approx(error.mean())
    assert fisher[-1]["expected_error_pct"] == pytest.approx(error[np.argmax([r["fisher"] for r in rows])])
    assert (finished / "samples.csv").is_file() and (finished / "samples.png").is_file()
    with pytest.raises(BlockSwapError, match="sample sizes"):
        study_samples(finished, sizes=[5])
    for name in ("nope", "test_error_pct", "test_error_pct_seed0"):  # the target is not a proxy of itself
        with pytest.raises(BlockSwapError, match=f"has no proxy '{name}'"):
            study_samples(finished, proxies=[name])


def test_edited_records_of_a_study_are_refused(finished: Path, tmp_path: Path) -> None:
    import json
    import shutil

    from blockswap.study.report import write_report

    for edit, message in [("scores", "scores.json is not candidate 1's"), ("final", "final.json is not the record"),
                          ("error", "final.json is not the record"), ("results", "candidate 2 appears twice")]:
        out = tmp_path / edit
        shutil.copytree(finished, out)
        folder = out / "candidates" / "0001"
        if edit == "scores":  # candidate 0's scores copied over candidate 1's
            shutil.copy(out / "candidates" / "0000" / "scores.json", folder / "scores.json")
        elif edit in ("final", "error"):
            final = json.loads((folder / "seed-1" / "final.json").read_text())
            final.update({"blocks": ["Conv"] * 3} if edit == "final" else {"test_error_pct": 1e9})
            (folder / "seed-1" / "final.json").write_text(json.dumps(final))
        if edit == "results":
            lines = (out / "results.csv").read_text().splitlines(keepends=True)
            (out / "results.csv").write_text("".join(lines[:2] + [lines[3], lines[3]] + lines[4:]))
            with pytest.raises(BlockSwapError, match=message):
                study_samples(out)
        else:
            with pytest.raises(BlockSwapError, match=message):
                write_report(out)


@pytest.mark.parametrize("name, message", [
    ("fisher@0", "positive whole number"), ("nope", "unknown proxy"), ("trained@3", "unknown proxy"),
    ("fisher@x", "positive whole number")])
def test_bad_proxy_names_are_refused(name: str, message: str) -> None:
    with pytest.raises(BlockSwapError, match=message):
        parse_proxy(name)


def test_bad_study_settings_are_refused(cifar_root: Path) -> None:
    with pytest.raises(BlockSwapError, match="at least 3"):
        _config(cifar_root, candidates=2)
    with pytest.raises(BlockSwapError, match="named twice"):
        _config(cifar_root, proxies=["l2", "l2"], average=None)
    with pytest.raises(BlockSwapError, match="--average"):
        _config(cifar_root, average=["params"])
    with pytest.raises(BlockSwapError, match="distinct"):
        _config(cifar_root, train_seeds=[1, 1])


def test_cli_study_rank_and_samples(finished: Path, cifar_root: Path, tmp_path: Path) -> None:
    """The CLI on a finished folder reports without training; samples prints its table; bad input is one line."""
    argv = [sys.executable, "-m", "blockswap", "study", "rank", "--model", "wrn-10-1", "--budget", "40k",
            "--candidates", "4", "--proxies", "fisher,synflow,params,l2@2,accuracy@2", "--inits", "2",
            "--average", "fisher", "--batch-size", "32", "--epochs", "1", "--train-subset", "96", "--test-subset",
            "64", "--train-seeds", "0,1", "--data-dir", str(cifar_root), "--out", str(finished), "--quiet"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "4 candidates" in done.stdout
    samples = subprocess.run([sys.executable, "-m", "blockswap", "study", "samples", "--study", str(finished),
                              "--sizes", "1,4"], capture_output=True, text=True, timeout=300)
    assert samples.returncode == 0, samples.stderr
    assert "n=4" in samples.stdout
    bad = subprocess.run([sys.executable, "-m", "blockswap", "study", "samples", "--study", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "results.csv" in bad.stderr


def test_a_diverged_candidate_is_recorded_and_left_out(cifar_root: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from blockswap.train.training import DivergedError

    real_train = study_module.train

    def diverge_candidate_1(config: object, run: Path, **kwargs: object) -> object:
        if Path(run).parent.name == "0001":
            raise DivergedError("training loss became nan in epoch 1")
        return real_train(config, run, **kwargs)

    monkeypatch.setattr(study_module, "train", diverge_candidate_1)
    config = _config(cifar_root, proxies=["l2", "params"], inits=1, average=None, train_seeds=[0])
    report = run_study(config, tmp_path, progress=False)
    assert report["diverged"] == 1 and report["proxies"]["l2"]["n"] == 3
    assert "nan" in json.loads((tmp_path / "candidates" / "0001" / "seed-0" / "failed.json").read_text())["reason"]
    assert np.isnan(read_results(tmp_path)[1]["test_error_pct"])
    assert "diverged" in (tmp_path / "report.md").read_text()
    table = study_samples(tmp_path, proxies=["l2"])  # the diverged candidate is not in the pool
    assert [r["n"] for r in table] == [1, 2, 3]
    monkeypatch.setattr(study_module, "train", lambda *a, **k: pytest.fail("a finished study trained again"))
    run_study(config, tmp_path, progress=False)  # the diverged run counts as done


class _NanProxy:
    """A proxy with no value for candidate 0 (as naswot on a singular kernel): kept as NaN, never picked."""

    log_average = True

    def __call__(self, model: object, batch: object) -> object:
        from blockswap.scoring.proxies import L2Scorer
        from blockswap.scoring.scorer import Score

        score = L2Scorer()(model, batch)  # type: ignore[arg-type]
        return Score(float("nan") if model.block_names[0] == _FIRST_BLOCK else score.total, ())  # type: ignore[attr-defined]


_FIRST_BLOCK = ""


def test_a_non_finite_proxy_value_is_kept_as_nan(cifar_root: Path, tmp_path: Path) -> None:
    global _FIRST_BLOCK
    from blockswap.scoring.scorer import register_scorer, scorer_names

    if "test_nan_proxy" not in scorer_names():
        register_scorer("test_nan_proxy")(_NanProxy)
    config = _config(cifar_root, proxies=["test_nan_proxy", "l2"], inits=1, average=None, train_seeds=[0])
    _FIRST_BLOCK = config.genotypes()[0].blocks[0]
    report = run_study(config, tmp_path, progress=False)
    rows = read_results(tmp_path)
    nan_rows = [r for r in rows if r["genotype"].split()[0] == _FIRST_BLOCK]
    assert nan_rows and all(np.isnan(r["test_nan_proxy"]) for r in nan_rows)
    assert report["proxies"]["test_nan_proxy"]["n"] == 4 - len(nan_rows)
    assert json.loads((tmp_path / "study.json").read_text())  # strict JSON
    study_samples(tmp_path, proxies=["test_nan_proxy"])


def test_a_study_that_cannot_start_leaves_no_config(cifar_root: Path, tmp_path: Path) -> None:
    with pytest.raises(BlockSwapError):
        run_study(_config(cifar_root, budget=10), tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "config.json").exists()


def test_ctrl_c_stops_a_study_with_workers_at_once_and_it_resumes(cifar_root: Path, tmp_path: Path) -> None:
    """SIGINT while two worker processes train: the study exits within seconds (not after the candidates in
    training), leaves no process behind, and the same command then finishes the study."""
    import os
    import signal
    import time

    from test_workers import REPO, _assert_gone, _children

    out = tmp_path / "s"
    argv = [sys.executable, "-m", "blockswap", "study", "rank", "--model", "wrn-10-1", "--budget", "40k",
            "--candidates", "4", "--proxies", "l2,params", "--batch-size", "32", "--epochs", "30",
            "--train-subset", "64", "--test-subset", "32", "--data-dir", str(cifar_root), "--workers", "2",
            "--quiet", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(out.glob("candidates/*/seed-0/metrics.jsonl")):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "no candidate trained an epoch in 2 minutes"
        time.sleep(0.2)
    family = _children(proc.pid)
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - start < 20
    assert proc.returncode == 128 + signal.SIGINT
    assert "interrupted" in err and err.count("\n") == 1
    _assert_gone(family, "SIGINT")
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert len(read_results(out)) == 4


def test_a_plugin_proxy_reaches_the_study_workers(cifar_root: Path, tmp_path: Path) -> None:
    """A scorer registered by a $BLOCKSWAP_PLUGINS file (made by a factory function: nothing to pickle) is a proxy of
    a study whose candidates train in two worker processes."""
    import os

    from test_workers import CLOSURE_PLUGIN, REPO

    (tmp_path / "study_plugin.py").write_text(CLOSURE_PLUGIN.format(suffix=""))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1",
           "BLOCKSWAP_PLUGINS": str(tmp_path / "study_plugin.py")}
    argv = [sys.executable, "-m", "blockswap", "study", "rank", "--model", "wrn-10-1", "--budget", "40k",
            "--candidates", "3", "--proxies", "weight-count,params", "--batch-size", "32", "--epochs", "1",
            "--train-subset", "64", "--test-subset", "32", "--data-dir", str(cifar_root), "--workers", "2",
            "--quiet", "--out", str(tmp_path / "s")]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_results(tmp_path / "s")
    assert len(rows) == 3 and all(r["weight-count"] == r["params"] for r in rows)
    assert all(np.isfinite(r["test_error_pct"]) for r in rows)


def test_torchrun_ranks_share_the_candidates_and_rank_0_reports(finished: Path, cifar_root: Path,
                                                               tmp_path: Path) -> None:
    """Two torchrun ranks each take their share of the pool; rank 0 writes the report of the whole pool,
    with the single process's proxy values (up to thread-count rounding) and errors."""
    import os

    from test_workers import REPO

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
           "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "blockswap", "study", "rank", "--model", "wrn-10-1", "--budget", "40k", "--candidates", "4",
            "--proxies", "fisher,synflow,params,l2@2,accuracy@2", "--inits", "2", "--average", "fisher",
            "--batch-size", "32", "--epochs", "1", "--train-subset", "96", "--test-subset", "64",
            "--train-seeds", "0,1", "--data-dir", str(cifar_root), "--out", str(tmp_path), "--quiet"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("4 candidates") == 1  # rank 0 alone reports
    ours, theirs = read_results(tmp_path), read_results(finished)
    assert [r["genotype"] for r in ours] == [r["genotype"] for r in theirs]
    for a, b in zip(ours, theirs):
        for name in ("fisher", "synflow", "params", "fisher.mean2"):
            assert a[name] == pytest.approx(b[name], rel=1e-4)
        assert a["test_error_pct"] == pytest.approx(b["test_error_pct"], abs=5)  # 64 test images: 1.6 points each
