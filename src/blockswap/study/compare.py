"""The comparison (paper Tables 2 and 6, Fig. 3): BlockSwap's pick against the other ways to reach a budget.

At equal parameter budgets, does the network BlockSwap picks train to a lower
error than the other ways of reaching the budget? One teacher (trained here
into `teacher/` first, or the `--teacher` file) teaches every student by
attention transfer, and each student is trained once per training seed into
`students/<name>/seed-<k>/` (`blockswap.study.cohort`):

- at each budget B: `blockswap-<B>`, the best of a default (screened) search of
  `samples` candidates (in `search/<B>/`, resumable); `random-<B>-<i>`, genotypes
  drawn uniformly inside the budget window; `<method>-<B>`, the teacher pruned by
  each method to B non-zero parameters;
- once: `all-<T>` for every palette type T whose single-type network lies inside
  a budget window and every `types` entry (MBConv6, DARTS), and each scaled
  all-Conv model (by default the paper's depth-, width- and depth+width-scaled
  WRNs of a WRN teacher).

`write_compare_report` then writes results.csv (one row per network, the
teacher first), compare.json (every row, and per budget the pick's error
against the random mean, with a 95% interval, and against each pruning),
report.md (the Tables 2/6 layout) and compare.png (Fig. 3: error against
parameters).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist

from ..data import load_split, take_subset
from ..scoring.importance import prunable_weights
from ..search.run import SearchConfig, run_search
from ..space.backbones import Backbone, get_backbone
from ..space.blocks import PALETTE_NAMES, block_type
from ..space.genotype import Genotype, load_genotype
from ..space.sampling import sample_genotypes
from ..train.pruning import PRUNE_METHODS
from ..train.training import EVAL_BATCH, ONE_PROCESS, DivergedError, TrainConfig, error_sums, train
from ..util.counts import budget_text, format_count, parse_budget
from ..util.distributed import on_rank0, rank0_first
from ..util.errors import BlockSwapError
from ..util.options import comma_separated, from_record, non_negative_int, option, positive_int
from ..util.precision import resolve_precision
from ..util.rundir import config_changes, file_digest, read_json, write_json_atomic, write_text_atomic
from ..weights.teachers import load_network
from .cohort import (
    Student,
    claim_out_dir,
    cohort_ceiling,
    cohort_rows,
    student_dir,
    study_command,
    train_cohort,
    write_cohort_csv,
)
from .config import CohortConfig, require_extra, run_finished
from .figures import save_png
from .report import fmt, json_safe, made_by, plural

__all__ = ["CompareConfig", "run_compare", "write_compare_report", "compare_students", "default_scaled",
           "budget_text", "pick_versus_random"]

_RANDOM_KEY = 0x636F6D70617265  # "compare": the random students' draws are their own stream of the study seed
_WRN = re.compile(r"wrn-(\d+)-(\d+)")


def _budgets(text: str) -> list[int]:
    """'200k,400k' -> [200000, 400000]: the --budgets option."""
    return [parse_budget(b) for b in comma_separated(text)]


def _distinct(names: list[Any], what: str) -> None:
    repeated = sorted({str(n) for n in names if names.count(n) > 1})
    if repeated:
        raise BlockSwapError(f"{what} names {', '.join(repeated)} more than once")


@dataclass(kw_only=True)
class CompareConfig(CohortConfig):
    """A comparison study at one or more budgets; saved as config.json."""

    budgets: list[int] = field(metadata=option(
        "comma-separated parameter budgets, e.g. 200k,400k,800k", parse=_budgets, metavar="BUDGETS"))
    samples: int = field(default=1000, metadata=option(
        "candidates BlockSwap's search scores at each budget (its pick is trained)", check=positive_int))
    random: int = field(default=1, metadata=option(
        "random genotypes of each budget trained (Table 6's Random)", check=non_negative_int))
    scaled: list[str] | None = field(default=None, metadata=option(
        "comma-separated registered models trained as depth/width-scaled all-Conv students (default: the paper's "
        "depth-, width- and depth+width-scaled WRNs of a WRN teacher; none for other teachers)",
        parse=comma_separated, metavar="MODELS"))
    types: list[str] = field(default_factory=lambda: ["MBConv6", "DARTS"], metadata=option(
        "comma-separated block types trained as single-type students whatever their size (the palette's single "
        "types inside a budget window are trained too)", parse=comma_separated, metavar="TYPES"))
    prune: list[str] = field(default_factory=lambda: ["snip", "l1"], metadata=option(
        "comma-separated pruning methods applied to the teacher at each budget", parse=comma_separated,
        metavar="METHODS"))

    def __post_init__(self) -> None:
        """Refuse settings the comparison cannot run with, naming the first bad one (the budgets' reachability
        and the pruning range are checked by `run_compare`, which builds the teacher)."""
        budgets = _budgets(self.budgets) if isinstance(self.budgets, str) else self.budgets
        self.budgets = [parse_budget(b) for b in budgets]
        if not self.budgets:
            raise BlockSwapError("give at least one budget, e.g. --budgets 200k,400k")
        _distinct(self.budgets, "--budgets")
        self.check_cohort()
        teacher = self.backbone()
        self.types = list(self.types)
        _distinct(self.types, "--types")
        for name in self.types:
            try:
                block_type(name)
            except BlockSwapError as e:
                raise BlockSwapError(f"--types: {e}") from None
            try:
                Genotype.uniform(teacher, name).validate()
            except BlockSwapError as e:
                raise BlockSwapError(f"--types {name}: {e}; leave it out for {teacher.name}") from None
        self.prune = list(self.prune)
        _distinct(self.prune, "--prune")
        for method in self.prune:
            if method not in PRUNE_METHODS:
                raise BlockSwapError(f"unknown pruning method {method!r}; valid choices: {', '.join(PRUNE_METHODS)}")
        if self.scaled is not None:
            self.scaled = list(self.scaled)
            _distinct([_scaled_backbone(self, name).name for name in self.scaled], "--scaled")

    def scaled_models(self) -> list[str]:
        """The scaled students' model names: `scaled` as given, else `default_scaled` of the teacher."""
        names = default_scaled(self.model) if self.scaled is None else self.scaled
        return [_scaled_backbone(self, name).name for name in names]

    @classmethod
    def from_dict(cls, data: Any) -> CompareConfig:
        return from_record(cls, data, "comparison study config")


def default_scaled(model: str) -> list[str]:
    """The paper's scaled students of a WRN-D-W teacher: WRN-16-W (depth, if D > 16), WRN-D-(W/2) (width, if
    W >= 2) and WRN-16-(W/2) (both); none for other teachers."""
    m = _WRN.fullmatch(get_backbone(model).name)
    if m is None:
        return []
    depth, width = int(m[1]), int(m[2])
    names = [f"wrn-16-{width}"] if depth > 16 else []
    names += [f"wrn-{depth}-{width // 2}"] if width >= 2 else []
    names += [f"wrn-16-{width // 2}"] if depth > 16 and width >= 2 else []
    return names


def _scaled_backbone(config: CompareConfig, name: str) -> Backbone:
    """The registered model `name` with the teacher's classes, refused where it cannot be a scaled student."""
    teacher = config.backbone()
    try:
        backbone = get_backbone(name, teacher.num_classes)
    except BlockSwapError as e:
        raise BlockSwapError(f"--scaled {name}: {e}") from None
    if backbone == teacher:
        raise BlockSwapError(f"--scaled {name} is the teacher itself (its row is in the table already); name a "
                             "smaller model")
    if len(backbone.stage_widths) != len(teacher.stage_widths) or backbone.input_size != teacher.input_size:
        raise BlockSwapError(f"--scaled {name} has {len(backbone.stage_widths)} stages at {backbone.input_size} "
                             f"pixels, the teacher {teacher.name} {len(teacher.stage_widths)} at "
                             f"{teacher.input_size}: attention transfer pairs the stages; name a model like it")
    return backbone


def _search_config(config: CompareConfig, budget: int) -> SearchConfig:
    """The default (screened) search `blockswap search` runs at `budget` with the study's model, seed and data."""
    return SearchConfig(budget=budget, model=config.model, samples=config.samples, batch_size=config.batch_size,
                        tolerance=config.tolerance, seed=config.seed, data_dir=config.data_dir)


def _search_dir(out: Path, budget: int) -> Path:
    return out / "search" / budget_text(budget)


def _random_genotypes(config: CompareConfig, budget: int, n: int) -> list[Genotype]:
    """`n` genotypes drawn uniformly inside the budget window, from a stream of the study seed the search never
    uses (BudgetError naming the reachable range when no genotype reaches the budget)."""
    seed = int(np.random.SeedSequence([config.seed, _RANDOM_KEY]).generate_state(1, np.uint64)[0])
    return sample_genotypes(config.backbone(), budget, n, config.tolerance, seed)


def _in_window(params: int, budget: int, tolerance: float) -> bool:
    return abs(params - budget) < tolerance * budget


def compare_students(config: CompareConfig, out: Path, picks: Mapping[int, Genotype] | None = None) -> list[Student]:
    """Every student of the comparison, in the table's order: the scaled models, the single types, then per budget
    BlockSwap's pick (from `picks`, else the search's best.json in `out`), the random genotypes and the prunings."""
    teacher = Genotype.uniform(config.backbone())
    students = [Student(name, "scaled", Genotype.uniform(get_backbone(name, teacher.backbone.num_classes)))
                for name in config.scaled_models()]
    singles = [t for t in PALETTE_NAMES if t not in config.types and _single_in_window(config, t)] + config.types
    students += [Student(f"all-{t}", "single", Genotype.uniform(teacher.backbone, t)) for t in singles]
    for budget in config.budgets:
        b = budget_text(budget)
        if picks is not None:
            pick = picks[budget]
        else:
            best = _search_dir(out, budget) / "best.json"
            if not best.is_file():
                raise BlockSwapError(f"the search at {b} is not finished ({best} missing); rerun the study")
            pick = load_genotype(best, teacher.backbone)
        students.append(Student(f"blockswap-{b}", "blockswap", pick))
        if config.random:
            students += [Student(f"random-{b}-{i}", "random", g)
                         for i, g in enumerate(_random_genotypes(config, budget, config.random))]
        students += [Student(f"{m}-{b}", m, teacher, prune=m, prune_budget=budget) for m in config.prune]
    return students


def _single_in_window(config: CompareConfig, name: str) -> bool:
    """Whether the all-`name` network of the teacher's backbone can be built and lies inside a budget window."""
    genotype = Genotype.uniform(config.backbone(), name)
    try:
        genotype.validate()
    except BlockSwapError:
        return False
    return any(_in_window(genotype.params(), b, config.tolerance) for b in config.budgets)


# ---------------------------------------------------------------------------------------------- the teacher


def _teacher_dir(out: Path) -> Path:
    return out / "teacher"


def _teacher_file(config: CompareConfig, out: Path) -> str:
    """The weight file every student learns from: --teacher, else the one this study trains, as --out names it
    (normalised): a study committed to a repository and resumed from its root elsewhere records the same path."""
    return config.teacher if config.teacher is not None else os.path.normpath(_teacher_dir(out) / "last.pt")


def _check_teacher_present(teacher: str, out: Path, config: CompareConfig, students: list[Student]) -> None:
    """Refuse, before any student trains, a teacher file that is gone while students still need it: a study's
    weights are not committed with its small files."""
    todo = sum(not run_finished(student_dir(out, s) / f"seed-{seed}") for s in students for seed in config.train_seeds)
    if todo and not Path(teacher).is_file():
        where = (f"copy it back from where the study ran, or move {_teacher_dir(out)} away to train the teacher "
                 "again" if config.teacher is None else "give --teacher the file the study was run with")
        raise BlockSwapError(f"the teacher {teacher} is missing and {todo} student run(s) still need it; {where}")


def _teacher_config(config: CompareConfig) -> TrainConfig:
    """The teacher's training run: the all-Conv network, cross-entropy, the recipe, the first training seed."""
    return config.train_config(Genotype.uniform(config.backbone()), config.train_seeds[0])


def _check_given_teacher(config: CompareConfig, path: str) -> None:
    """The --teacher file must load (as training will) as the all-Conv --model network: the network the students
    learn from and the prunings start from."""
    if not Path(path).is_file():
        raise BlockSwapError(f"teacher file not found: {path}")
    genotype = load_network(path)[1]
    if genotype != Genotype.uniform(config.backbone()):
        raise BlockSwapError(f"--teacher {path} holds {genotype}, not the all-Conv {config.model} network --model "
                             "names; give the --model it was trained as")


def _train_teacher(config: CompareConfig, out: Path, device: str | torch.device, progress: bool) -> None:
    """Train the teacher into out/teacher/ (resuming it), or check the finished run is this study's teacher."""
    run, wanted = _teacher_dir(out), _teacher_config(config)
    if (run / "final.json").exists():
        changes = config_changes(TrainConfig.from_dict(read_json(run / "config.json", "training config")).record(),
                                 wanted.record())
        if changes:
            raise BlockSwapError(f"{run} holds another teacher run than this study asks for ({changes}); move it "
                                 "away to train it again")
        return
    try:
        train(wanted, run, resume=True, device=torch.device(device), progress=progress, group=ONE_PROCESS)
    except DivergedError as e:
        raise BlockSwapError(f"the teacher diverged ({e}); lower --lr and use a fresh --out") from None


def _evaluate_teacher(config: CompareConfig, teacher: str, out: Path, device: str | torch.device) -> None:
    """The given teacher's test error on the students' test images, kept in out/teacher/eval.json (once per file)."""
    path, digest = _teacher_dir(out) / "eval.json", file_digest(teacher, "sha256")
    if path.is_file() and read_json(path, "teacher evaluation").get("teacher_sha256") == digest:
        return
    place, like = torch.device(device), _teacher_config(config)  # measured as a training run measures its students
    layout = torch.channels_last if like.channels_last else torch.contiguous_format
    net = load_network(teacher)[0].to(place, memory_format=layout)
    test = load_split(config.data_dir, False, config.backbone().input_size)
    test = take_subset(test, config.test_subset, "--test-subset", config.data_dir)
    sums = error_sums(net, test.to(place), EVAL_BATCH, resolve_precision(like.precision, place), like.channels_last)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"teacher": teacher, "teacher_sha256": digest,
                             "test_error_pct": 100.0 * float(sums[1] / sums[2]), "test_images": int(sums[2])})


def _teacher_row(config: CompareConfig, out: Path) -> dict[str, Any]:
    """The teacher as a row of the table: trained here (its seed's column filled) or given (evaluated)."""
    genotype = Genotype.uniform(config.backbone())
    if config.teacher is None:
        error = float(read_json(_teacher_dir(out) / "final.json", "teacher's training result")["test_error_pct"])
        seeds = {config.train_seeds[0]: error}
    else:
        error = float(read_json(_teacher_dir(out) / "eval.json", "teacher evaluation")["test_error_pct"])
        seeds = {}
    row: dict[str, Any] = {"name": "teacher", "group": "teacher", "budget": None, "genotype": " ".join(genotype.blocks),
                           "prune": "", "params": genotype.params(), "macs": genotype.macs()}
    for seed in config.train_seeds:
        row[f"test_error_pct_seed{seed}"] = seeds.get(seed, math.nan)
    return {**row, "test_error_pct": error, "test_error_sd_pct": math.nan}


# ---------------------------------------------------------------------------------------------- the run


def _check_inputs(config: CompareConfig) -> None:
    """What can stop the study, before its folder is claimed: budgets no genotype reaches, pruning budgets outside
    the teacher's range, the search settings and the --teacher file (`claim_out_dir` checks the data)."""
    teacher = config.backbone()
    for budget in config.budgets:
        _random_genotypes(config, budget, max(config.random, 1))
        _search_config(config, budget)
    if config.prune:
        net = Genotype.uniform(teacher).build()
        total = sum(p.numel() for p in net.parameters())
        dense = total - sum(w.numel() for w in prunable_weights(net).values())
        for budget in config.budgets:
            if not dense < budget < total:
                raise BlockSwapError(f"pruning {config.model} to {format_count(budget)} non-zero parameters needs a "
                                     f"budget between its {dense:,} dense ones (BN, biases) and its {total:,}")
    if config.teacher is not None:
        _check_given_teacher(config, config.teacher)


def run_compare(config: CompareConfig, out_dir: str | Path, workers: int = 1, device: str | torch.device = "cpu",
                progress: bool = True, group: torch_dist.ProcessGroup | None = None) -> dict[str, Any]:
    """Train the teacher (unless --teacher names one), search each budget, train every student into `out_dir`
    (skipping what is done), then write the report; returns compare.json's content ({} on ranks other than 0)."""
    require_extra()
    out = Path(out_dir)
    rank = torch_dist.get_rank(group) if group is not None else 0
    # The teacher takes hours on rank 0 while the others wait: on a gloo group whose timeout allows it.
    waiting = torch_dist.new_group(backend="gloo", timeout=timedelta(days=30)) if group is not None else None
    _check_inputs(config)
    on_rank0(group, lambda: claim_out_dir(out, config, "comparison"))
    if config.teacher is None:
        rank0_first(waiting, lambda: _train_teacher(config, out, device, progress and rank == 0))
    else:
        on_rank0(waiting, lambda: _evaluate_teacher(config, config.teacher, out, device))
    picks = {}
    for budget in config.budgets:
        result = run_search(_search_config(config, budget), _search_dir(out, budget), device=device,
                            progress=progress, workers=workers, group=group)
        picks[budget] = result.best.genotype
    students = compare_students(config, out, picks)
    taught = replace(config, teacher=_teacher_file(config, out))
    _check_teacher_present(taught.teacher, out, config, students)  # type: ignore[arg-type]  # set just above
    train_cohort(taught, students, out, workers, device, progress, group, desc="comparison students")
    if rank != 0:
        return {}
    return write_compare_report(out)


# ---------------------------------------------------------------------------------------------- the report


def _rows(config: CompareConfig, out: Path, students: list[Student]) -> list[dict[str, Any]]:
    """The teacher's row, then one per student with its budget (None for the scaled and single-type ones)."""
    rows = [_teacher_row(config, out)]
    for student, row in zip(students, cohort_rows(config, students, out)):
        rows.append({"name": row.pop("name"), "group": row.pop("group"), "budget": _student_budget(config, student),
                     **row})
    return rows


def _student_budget(config: CompareConfig, student: Student) -> int | None:
    """The budget a student was made for (a pruning's, or the one its name carries), None for the scaled and
    single-type ones."""
    if student.prune:
        return student.prune_budget
    for b in config.budgets:
        if student.name == f"blockswap-{budget_text(b)}" or student.name.startswith(f"random-{budget_text(b)}-"):
            return b
    return None


def _finite(x: float) -> bool:
    return x is not None and math.isfinite(x)


def pick_versus_random(pick: np.ndarray, randoms: np.ndarray) -> dict[str, float | int | None]:
    """The random students' mean error, the pick's minus it (points; negative: the pick is better), its 95%
    interval, and how many random students train to a higher mean error.

    `pick` holds the pick's error per training seed, `randoms` one row per random student (NaN: a diverged run,
    left out). The interval is Welch's t interval for one network's mean against a population's mean. The random
    side's variance is that of the students' means over the number of students; it holds their spread and their
    seed noise. The pick's is the seed variance over its seeds, pooled over the pick and every random student,
    since all share the recipe and the seeds. With two seeds, the pick's own two errors alone would give it one
    degree of freedom, and a bootstrap of them covers the difference about 80% of the time. There is no interval
    without two random students or without a network trained with two seeds.
    """
    from scipy import stats  # the `study` extra

    pick = pick[np.isfinite(pick)]
    rows = [r[np.isfinite(r)] for r in randoms]
    rows = [r for r in rows if len(r)]
    means = np.array([r.mean() for r in rows])
    found: dict[str, float | int | None] = {"random_students_finite": len(rows),
                                            "random_mean_pct": float(means.mean()) if rows else math.nan,
                                            "difference_pct": math.nan, "low": math.nan, "high": math.nan,
                                            "beats": None}
    if not len(pick) or not rows:
        return found
    found["difference_pct"] = float(pick.mean() - means.mean())
    found["beats"] = int(np.sum(means > pick.mean()))
    networks = [pick, *rows]
    seed_df = sum(len(r) - 1 for r in networks)
    if len(rows) < 2 or seed_df < 1:
        return found
    seed_var = sum(float(np.sum((r - r.mean()) ** 2)) for r in networks) / seed_df
    pick_part, random_part = seed_var / len(pick), float(np.var(means, ddof=1)) / len(rows)
    se = math.sqrt(pick_part + random_part)
    if se == 0:
        found["low"] = found["high"] = found["difference_pct"]
        return found
    df = se ** 4 / (pick_part ** 2 / seed_df + random_part ** 2 / (len(rows) - 1))  # Welch-Satterthwaite
    half = float(stats.t.ppf(0.975, df)) * se
    found["low"], found["high"] = found["difference_pct"] - half, found["difference_pct"] + half
    return found


def _per_budget(config: CompareConfig, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """At each budget, BlockSwap's pick against the mean of the random students (with a 95% interval and how many
    it beats) and against each pruning: the difference of errors in points (negative: the pick trains to lower
    error)."""
    found = []
    for budget in config.budgets:
        here = [r for r in rows if r["budget"] == budget]
        pick = next(r for r in here if r["group"] == "blockswap")
        per_seed = [[r[f"test_error_pct_seed{s}"] for s in config.train_seeds]
                    for r in here if r["group"] == "random"]
        versus = pick_versus_random(np.array([pick[f"test_error_pct_seed{s}"] for s in config.train_seeds], float),
                                    np.array(per_seed, float).reshape(len(per_seed), len(config.train_seeds)))
        entry: dict[str, Any] = {
            "budget": budget, "blockswap": pick["name"], "blockswap_params": pick["params"],
            "blockswap_error_pct": pick["test_error_pct"], "random_students": len(per_seed),
            "random_students_finite": versus["random_students_finite"],
            "random_mean_error_pct": versus["random_mean_pct"], "versus_random_pct": versus["difference_pct"],
            "versus_random_low_pct": versus["low"], "versus_random_high_pct": versus["high"],
            "random_students_beaten": versus["beats"], "prune": {}}
        for method in config.prune:
            pruned = next(r for r in here if r["group"] == method)
            entry["prune"][method] = {"name": pruned["name"], "params": pruned["params"],
                                      "error_pct": pruned["test_error_pct"],
                                      "versus_pct": pick["test_error_pct"] - pruned["test_error_pct"]}
        found.append(entry)
    return found


def write_compare_report(out_dir: str | Path) -> dict[str, Any]:
    """results.csv, compare.json, report.md and compare.png of a finished comparison study folder."""
    out = Path(out_dir)
    config = CompareConfig.from_dict(read_json(out / "config.json", "comparison study config"))
    students = compare_students(config, out)
    rows = _rows(config, out, students)
    write_cohort_csv(out / "results.csv", rows)
    ceiling = cohort_ceiling(config, rows[1:])
    per_budget = _per_budget(config, rows)
    report: dict[str, Any] = {
        "config": asdict(config), "command": study_command("compare", config, out),
        "teacher": {"file": _teacher_file(config, out), "trained_here": config.teacher is None},
        "rows": [{"name": r["name"], "group": r["group"], "budget": r["budget"], "genotype": r["genotype"],
                  "params": r["params"], "macs": r["macs"], "test_error_pct": r["test_error_pct"],
                  "test_error_sd_pct": r["test_error_sd_pct"],
                  "test_error_pct_per_seed": {str(s): r[f"test_error_pct_seed{s}"] for s in config.train_seeds}}
                 for r in rows],
        "budgets": per_budget, "noise_ceiling": ceiling,
        "diverged": sum(not _finite(r["test_error_pct"]) for r in rows[1:])}
    write_json_atomic(out / "compare.json", json_safe(report))
    write_text_atomic(out / "report.md", _markdown(config, report))
    _plot(out / "compare.png", config, rows)
    summary = [f"teacher {config.model}: {fmt(rows[0]['test_error_pct'])}% error; {len(students)} students x "
               f"{len(config.train_seeds)} seed(s)"]
    for b in per_budget:
        versus = [f"random {fmt(b['random_mean_error_pct'])}% ({_signed(b['versus_random_pct'])}{_interval(b)}, "
                  f"beats {_beaten(b)})"]
        versus += [f"{m} {fmt(p['error_pct'])}% ({_signed(p['versus_pct'])})" for m, p in b["prune"].items()]
        summary.append(f"{budget_text(b['budget'])}: BlockSwap {fmt(b['blockswap_error_pct'])}% against "
                       + ", ".join(versus))
    summary.append(f"wrote {out / 'results.csv'}, compare.json, report.md and compare.png")
    return {**json_safe(report), "summary": summary}


def _signed(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:+.2f} points"


def _beaten(entry: dict[str, Any]) -> str:
    """'k of n' random students with a higher mean error than the pick (n: those that did not diverge)."""
    if entry["random_students_beaten"] is None:
        return "n/a"
    return f"{entry['random_students_beaten']} of {entry['random_students_finite']}"


def _interval(entry: dict[str, Any]) -> str:
    """' [low, high]' of the pick against random, or nothing where there is none (fewer than two random students,
    or no network trained with two seeds)."""
    low, high = entry["versus_random_low_pct"], entry["versus_random_high_pct"]
    return f" [{low:+.2f}, {high:+.2f}]" if _finite(low) and _finite(high) else ""


def _method(config: CompareConfig, row: dict[str, Any]) -> str:
    """The Method column as the paper words it."""
    group = row["group"]
    if group == "teacher":
        return "Teacher" if config.teacher is None else "Teacher (given)"
    if group == "scaled":
        return _scaled_label(config.model, row["name"])
    if group == "single":
        return row["name"].removeprefix("all-")
    if group == "random":
        return "Random" if config.random == 1 else f"Random #{row['name'].rsplit('-', 1)[1]}"
    if group == "blockswap":
        return "BlockSwap"
    return {"snip": "SNIP", "l1": "L1 pruning"}.get(group, group)


def _scaled_label(teacher: str, model: str) -> str:
    """D-Scaled, W-Scaled or D-W-Scaled for a WRN of a WRN teacher, else Scaled."""
    t, s = _WRN.fullmatch(get_backbone(teacher).name), _WRN.fullmatch(model)
    if t is None or s is None:
        return "Scaled"
    depth, width = int(s[1]) != int(t[1]), int(s[2]) != int(t[2])
    return {(True, False): "D-Scaled", (False, True): "W-Scaled", (True, True): "D-W-Scaled"}.get((depth, width),
                                                                                                  "Scaled")


def _lost_seeds(row: dict[str, Any]) -> list[str]:
    """The training seeds of a student whose run diverged while another finished (none for the teacher, whose
    other seeds are never trained)."""
    if row["group"] == "teacher" or not _finite(row["test_error_pct"]):
        return []
    return [seed for seed, error in row["test_error_pct_per_seed"].items() if not _finite(error)]


def _error_cell(row: dict[str, Any]) -> str:
    """Mean ± SD over the seeds, naming any seed whose run diverged (the mean is then the others')."""
    mean, sd = row["test_error_pct"], row["test_error_sd_pct"]
    if not _finite(mean):
        return "diverged"
    cell = f"{mean:.2f} ± {sd:.2f}" if _finite(sd) else f"{mean:.2f}"
    lost = _lost_seeds(row)
    return cell + f" (seed {', '.join(lost)} diverged)" if lost else cell


def _markdown(config: CompareConfig, report: dict[str, Any]) -> str:
    rows = report["rows"]
    teacher = (f"trained here once (cross-entropy, the same recipe, seed {config.train_seeds[0]}; `teacher/`)"
               if config.teacher is None else f"given (`{config.teacher}`, tested here on the same test images)")
    lines = [
        f"# Comparison: {config.model} teacher, budgets {', '.join(budget_text(b) for b in config.budgets)}",
        "", *made_by(report["command"]),
        f"Every student learns from one teacher by attention transfer; the teacher was {teacher}, so its row has no "
        "SD. Each student "
        f"trained {plural(config.epochs, 'epoch')} ({config.schedule}, lr {config.lr}, batch {config.batch_size}, "
        "train subset "
        f"{config.train_subset or 'all'}, test subset {config.test_subset or 'all'}) once per training seed "
        f"({', '.join(map(str, config.train_seeds))}). Error: final test error, mean ± SD over the seeds. "
        f"BlockSwap's pick is the best of a search of {config.samples} candidates at each budget (`search/`).", "",
        "## Students (the layout of Tables 2 and 6)", "",
        "| model | method | budget | params (K) | MACs (M) | error % |", "|---|---|---|---|---|---|"]
    for r in rows:
        model = r["name"] if r["group"] == "scaled" else config.model
        macs = "-" if r["macs"] is None else f"{r['macs'] / 1e6:.1f}"
        budget = "" if r["budget"] is None else budget_text(r["budget"])
        lines.append(f"| {model} | {_method(config, {**r})} | {budget} | {r['params'] / 1e3:.1f} | {macs} | "
                     f"{_error_cell(r)} |")
    methods = list(config.prune)
    lines += ["", "## At each budget", "",
              "BlockSwap's pick against the mean of the random students and against each pruned teacher: the "
              "difference of errors in points (negative: the pick trains to lower error). The interval against "
              "random is Welch's 95% t interval: the random side's variance is that of the students' mean errors, "
              "the pick's is the seed variance pooled over the pick and the random students (one network has too "
              "few seeds to give its own). \"Beats\" counts the random students whose mean error is higher than "
              "the pick's, of those that did not diverge.", ""]
    header = ["budget", "BlockSwap error %", "random mean error %", "BlockSwap - random [95% CI]", "beats"]
    for m in methods:
        header += [f"{_method(config, {'group': m, 'name': m})} error %",
                   f"BlockSwap - {_method(config, {'group': m, 'name': m})}"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for b in report["budgets"]:
        cells = [budget_text(b["budget"]), fmt(b["blockswap_error_pct"]), fmt(b["random_mean_error_pct"]),
                 _signed(b["versus_random_pct"]) + _interval(b), _beaten(b)]
        for m in methods:
            cells += [fmt(b["prune"][m]["error_pct"]), _signed(b["prune"][m]["versus_pct"])]
        lines.append("| " + " | ".join(cells) + " |")
    ceiling = report["noise_ceiling"]
    if ceiling and _finite(ceiling.get("seed_sd_pct")):
        lines += ["", f"Seed noise: one run's error lies {fmt(ceiling['seed_sd_pct'])} points (SD) from its "
                  f"student's mean; seeds {ceiling['seeds'][0]} and {ceiling['seeds'][1]} rank the students with "
                  f"Spearman {fmt(ceiling['spearman'])} [{fmt(ceiling['spearman_low'])}, "
                  f"{fmt(ceiling['spearman_high'])}]. A difference well inside the seed SD is not a result."]
    elif len(config.train_seeds) < 2:
        lines += ["", "One training seed: no SD and no seed noise to judge the differences by; give --train-seeds "
                  "0,1,2 as the paper does."]
    if report["diverged"]:
        lines += ["", f"{report['diverged']} student(s) diverged in every seed (failed.json in their folders)."]
    partly = [f"{r['name']} (seed {', '.join(lost)})" for r in rows if (lost := _lost_seeds(r))]
    if partly:
        lines += ["", f"Runs that diverged while the student's other seeds finished: {', '.join(partly)}. Their "
                  "failed.json says why; the student's error is the mean of its finished seeds, without an SD "
                  "where one is left."]
    lines += ["", "Notes:", "",
              "- A pruned teacher's params count its non-zero weights only, as the paper counts them (its weight "
              "tensors keep the teacher's size); it has no MACs, which depend on the sparse format.",
              "- CondenseNet-86 of the paper's Table 2 is a different network, not a block type, so it is not in "
              "this table.",
              *(["- L1 pruning prunes the teacher's trained weights and trains on from them, as the paper does: "
                 "its run continues the teacher's training. With a short recipe that is a head start no other "
                 "student has (SNIP prunes at initialisation)."] if "l1" in config.prune else []),
              "- Single types: every palette type whose all-T network lies inside a budget window, and each "
              "--types entry whatever its size.",
              "", "![error against parameters](compare.png)", ""]
    return "\n".join(lines)


_LINES = {"blockswap": ("BlockSwap", "tab:blue"), "random": ("Random (mean)", "tab:gray"),
          "snip": ("SNIP", "tab:orange"), "l1": ("L1 pruning", "tab:red")}
_POINTS = {"teacher": ("*", "black"), "scaled": ("s", "tab:green"), "single": ("D", "tab:purple")}


def _plot(path: Path, config: CompareConfig, rows: list[dict[str, Any]]) -> None:
    """Fig. 3: error against parameters (log), a line per budgeted method across budgets, labelled points for the
    teacher, the scaled and the single-type networks; SD error bars with two or more seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator

    bars = len(config.train_seeds) >= 2
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for group in ["blockswap", "random", *config.prune]:
        points = []
        for budget in config.budgets:
            members = [r for r in rows if r["group"] == group and r["budget"] == budget]
            if not members:
                continue
            per_seed = np.array([[r[f"test_error_pct_seed{s}"] for s in config.train_seeds] for r in members])
            seed_means = np.nanmean(per_seed, axis=0) if np.isfinite(per_seed).any() else per_seed[0]
            finite = seed_means[np.isfinite(seed_means)]
            points.append((float(np.mean([r["params"] for r in members])),
                           float(finite.mean()) if len(finite) else math.nan,
                           float(finite.std(ddof=1)) if len(finite) >= 2 else 0.0))
        if not points:
            continue
        x, y, sd = np.array(sorted(points)).T
        label, color = _LINES.get(group, (group, None))
        ax.errorbar(x, y, yerr=sd if bars else None, fmt="o-", color=color, label=label, capsize=3, lw=1.5, ms=5)
    randoms = [r for r in rows if r["group"] == "random" and _finite(r["test_error_pct"])]
    if randoms:  # the spread the pick is judged against, behind the lines
        ax.scatter([r["params"] for r in randoms], [r["test_error_pct"] for r in randoms], s=14, color="tab:gray",
                   alpha=0.45, zorder=1, label="random students (each)")
    for r in rows:
        if r["group"] not in _POINTS or not _finite(r["test_error_pct"]):
            continue
        marker, color = _POINTS[r["group"]]
        sd = r["test_error_sd_pct"] if bars and _finite(r["test_error_sd_pct"]) else None
        ax.errorbar([r["params"]], [r["test_error_pct"]], yerr=sd, fmt=marker, color=color, capsize=3,
                    ms=11 if marker == "*" else 7)
        label = f"teacher {config.model}" if r["group"] == "teacher" else r["name"].removeprefix("all-")
        ax.annotate(label, (r["params"], r["test_error_pct"]), textcoords="offset points", xytext=(7, 5),
                    fontsize=8, color=color, bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none",
                                                   "alpha": 0.8})
    for group, (marker, color) in _POINTS.items():
        if any(r["group"] == group for r in rows):
            ax.plot([], [], marker, color=color, label={"teacher": "teacher", "scaled": "scaled (all-Conv)",
                                                        "single": "single type"}[group])
    ax.set_xscale("log")
    params = [r["params"] for r in rows]
    ax.set_xlim(min(params) / 1.15, max(params) * 2.2)  # room for the labels right of the points
    ax.margins(y=0.08)
    thousands = FuncFormatter(lambda x, _: f"{x / 1e3:g}K" if x < 1e6 else f"{x / 1e6:g}M")
    ax.xaxis.set_major_formatter(thousands)
    ax.xaxis.set_minor_locator(LogLocator(base=10, subs=(2, 3, 5)))
    ax.xaxis.set_minor_formatter(thousands)
    ax.tick_params(axis="x", which="both", labelsize=8)
    ax.set_xlabel("parameters (pruned: non-zero)")
    ax.set_ylabel("test error %")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    seeds = f"mean ± SD of {len(config.train_seeds)} seeds" if bars else "one seed"
    ax.set_title(f"{config.model} students: error against parameters ({seeds}, {plural(config.epochs, 'epoch')})",
                 fontsize=10)
    save_png(fig, path)
