"""The placement study (one block at a time swapped) and goodbad (the block types of good and bad students): outputs
against independent computations, nothing retrained on a rerun, resuming after an interruption, bad input."""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("scipy")
pytest.importorskip("matplotlib")

from blockswap import cli  # noqa: E402
from blockswap.space.backbones import get_backbone  # noqa: E402
from blockswap.space.blocks import BlockType, register_block_type  # noqa: E402
from blockswap.space.genotype import Genotype  # noqa: E402
from blockswap.study import cohort as cohort_module  # noqa: E402
from blockswap.study.placement import (  # noqa: E402
    PlacementConfig,
    placement_students,
    run_placement,
    study_goodbad,
)
from blockswap.util.counts import format_count  # noqa: E402
from blockswap.util.errors import BlockSwapError  # noqa: E402

# G16B2 halves the channels, then groups them 16 at a time: it cannot be built in wrn-10-1's first block (16 -> 8
# channels), so the study trains the teacher and blocks 2 and 3 and reports block 1 as skipped.
TYPE = "G16B2"
OUTPUTS = ("results.csv", "placement.json", "report.md", "placement.png")


def _config(cifar_root: Path, **changes: object) -> PlacementConfig:
    base = PlacementConfig(data_dir=str(cifar_root), model="wrn-10-1", type=TYPE, epochs=1, batch_size=32,
                           train_subset=64, test_subset=50, train_seeds=[0, 1])
    return replace(base, **changes)


def _cli_args(cifar_root: Path, out: Path) -> list[str]:
    return ["study", "placement", "--data-dir", str(cifar_root), "--model", "wrn-10-1", "--type", TYPE,
            "--epochs", "1", "--batch-size", "32", "--train-subset", "64", "--test-subset", "50",
            "--train-seeds", "0,1", "--out", str(out), "--quiet"]


@pytest.fixture(scope="module")
def finished(cifar_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("placement")
    return out, run_placement(_config(cifar_root), out, progress=False)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_students_are_the_teacher_and_one_swap_per_buildable_position(cifar_root: Path) -> None:
    students = placement_students(_config(cifar_root))
    assert [(s.name, s.group) for s in students] == [("teacher", "reference"), ("block-02", "swapped"),
                                                      ("block-03", "swapped")]
    assert [s.genotype.blocks for s in students] == [("Conv",) * 3, ("Conv", TYPE, "Conv"), ("Conv", "Conv", TYPE)]
    paper = placement_students(_config(cifar_root, type="DConv"))
    assert [s.name for s in paper] == ["teacher", "block-01", "block-02", "block-03"]
    for i, s in enumerate(paper[1:]):
        assert s.genotype.blocks.count("DConv") == 1 and s.genotype.blocks[i] == "DConv"


def test_the_table_equals_the_runs_final_json(finished: tuple[Path, dict], cifar_root: Path) -> None:
    out, returned = finished
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    assert (out / "placement.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    backbone = get_backbone("wrn-10-1")
    teacher = Genotype.uniform(backbone)
    expected = {}
    for name, blocks in (("teacher", teacher.blocks), ("block-02", ("Conv", TYPE, "Conv")),
                         ("block-03", ("Conv", "Conv", TYPE))):
        errors = [json.loads((out / "students" / name / f"seed-{s}" / "final.json").read_text())["test_error_pct"]
                  for s in (0, 1)]
        expected[name] = {"errors": errors, "mean": statistics.mean(errors), "sd": statistics.stdev(errors),
                          "params": Genotype(backbone, blocks).params()}
    t = expected["teacher"]
    rows = {r["name"]: r for r in _read_csv(out / "results.csv")}
    assert list(rows) == ["teacher", "block-02", "block-03"]
    for name, e in expected.items():
        r = rows[name]
        assert [float(r["test_error_pct_seed0"]), float(r["test_error_pct_seed1"])] == e["errors"]
        assert float(r["test_error_pct"]) == pytest.approx(e["mean"])
        assert float(r["test_error_sd_pct"]) == pytest.approx(e["sd"])
        assert int(r["params"]) == e["params"]
        assert int(r["params_saved"]) == t["params"] - e["params"]
        assert float(r["error_change_pct"]) == pytest.approx(e["mean"] - t["mean"])
    assert (rows["teacher"]["position"], rows["teacher"]["stage"]) == ("", "")
    assert [(rows[n]["position"], rows[n]["stage"]) for n in ("block-02", "block-03")] == [("2", "2"), ("3", "3")]

    report = json.loads((out / "placement.json").read_text())
    assert {k: v for k, v in returned.items() if k != "summary"} == report
    assert report["skipped_positions"] == [1]
    assert [p["position"] for p in report["positions"]] == [2, 3]
    assert report["teacher"]["test_error_pct"] == pytest.approx(t["mean"])
    means = {2: expected["block-02"]["mean"], 3: expected["block-03"]["mean"]}
    assert report["most_sensitive"]["position"] == max(means, key=lambda p: (means[p], -p))
    assert report["least_sensitive"]["position"] == min(means, key=lambda p: (means[p], p))
    assert report["noise_ceiling"]["seeds"] == [0, 1]

    md = (out / "report.md").read_text()
    assert md.startswith("# Placement study") and "```bash\nblockswap study placement " in md
    for position, name in ((2, "block-02"), (3, "block-03")):
        e = expected[name]
        assert (f"| {position} | {position} | {format_count(e['params'])} | "
                f"{format_count(t['params'] - e['params'])} | {e['mean']:.2f} ± {e['sd']:.2f} | "
                f"{e['mean'] - t['mean']:+.2f} |") in md
    assert "position(s) 1: no student there" in md and "![" in md
    assert any(line.startswith("wrote ") for line in returned["summary"])


def test_rerunning_a_finished_study_trains_nothing(finished: tuple[Path, dict], cifar_root: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    out, _ = finished

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished study trained again")

    monkeypatch.setattr(cohort_module, "train", refuse)
    before = {name: (out / name).read_bytes() for name in OUTPUTS}
    run_placement(_config(cifar_root), out, progress=False)
    assert {name: (out / name).read_bytes() for name in OUTPUTS} == before


def test_an_interrupted_study_resumed_by_the_cli_equals_an_uninterrupted_one(
        finished: tuple[Path, dict], cifar_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    done, _ = finished
    real_train = cohort_module.train
    calls = {"n": 0}

    def train_then_stop(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 3:  # block-02, seed 0: interrupted as Ctrl-C would
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(cohort_module, "train", train_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_placement(_config(cifar_root), tmp_path, progress=False)
    assert not (tmp_path / "results.csv").exists()
    assert len(list(tmp_path.glob("students/*/seed-*/final.json"))) == 2
    monkeypatch.setattr(cohort_module, "train", real_train)
    assert cli.main(_cli_args(cifar_root, tmp_path)) == 0
    printed = capsys.readouterr().out
    assert "most sensitive: block" in printed and "wrote" in printed
    for name in OUTPUTS:  # the command line names its own --out; everything else is byte for byte the same
        resumed = (tmp_path / name).read_bytes().replace(str(tmp_path).encode(), str(done).encode())
        assert resumed == (done / name).read_bytes(), name


def test_a_study_folder_refuses_other_settings(finished: tuple[Path, dict], cifar_root: Path) -> None:
    with pytest.raises(BlockSwapError, match="epochs"):
        run_placement(_config(cifar_root, epochs=2), finished[0], progress=False)


def _never_fits(c_in: int, c_out: int, stride: int) -> list:
    raise ValueError("this test type fits no block")


def test_a_bad_type_is_refused_leaving_no_folder(cifar_root: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    register_block_type(BlockType("PlacementTestNoFit", "S", _never_fits))
    for name, message in (("Nope", "not a registered block type; choose one of Conv, "),
                          ("Conv", "teacher's own block"), ("PlacementTestNoFit", "cannot be built at any")):
        out = tmp_path / name
        with pytest.raises(BlockSwapError, match=message):
            run_placement(_config(cifar_root, type=name), out, progress=False)
        assert not out.exists()
    args = _cli_args(cifar_root, tmp_path / "cli")
    args[args.index(TYPE)] = "Nope"
    assert cli.main(args) == 2
    assert "not a registered block type" in capsys.readouterr().err
    assert not (tmp_path / "cli").exists()


# goodbad ------------------------------------------------------------------------------------------------------------

GOOD, BAD = {3}, {7, 12}  # the rows of the synthetic pool far below and far above the mean
POOL_TYPES = ("Conv", "DConv", "G4B2", "ConvB2")


def _pool() -> tuple[list[tuple[str, ...]], list[float]]:
    """20 wrn-16-1 genotypes with errors near 10%, one far lower and two far higher, and one diverged (NaN)."""
    rng = np.random.default_rng(5)
    genotypes = [tuple(str(t) for t in rng.choice(POOL_TYPES, 6)) for _ in range(21)]
    errors = [10.0 + 0.1 * (i % 5) for i in range(21)]
    for i in GOOD:
        errors[i] = 4.0
    for i in BAD:
        errors[i] = 16.5 + 0.5 * (i == 12)
    errors[20] = math.nan
    return genotypes, errors


def _split(errors: list[float], sd: float) -> tuple[set[int], set[int]]:
    finite = [e for e in errors if math.isfinite(e)]
    mean, spread = statistics.mean(finite), statistics.stdev(finite)
    return ({i for i, e in enumerate(errors) if e < mean - sd * spread},
            {i for i, e in enumerate(errors) if e > mean + sd * spread})


def _write_study(folder: Path, with_group: bool) -> None:
    """results.csv as `study mixing` (group column, 'single' rows besides the 'mixed' ones) or `study rank` writes
    it (index, no group), and config.json naming the model."""
    genotypes, errors = _pool()
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model": "wrn-16-1", "data_dir": "x"}))
    if with_group:
        lines = ["name,group,genotype,params,test_error_pct"]
        lines += [f"mixed-{i:03d},mixed,{' '.join(g)},1,{'' if math.isnan(e) else e}"
                  for i, (g, e) in enumerate(zip(genotypes, errors))]
        lines += ["single-ConvB2,single," + " ".join(["ConvB2"] * 6) + ",1,50.0",
                  "single-DConv,single," + " ".join(["DConv"] * 6) + ",1,1.0"]
    else:
        lines = ["index,genotype,params,macs,fisher,test_error_pct"]
        lines += [f"{i},{' '.join(g)},1,1,0.5,{'' if math.isnan(e) else e}"
                  for i, (g, e) in enumerate(zip(genotypes, errors))]
    (folder / "results.csv").write_text("\n".join(lines) + "\n")


def _expected_counts(members: dict[str, set[int]]) -> Counter:
    genotypes, _ = _pool()
    return Counter({(name, str(p + 1), t): n for name, rows in members.items()
                    for p, counter in enumerate(Counter(genotypes[i][p] for i in rows) for p in range(6))
                    for t, n in counter.items()})


@pytest.mark.parametrize("with_group", [True, False])
def test_goodbad_counts_equal_an_independent_count(tmp_path: Path, with_group: bool) -> None:
    genotypes, errors = _pool()
    assert _split(errors, 2.0) == (GOOD, BAD)  # the pool is built so that these rows are the good and bad ones
    folder = tmp_path / "study"
    _write_study(folder, with_group)
    result = study_goodbad(folder, 2.0)
    labels = [f"mixed-{i:03d}" if with_group else str(i) for i in range(len(genotypes))]
    assert [g["label"] for g in result["good"]] == [labels[i] for i in sorted(GOOD)]
    assert [g["label"] for g in result["bad"]] == [labels[12], labels[7]]  # worst first: the one drawn
    assert result["students"] == 20 and result["drawn"] == {"good": "good.png", "bad": "bad.png"}
    finite = [e for e in errors if math.isfinite(e)]
    assert result["mean_error_pct"] == pytest.approx(statistics.mean(finite))
    assert result["sd_error_pct"] == pytest.approx(statistics.stdev(finite))
    got = Counter({(r["set"], r["position"], r["type"]): int(r["count"]) for r in _read_csv(folder / "goodbad.csv")})
    assert got == _expected_counts({"good": GOOD, "bad": BAD, "all": set(range(20))})
    for name in ("good.png", "bad.png"):
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (folder / "goodbad.md").read_text()
    assert "(1 student)" in md and "(2 students)" in md and "1 diverged" in md and "paper" in md

    quiet = study_goodbad(folder, 5.0)  # 20 students lie at most 19/sqrt(20) = 4.25 SD from their mean
    assert quiet["good"] == [] and quiet["bad"] == [] and quiet["drawn"] == {}
    assert any("smaller --sd" in line for line in quiet["summary"])
    assert "No good and no bad student at 5 SD" in (folder / "goodbad.md").read_text()
    assert not (folder / "good.png").exists() and not (folder / "bad.png").exists()
    got = Counter({(r["set"], r["position"], r["type"]): int(r["count"]) for r in _read_csv(folder / "goodbad.csv")})
    assert got == _expected_counts({"all": set(range(20))})


def test_goodbad_of_a_placement_study_uses_every_student(finished: tuple[Path, dict],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = finished
    assert cli.main(["study", "goodbad", "--study", str(out)]) == 0
    assert "try a smaller --sd" in capsys.readouterr().out  # 3 students lie at most 2/sqrt(3) SD from their mean
    rows = _read_csv(out / "results.csv")
    expected = Counter((str(p + 1), t) for r in rows for p, t in enumerate(r["genotype"].split()))
    got = {(r["position"], r["type"]): int(r["count"]) for r in _read_csv(out / "goodbad.csv")}
    assert got == expected
    assert "all 3 students" in (out / "goodbad.md").read_text()


def test_goodbad_refuses_bad_input(tmp_path: Path) -> None:
    folder = tmp_path / "study"
    _write_study(folder, with_group=False)
    with pytest.raises(BlockSwapError, match="positive number"):
        study_goodbad(folder, 0.0)
    with pytest.raises(BlockSwapError, match="not found"):
        study_goodbad(tmp_path / "nothing")
    (folder / "results.csv").write_text("index,test_error_pct\n0,1.0\n")
    with pytest.raises(BlockSwapError, match="no genotype column"):
        study_goodbad(folder)


def test_goodbad_of_a_comparison_splits_the_random_students_of_one_budget(tmp_path: Path) -> None:
    """study compare's random students at 40K and 60K: pooled, the 60K ones would all look good."""
    genotypes, errors = _pool()
    folder = tmp_path / "compare"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model": "wrn-16-1", "data_dir": "x"}))
    lines = ["name,group,genotype,params,test_error_pct", "blockswap-40K,blockswap," + " ".join(["G4B2"] * 6) + ",1,9"]
    lines += [f"random-40K-{i},random,{' '.join(g)},1,{'' if math.isnan(e) else e}"
              for i, (g, e) in enumerate(zip(genotypes, errors))]
    lines += [f"random-60K-{i},random," + " ".join(["Conv"] * 6) + f",1,{1.0 + 0.1 * i}" for i in range(5)]
    (folder / "results.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(BlockSwapError, match=r"random students at 2 budgets \(40K, 60K\): give --budget"):
        study_goodbad(folder)
    with pytest.raises(BlockSwapError, match="no random students at 50K; its budgets: 40K, 60K"):
        study_goodbad(folder, budget=50_000)
    result = study_goodbad(folder, budget=40_000)
    assert result["students"] == 20  # the 40K ones with an error: the 60K ones and the pick stay out
    assert [g["label"] for g in result["good"]] == [f"random-40K-{i}" for i in sorted(GOOD)]
    assert [g["label"] for g in result["bad"]] == ["random-40K-12", "random-40K-7"]
    md = (folder / "goodbad.md").read_text()
    assert "group 'random' at 40K" in md and "--budget 40K" in md
    (folder / "results.csv").write_text("\n".join(line for line in lines if ",random," not in line) + "\n")
    with pytest.raises(BlockSwapError, match="trained no random students to split"):
        study_goodbad(folder)
    _write_study(tmp_path / "mixing", with_group=True)
    with pytest.raises(BlockSwapError, match="leave it out"):
        study_goodbad(tmp_path / "mixing", budget=40_000)
