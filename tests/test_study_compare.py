"""The comparison study (Tables 2 and 6, Fig. 3): its students, its table against the runs, resuming, the CLI."""

from __future__ import annotations

import csv
import json
import shutil
import statistics
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("scipy")
pytest.importorskip("matplotlib")

from blockswap import cli  # noqa: E402
from blockswap.space.backbones import get_backbone  # noqa: E402
from blockswap.space.blocks import PALETTE_NAMES  # noqa: E402
from blockswap.space.genotype import Genotype  # noqa: E402
from blockswap.space.sampling import CostTable  # noqa: E402
from blockswap.study import cohort as cohort_module  # noqa: E402
from blockswap.study import compare as compare_module  # noqa: E402
from blockswap.study.compare import (  # noqa: E402
    CompareConfig,
    budget_text,
    default_scaled,
    pick_versus_random,
    run_compare,
)
from blockswap.util.errors import BlockSwapError  # noqa: E402

BUDGETS = [25_000, 50_000]
OUTPUTS = ("results.csv", "compare.json", "report.md", "compare.png")


def _config(cifar_root: Path, **changes: Any) -> CompareConfig:
    base = CompareConfig(data_dir=str(cifar_root), model="wrn-10-1", budgets=BUDGETS, samples=8, random=1,
                         scaled=["wrn-16-1"], types=["MBConv6"], batch_size=32, epochs=1, train_subset=32,
                         test_subset=50)
    return replace(base, **changes)


def _given_config(cifar_root: Path, teacher: Path) -> CompareConfig:
    """The study the CLI runs from a given teacher: one budget, two random students, L1 only, two seeds."""
    return _config(cifar_root, budgets=[25_000], random=2, prune=["l1"], types=[], scaled=[], train_seeds=[0, 1],
                   teacher=str(teacher))


def _given_argv(cifar_root: Path, teacher: Path, out: Path) -> list[str]:
    return ["study", "compare", "--model", "wrn-10-1", "--budgets", "25k", "--samples", "8", "--random", "2",
            "--prune", "l1", "--types", "", "--scaled", "", "--train-seeds", "0,1", "--batch-size", "32", "--epochs",
            "1", "--train-subset", "32", "--test-subset", "50", "--data-dir", str(cifar_root), "--teacher",
            str(teacher), "--out", str(out), "--quiet"]


@pytest.fixture(scope="module")
def finished(cifar_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A comparison through the API that trains its own teacher: two budgets, one seed."""
    out = tmp_path_factory.mktemp("compare")
    run_compare(_config(cifar_root), out, progress=False)
    return out


@pytest.fixture(scope="module")
def given(finished: Path, cifar_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A comparison through the CLI from the first one's teacher file; returns its folder and what it printed."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("compare-given") / "study"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(_given_argv(cifar_root, finished / "teacher" / "last.pt", out)) == 0
    return out, printed.getvalue()


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _final(out: Path, name: str, seed: int) -> dict[str, Any]:
    return json.loads((out / "students" / name / f"seed-{seed}" / "final.json").read_text())


def _singles_in_windows(budgets: list[int]) -> list[str]:
    """The palette types whose all-T wrn-10-1 lies strictly within 2.5% of a budget, counted independently."""
    backbone, found = get_backbone("wrn-10-1"), []
    for name in PALETTE_NAMES:
        genotype = Genotype.uniform(backbone, name)
        try:
            genotype.validate()
        except BlockSwapError:
            continue
        if any(abs(genotype.params() - b) < 0.025 * b for b in budgets):
            found.append(name)
    return found


def test_the_budgets_lie_inside_what_wrn_10_1_reaches() -> None:
    table = CostTable.build(get_backbone("wrn-10-1"))
    assert all(table.min_params < b < table.max_params for b in BUDGETS)
    assert _singles_in_windows(BUDGETS) == ["DConvG8"]  # the study must add it: it sits in the 25K window


def test_the_students_and_their_groups(finished: Path, cifar_root: Path) -> None:
    rows = _csv(finished / "results.csv")
    expected = ["teacher", "wrn-16-1", "all-DConvG8", "all-MBConv6"]
    for b in ("25K", "50K"):
        expected += [f"blockswap-{b}", f"random-{b}-0", f"snip-{b}", f"l1-{b}"]
    assert [r["name"] for r in rows] == expected
    groups = {r["name"]: (r["group"], r["budget"]) for r in rows}
    assert [groups[n] for n in expected[:4]] == [("teacher", ""), ("scaled", ""), ("single", ""), ("single", "")]
    for b, budget in (("25K", "25000"), ("50K", "50000")):
        assert [groups[f"{m}-{b}"] for m in ("blockswap", "snip", "l1")] == \
            [("blockswap", budget), ("snip", budget), ("l1", budget)]
        assert groups[f"random-{b}-0"] == ("random", budget)
    for r in rows:
        if r["group"] == "random":  # drawn inside the window
            assert abs(int(r["params"]) - int(r["budget"])) < 0.025 * int(r["budget"])
    teacher_run = json.loads((finished / "teacher" / "config.json").read_text())
    assert teacher_run["teacher"] is None and teacher_run["seed"] == 0 and teacher_run["genotype"]["blocks"] == \
        ["Conv"] * 3
    for name, pruning in (("snip-25K", ("snip", 25_000)), ("l1-50K", ("l1", 50_000)), ("all-MBConv6", (None, None))):
        run = json.loads((finished / "students" / name / "seed-0" / "config.json").read_text())
        assert run["teacher"] == str(finished / "teacher" / "last.pt")
        assert (run["prune"], run["prune_budget"]) == pruning
    assert json.loads((finished / "config.json").read_text())["teacher"] is None  # the user's settings, as given


def test_the_pick_is_the_searchs_best(finished: Path) -> None:
    rows = {r["name"]: r for r in _csv(finished / "results.csv")}
    for b in ("25K", "50K"):
        best = json.loads((finished / "search" / b / "best.json").read_text())
        assert rows[f"blockswap-{b}"]["genotype"] == " ".join(best["blocks"])
        run = json.loads((finished / "students" / f"blockswap-{b}" / "seed-0" / "config.json").read_text())
        assert run["genotype"]["blocks"] == best["blocks"]
        scores = [float(c["score"]) for c in _csv(finished / "search" / b / "candidates.csv") if c["score"]]
        assert best["score"] == pytest.approx(max(scores))


def test_the_table_against_the_runs(finished: Path) -> None:
    """Every number of results.csv and report.md recomputed from the runs' final.json and the genotypes' counts."""
    backbone = get_backbone("wrn-10-1")
    report = (finished / "report.md").read_text()
    for r in _csv(finished / "results.csv"):
        if r["group"] == "teacher":
            error = json.loads((finished / "teacher" / "final.json").read_text())["test_error_pct"]
        else:
            error = _final(finished, r["name"], 0)["test_error_pct"]
        assert float(r["test_error_pct_seed0"]) == float(r["test_error_pct"]) == error
        assert r["test_error_sd_pct"] == ""  # one seed: no SD
        blocks = tuple(r["genotype"].split())
        net = Genotype(get_backbone(r["name"]) if r["group"] == "scaled" else backbone, blocks)
        if r["prune"]:
            assert int(r["params"]) == _final(finished, r["name"], 0)["params"] == int(r["budget"])
            assert r["macs"] == "" and blocks == ("Conv",) * 3
            macs = "-"
        else:
            assert (int(r["params"]), int(r["macs"])) == (net.params(), net.macs())
            macs = f"{net.macs() / 1e6:.1f}"
        assert f"| {int(r['params']) / 1e3:.1f} | {macs} | {error:.2f} |" in report
    assert "```bash\nblockswap study compare " in report and "CondenseNet-86" in report
    assert "| wrn-16-1 | D-Scaled |" in report and "| wrn-10-1 | BlockSwap | 50K |" in report


def test_compare_json_per_budget(finished: Path) -> None:
    rows = {r["name"]: r for r in _csv(finished / "results.csv")}
    report = json.loads((finished / "compare.json").read_text())
    assert [r["name"] for r in report["rows"]] == list(rows)
    assert report["noise_ceiling"] is None and report["teacher"]["trained_here"]
    for entry, b in zip(report["budgets"], ("25K", "50K")):
        pick = float(rows[f"blockswap-{b}"]["test_error_pct"])
        assert entry["blockswap_error_pct"] == pick
        assert entry["random_mean_error_pct"] == float(rows[f"random-{b}-0"]["test_error_pct"])
        assert entry["versus_random_pct"] == pytest.approx(pick - float(rows[f"random-{b}-0"]["test_error_pct"]))
        assert entry["versus_random_low_pct"] is None  # one random student: no interval
        assert entry["random_students_beaten"] == int(float(rows[f"random-{b}-0"]["test_error_pct"]) > pick)
        for method in ("snip", "l1"):
            assert entry["prune"][method]["versus_pct"] == pytest.approx(
                pick - float(rows[f"{method}-{b}"]["test_error_pct"]))
    for row in report["rows"]:
        assert row["test_error_pct_per_seed"] == {"0": float(rows[row["name"]]["test_error_pct_seed0"])}


def test_rerunning_a_finished_study_trains_nothing(finished: Path, cifar_root: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished study trained again")

    monkeypatch.setattr(cohort_module, "train", refuse)
    monkeypatch.setattr(compare_module, "train", refuse)
    before = {name: (finished / name).read_bytes() for name in OUTPUTS}
    report = run_compare(_config(cifar_root), finished, progress=False)
    assert {name: (finished / name).read_bytes() for name in OUTPUTS} == before
    assert report["summary"][-1].startswith("wrote ")


def test_a_folder_refuses_other_settings(finished: Path, cifar_root: Path) -> None:
    with pytest.raises(BlockSwapError, match="epochs"):
        run_compare(_config(cifar_root, epochs=2), finished, progress=False)


def test_the_cli_with_a_given_teacher(given: tuple[Path, str], finished: Path, cifar_root: Path) -> None:
    out, printed = given
    teacher = finished / "teacher" / "last.pt"
    recorded = json.loads((out / "config.json").read_text())
    assert recorded == asdict(_given_config(cifar_root, teacher))  # --budgets 25k parsed to 25000
    assert "wrote " in printed and "25K: BlockSwap" in printed
    assert not (out / "teacher" / "final.json").exists()
    rows = {r["name"]: r for r in _csv(out / "results.csv")}
    assert list(rows) == ["teacher", "all-DConvG8", "blockswap-25K", "random-25K-0", "random-25K-1", "l1-25K"]
    # The given teacher, evaluated on the same test images as its own training run measured it.
    trained = json.loads((finished / "teacher" / "final.json").read_text())["test_error_pct"]
    assert float(rows["teacher"]["test_error_pct"]) == trained
    assert rows["teacher"]["test_error_pct_seed0"] == rows["teacher"]["test_error_pct_seed1"] == ""
    for name, r in rows.items():
        if name == "teacher":
            continue
        errors = [_final(out, name, s)["test_error_pct"] for s in (0, 1)]
        assert [float(r["test_error_pct_seed0"]), float(r["test_error_pct_seed1"])] == errors
        assert float(r["test_error_pct"]) == pytest.approx(statistics.mean(errors))
        assert float(r["test_error_sd_pct"]) == pytest.approx(statistics.stdev(errors))
        assert json.loads((out / "students" / name / "seed-1" / "config.json").read_text())["teacher"] == str(teacher)
    report = json.loads((out / "compare.json").read_text())
    entry = report["budgets"][0]
    randoms = [float(rows[f"random-25K-{i}"]["test_error_pct"]) for i in (0, 1)]
    assert entry["random_students"] == 2 and entry["random_mean_error_pct"] == pytest.approx(statistics.mean(randoms))
    low, high = entry["versus_random_low_pct"], entry["versus_random_high_pct"]
    assert low <= entry["versus_random_pct"] <= high and low < high
    beaten = sum(r > float(rows["blockswap-25K"]["test_error_pct"]) for r in randoms)
    assert entry["random_students_beaten"] == beaten
    assert report["noise_ceiling"]["seeds"] == [0, 1] and not report["teacher"]["trained_here"]
    text = (out / "report.md").read_text()
    mean, sd = float(rows["l1-25K"]["test_error_pct"]), float(rows["l1-25K"]["test_error_sd_pct"])
    assert f"| - | {mean:.2f} ± {sd:.2f} |" in text and "Seed noise" in text and "Teacher (given)" in text
    assert f"{entry['versus_random_pct']:+.2f} points [{low:+.2f}, {high:+.2f}] | {beaten} of 2 |" in text


def test_a_resumed_study_equals_an_uninterrupted_one(given: tuple[Path, str], finished: Path, cifar_root: Path,
                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The given-teacher study with its last two students never trained, interrupted at their second run as Ctrl-C
    would, then resumed: the same files as the study that ran through."""
    reference, _ = given
    out = tmp_path / "study"
    shutil.copytree(reference, out)
    for name in (*OUTPUTS, "students/random-25K-1", "students/l1-25K"):
        shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink()
    real_train, calls = cohort_module.train, {"n": 0}

    def train_then_stop(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(cohort_module, "train", train_then_stop)
    config = _given_config(cifar_root, finished / "teacher" / "last.pt")
    with pytest.raises(KeyboardInterrupt):
        run_compare(config, out, progress=False)
    assert not (out / "results.csv").exists() and calls["n"] == 2
    monkeypatch.setattr(cohort_module, "train", real_train)
    run_compare(config, out, progress=False)
    assert calls["n"] == 2
    for name in ("results.csv", "compare.png"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    for name in ("compare.json", "report.md"):
        assert (out / name).read_text().replace(str(out), "OUT") == \
            (reference / name).read_text().replace(str(reference), "OUT"), name


@pytest.mark.parametrize("change, message", [
    (["--types", "nope"], "unknown block type 'nope'"),
    (["--budgets", "1M"], "outside the reachable range"),
    (["--budgets", "25k,25000"], "more than once"),
    (["--scaled", "wrn-12-1"], "WRN depth"),
    (["--scaled", "vgg16"], "unknown model 'vgg16'"),
    (["--scaled", "wrn-10-1"], "the teacher itself"),
    (["--prune", "magnitude"], "unknown pruning method 'magnitude'"),
    (["--teacher", "STUDENT"], "not the all-Conv wrn-10-1"),
])
def test_bad_input_is_one_line_and_leaves_no_folder(change: list[str], message: str, finished: Path,
                                                    cifar_root: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "study"
    student = finished / "students" / "wrn-16-1" / "seed-0" / "last.pt"
    argv = ["study", "compare", "--model", "wrn-10-1", "--budgets", "25k", "--samples", "8", "--epochs", "1",
            "--batch-size", "32", "--train-subset", "32", "--test-subset", "50", "--data-dir", str(cifar_root),
            "--out", str(out), "--quiet", *[str(student) if c == "STUDENT" else c for c in change]]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_the_paper_scaled_students_and_budget_names() -> None:
    assert default_scaled("wrn-40-2") == ["wrn-16-2", "wrn-40-1", "wrn-16-1"]
    assert default_scaled("wrn-16-2") == ["wrn-16-1"]
    assert default_scaled("wrn-10-1") == [] and default_scaled("resnet18") == []
    assert [budget_text(n) for n in (200_000, 25_500, 1_500_000, 999, 1_234_567)] == \
        ["200K", "25.5K", "1.5M", "999", "1.234567M"]
    assert len({budget_text(n) for n in range(10_000, 12_000)}) == 2_000  # exact: two budgets never share a folder


def test_a_committed_study_resumes_from_another_clone_and_asks_for_a_missing_teacher(
        cifar_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from a repository root with a relative --out, then copied without weights to another root: the finished
    students stand (their recorded teacher path is the same there), and a student still to train names the
    missing teacher file instead of failing inside training."""
    config = _config(cifar_root, budgets=[25_000], prune=[], types=[], scaled=[])
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    run_compare(config, "studies/cmp", progress=False)
    shutil.copytree(tmp_path / "here", tmp_path / "there", ignore=shutil.ignore_patterns("*.pt"))
    monkeypatch.chdir(tmp_path / "there")
    monkeypatch.setattr(cohort_module, "train", lambda *a, **k: pytest.fail("a finished student trained again"))
    run_compare(config, "studies/cmp", progress=False)
    assert (Path("studies/cmp/results.csv").read_bytes()
            == (tmp_path / "here" / "studies/cmp/results.csv").read_bytes())
    shutil.rmtree("studies/cmp/students/random-25K-0")
    with pytest.raises(BlockSwapError, match=r"teacher studies/cmp/teacher/last.pt is missing and 1 student run"):
        run_compare(config, "studies/cmp", progress=False)


def test_pick_versus_random_difference_and_students_beaten() -> None:
    randoms = np.array([[50.0, 52.0], [44.0, 46.0], [47.0, np.nan], [np.nan, np.nan]])  # the last diverged
    found = pick_versus_random(np.array([45.0, 46.0]), randoms)
    assert found["random_students_finite"] == 3
    assert found["difference_pct"] == pytest.approx(45.5 - np.mean([51.0, 45.0, 47.0]))
    assert found["beats"] == 2  # 51 and 47 are worse than 45.5; 45 is better
    assert found["low"] < found["difference_pct"] < found["high"]


def test_the_picks_seed_noise_is_pooled_over_every_network() -> None:
    """Random students that agree exactly leave only seed noise: the pooled seed variance is (2² + 2²) / 9 over
    the pick's one and the eight students' zero-spread degrees of freedom, the pick's mean varies by half that,
    and the interval is -8 ± t(0.975, 9) · 2/3."""
    from scipy import stats

    found = pick_versus_random(np.array([40.0, 44.0]), np.full((8, 2), 50.0))
    half = stats.t.ppf(0.975, 9) * 2 / 3
    assert found["difference_pct"] == -8.0 and found["beats"] == 8
    assert (found["low"], found["high"]) == pytest.approx((-8.0 - half, -8.0 + half))


def test_the_interval_widens_with_the_spread_of_random_students() -> None:
    tight = pick_versus_random(np.array([45.0, 45.0]), np.array([[49.0, 49.0], [50.0, 50.0], [51.0, 51.0]] * 3))
    wide = pick_versus_random(np.array([45.0, 45.0]), np.array([[38.0, 38.0], [50.0, 50.0], [62.0, 62.0]] * 3))
    assert tight["difference_pct"] == wide["difference_pct"] == pytest.approx(-5.0)
    assert wide["high"] - wide["low"] > 3 * (tight["high"] - tight["low"]) > 0
    assert tight["high"] < 0 < wide["high"]


@pytest.mark.parametrize("between_sd", [0.0, 1.0, 2.0])
def test_the_interval_covers_the_true_difference_95_percent_of_the_time(between_sd: float) -> None:
    """2,000 simulated comparisons like the committed one (a pick and 8 random students, 2 seeds each, seed SD 1):
    the pick's true error equals the random students' population mean, so about 95% of the intervals must hold 0.
    A bootstrap of the pick's own two seeds held it about 80% of the time."""
    rng = np.random.default_rng(1)
    held = 0
    for _ in range(2000):
        randoms = rng.normal(0.0, between_sd, (8, 1)) + rng.normal(0.0, 1.0, (8, 2))
        found = pick_versus_random(rng.normal(0.0, 1.0, 2), randoms)
        held += found["low"] <= 0.0 <= found["high"]
    assert 0.93 <= held / 2000 <= 0.975


def test_no_interval_without_two_random_students_or_two_seeds() -> None:
    one = pick_versus_random(np.array([45.0, 46.0]), np.array([[50.0, 51.0]]))
    assert one["difference_pct"] == -5.0 and one["beats"] == 1 and np.isnan(one["low"]) and np.isnan(one["high"])
    single_seed = pick_versus_random(np.array([45.0]), np.array([[50.0], [49.0], [52.0]]))
    assert single_seed["difference_pct"] == pytest.approx(-5.333333) and np.isnan(single_seed["low"])
    diverged = pick_versus_random(np.array([np.nan, np.nan]), np.array([[50.0, 51.0], [49.0, 48.0]]))
    assert np.isnan(diverged["difference_pct"]) and diverged["beats"] is None


def test_a_pick_left_with_one_seed_borrows_the_seed_noise_of_the_others() -> None:
    randoms = np.array([[50.0, 52.0], [47.0, 49.0], [53.0, 51.0]])
    both = pick_versus_random(np.array([45.0, 45.0]), randoms)
    one = pick_versus_random(np.array([45.0, np.nan]), randoms)  # its second seed diverged
    assert one["difference_pct"] == both["difference_pct"] == pytest.approx(45.0 - 151.0 / 3)
    assert one["high"] - one["low"] > both["high"] - both["low"] > 0


@pytest.mark.parametrize("prune", [[], ["l1"], ["snip", "l1"]])
def test_every_table_row_has_as_many_cells_as_its_header(finished: Path, cifar_root: Path, prune: list[str]) -> None:
    """report.md's tables render only when the header, the delimiter and every row have the same number of cells;
    with no pruning method the budget table's header had one more."""
    report = json.loads((finished / "compare.json").read_text())
    for entry in report["budgets"]:
        entry["prune"] = {m: v for m, v in entry["prune"].items() if m in prune}
    text = compare_module._markdown(_config(cifar_root, prune=prune), report)
    tables = [block.splitlines() for block in text.split("\n\n") if block.startswith("| ")]
    assert len(tables) == 2
    for table in tables:
        widths = {line.count("|") for line in table}
        assert widths == {table[0].count("|")}, table
    assert tables[1][0].count("|") == 6 + 2 * len(prune)
    assert ("its run continues the teacher's training" in text) == ("l1" in prune)  # L1's head start, said


def test_a_run_that_diverged_beside_a_finished_seed_is_named(given: tuple[Path, str], cifar_root: Path) -> None:
    """A student with one finished and one diverged seed shows the finished seed's error, names the lost seed in
    its cell and in a note; the teacher, trained with one seed only, is not called diverged."""
    out, _ = given
    report = json.loads((out / "compare.json").read_text())
    row = next(r for r in report["rows"] if r["name"] == "l1-25K")
    row["test_error_pct_per_seed"]["1"] = None
    row["test_error_pct"], row["test_error_sd_pct"] = row["test_error_pct_per_seed"]["0"], None
    config = CompareConfig.from_dict(json.loads((out / "config.json").read_text()))
    text = compare_module._markdown(config, report)
    assert f"| {row['test_error_pct']:.2f} (seed 1 diverged) |" in text
    assert "diverged while the student's other seeds finished: l1-25K (seed 1)." in text
    assert text.count("diverged)") == 1 and "in every seed" not in text
