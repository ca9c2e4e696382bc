"""Where does a cheap block hurt? (paper Appendix B, Figs. 4 and 5): the teacher with one block at a time swapped.

`run_placement` trains the all-Conv teacher network (student "teacher") and,
for every block position where `type` can be built, the same network with that
block alone swapped for `type` (student "block-NN", NN counting blocks from 1
as the paper does), each once per training seed. `write_placement_report` then
writes:

- `results.csv`: the cohort's rows (`cohort.cohort_rows`) plus the position,
  its stage (from 1), the parameters saved against the teacher and the change of
  error against the teacher's, in points of test error;
- `placement.json`: the settings, the command, the teacher, one row per
  position, the positions where `type` cannot be built, the most and least
  sensitive positions and, with two or more seeds, the noise ceiling;
- `report.md` and `placement.png` (Fig. 4: (a) error and (b) parameters per
  position, bars coloured by stage, the teacher as a line).

`study_goodbad` answers section 4.4 from any finished study's results.csv: which
block types and positions the students far below ("good") and far above ("bad")
the mean error use, with a drawing of the best good and the worst bad genotype
(Fig. 5).
"""

from __future__ import annotations

import csv
import math
import shlex
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist

from ..space.backbones import Backbone, get_backbone
from ..space.blocks import block_type, has_block_type, registered_block_types
from ..space.genotype import Genotype
from ..util.counts import budget_text, format_count
from ..util.distributed import on_rank0
from ..util.errors import BlockSwapError
from ..util.options import check_fields, from_record, option
from ..util.rundir import read_json, write_json_atomic, write_text_atomic
from .cohort import Student, claim_out_dir, cohort_ceiling, cohort_rows, study_command, train_cohort, write_cohort_csv
from .config import CohortConfig, require_extra
from .figures import save_png
from .report import fmt, json_safe, made_by, plural

__all__ = ["PlacementConfig", "PAPER_G", "placement_students", "run_placement", "write_placement_report",
           "study_goodbad"]

PAPER_G = "DConv"  # the paper's G(N): grouped + pointwise with one group per channel, i.e. depthwise + pointwise


@dataclass(kw_only=True)
class PlacementConfig(CohortConfig):
    """A placement study: the all-Conv teacher network, and one student per block position with that block alone
    swapped for `type`, all trained with the recipe; saved as config.json."""

    type: str = field(default=PAPER_G, metadata=option(
        f"the block type swapped in, one position at a time (default {PAPER_G}: the paper's G(N), depthwise + "
        "pointwise)"))

    def __post_init__(self) -> None:
        check_fields(self)
        self.check_cohort()

    @classmethod
    def from_dict(cls, data: Any) -> PlacementConfig:
        return from_record(cls, data, "placement study config")


def _student_name(position: int) -> str:
    """The folder of the student whose block `position` (counted from 1) is swapped."""
    return f"block-{position:02d}"


def _buildable(config: PlacementConfig) -> list[bool]:
    """Per block slot, whether `config.type` can be built there; refuses an unregistered type or the teacher's own."""
    names = list(registered_block_types())
    if not has_block_type(config.type):
        raise BlockSwapError(f"--type {config.type!r} is not a registered block type; choose one of "
                             f"{', '.join(names)} (or register your own in a plugin)")
    if config.type == config.backbone().teacher_block:
        raise BlockSwapError(f"--type {config.type} is the teacher's own block, so every student would be the teacher: "
                             f"name a cheaper type, e.g. {PAPER_G}")
    kind = block_type(config.type)
    fits = [kind.is_valid(s.c_in, s.c_out, s.stride) for s in config.backbone().block_shapes()]
    if not any(fits):
        raise BlockSwapError(f"block type {config.type!r} cannot be built at any block position of {config.model}: "
                             "choose another --type")
    return fits


def placement_students(config: PlacementConfig) -> list[Student]:
    """The teacher network, then one student per block position (from 1) with that block alone swapped for `type`;
    positions where the type cannot be built are left out."""
    backbone = config.backbone()
    teacher = Genotype.uniform(backbone)
    students = [Student("teacher", "reference", teacher)]
    for i, fits in enumerate(_buildable(config)):
        if fits:
            blocks = list(teacher.blocks)
            blocks[i] = config.type
            students.append(Student(_student_name(i + 1), "swapped", Genotype(backbone, tuple(blocks))))
    return students


def run_placement(config: PlacementConfig, out_dir: str | Path, workers: int = 1,
                  device: str | torch.device = "cpu", progress: bool = True,
                  group: torch_dist.ProcessGroup | None = None) -> dict[str, Any]:
    """Train the study's students into `out_dir` (skipping what is done), then write its report; returns
    placement.json's content with the terminal's "summary" lines ({} on ranks other than 0)."""
    require_extra()
    out = Path(out_dir)
    students = placement_students(config)
    on_rank0(group, lambda: claim_out_dir(out, config, what="placement"))  # checks the data before the folder
    train_cohort(config, students, out, workers, device, progress, group, desc="placement students")
    if group is not None and torch_dist.get_rank(group) != 0:
        return {}
    return write_placement_report(out)


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _error_cell(row: dict[str, Any], seeds: int) -> str:
    """'5.21' for one seed, '5.21 ± 0.10' (SD over seeds) for several, 'diverged' when no run has an error."""
    if not _finite(row["test_error_pct"]):
        return "diverged"
    if seeds >= 2 and _finite(row["test_error_sd_pct"]):
        return f"{row['test_error_pct']:.2f} ± {row['test_error_sd_pct']:.2f}"
    return f"{row['test_error_pct']:.2f}"


def write_placement_report(out_dir: str | Path) -> dict[str, Any]:
    """results.csv, placement.json, report.md and placement.png of a finished placement study folder; returns
    placement.json's content with the terminal's "summary" lines."""
    out = Path(out_dir)
    config = PlacementConfig.from_dict(read_json(out / "config.json", "placement study config"))
    backbone = config.backbone()
    students = placement_students(config)
    rows = cohort_rows(config, students, out)
    teacher = rows[0]
    stages = backbone.block_stages()
    for row in rows:
        position = int(row["name"].split("-")[1]) if row["group"] == "swapped" else None
        row["position"] = position
        row["stage"] = None if position is None else stages[position - 1] + 1
        row["params_saved"] = teacher["params"] - row["params"]
        row["error_change_pct"] = row["test_error_pct"] - teacher["test_error_pct"]
    write_cohort_csv(out / "results.csv", rows)
    swapped = rows[1:]
    trained = [r for r in swapped if _finite(r["test_error_pct"])]

    def pick(row: dict[str, Any] | None) -> dict[str, Any] | None:
        keys = ("position", "stage", "name", "params", "test_error_pct", "error_change_pct")
        return None if row is None else {k: row[k] for k in keys}

    most = max(trained, key=lambda r: r["test_error_pct"]) if trained else None
    least = min(trained, key=lambda r: r["test_error_pct"]) if trained else None
    report = json_safe({
        "config": asdict(config),
        "command": study_command("placement", config, out),
        "teacher": {k: teacher[k] for k in teacher if k not in ("position", "stage", "params_saved",
                                                                 "error_change_pct")},
        "positions": swapped,
        "skipped_positions": [i + 1 for i, fits in enumerate(_buildable(config)) if not fits],
        "most_sensitive": pick(most),
        "least_sensitive": pick(least),
        "diverged": sum(not _finite(r["test_error_pct"]) for r in rows),
        "noise_ceiling": cohort_ceiling(config, rows),
    })
    write_json_atomic(out / "placement.json", report)
    write_text_atomic(out / "report.md", _placement_markdown(report, rows, backbone))
    _plot_placement(out / "placement.png", rows, report, backbone)
    summary = [f"teacher {config.model}: {fmt(teacher['test_error_pct'])}% error, "
               f"{format_count(teacher['params'])} params; {len(swapped)} positions swapped for {config.type}"]
    if most is not None and least is not None:
        summary.append(f"most sensitive: block {most['position']} ({fmt(most['test_error_pct'])}%, "
                       f"{fmt(most['error_change_pct'], sign=True)} points); least: block {least['position']} "
                       f"({fmt(least['test_error_pct'])}%, {fmt(least['error_change_pct'], sign=True)} points)")
    summary.append(f"wrote {out / 'results.csv'}, placement.json, report.md and placement.png")
    return {**report, "summary": summary}


def _placement_markdown(report: dict[str, Any], rows: list[dict[str, Any]], backbone: Backbone) -> str:
    c = report["config"]
    seeds = len(c["train_seeds"])
    teacher = rows[0]
    lines = [
        f"# Placement study: {c['model']} with one block at a time swapped for {c['type']}", "",
        *made_by(report["command"]),
        f"The all-Conv {c['model']} ({backbone.num_blocks} blocks in {len(backbone.stage_lengths)} stages) and, for "
        f"each block position, the same network with that block alone replaced by {c['type']}. Each trained "
        f"{plural(c['epochs'], 'epoch')} ({c['schedule']}, lr {c['lr']}, batch {c['batch_size']}, train subset "
        f"{c['train_subset'] or 'all'}, test subset {c['test_subset'] or 'all'}, "
        f"{'attention transfer from ' + c['teacher'] if c['teacher'] else 'cross-entropy only'}), training seeds "
        f"{', '.join(map(str, c['train_seeds']))}. Error: the final test error"
        f"{', mean ± SD over the seeds' if seeds >= 2 else ''}; change: points of error against the teacher network "
        "(positive: the swap hurts). Positions count blocks from 1, stages from 1.", "",
        "| position | stage | params | params saved | error % | change vs teacher (points) |",
        "|---|---|---|---|---|---|",
        f"| teacher (all Conv) | | {format_count(teacher['params'])} | | {_error_cell(teacher, seeds)} | |",
    ]
    for r in rows[1:]:
        lines.append(f"| {r['position']} | {r['stage']} | {format_count(r['params'])} | "
                     f"{format_count(r['params_saved'])} | {_error_cell(r, seeds)} | "
                     f"{fmt(r['error_change_pct'], sign=True)} |")
    most, least = report["most_sensitive"], report["least_sensitive"]
    lines.append("")
    if most is not None and least is not None:
        lines.append(f"Swapping block {most['position']} (stage {most['stage']}) hurts most: "
                     f"{fmt(most['test_error_pct'])}% error, {fmt(most['error_change_pct'], sign=True)} points "
                     f"against the teacher; swapping block {least['position']} (stage {least['stage']}) hurts "
                     f"least: {fmt(least['test_error_pct'])}%, {fmt(least['error_change_pct'], sign=True)} points. "
                     "The paper (Appendix B) finds the blocks at the start and end of a stage the most sensitive.")
    else:
        lines.append("Every swapped student diverged: no position can be ranked.")
    if report["skipped_positions"]:
        lines += ["", f"{c['type']} cannot be built at block position(s) "
                  f"{', '.join(map(str, report['skipped_positions']))}: no student there."]
    if report["diverged"]:
        lines += ["", f"{report['diverged']} student(s) diverged in every seed (failed.json in their run folders): "
                  "no error, left out of the ranking."]
    ceiling = report["noise_ceiling"]
    if ceiling:
        lines += ["", f"Noise ceiling: the errors of seeds {ceiling['seeds'][0]} and {ceiling['seeds'][1]} rank "
                  f"these {len(rows)} networks with Spearman {fmt(ceiling['spearman'])}; one run's error varies "
                  f"with the seed by SD {fmt(ceiling['seed_sd_pct'])} points, so smaller differences between "
                  "positions are noise."]
    lines += ["", "![(a) error and (b) parameters per swapped position](placement.png)", ""]
    return "\n".join(lines)


def _zoom(values: list[float]) -> tuple[float, float]:
    """Axis limits around `values` with a margin, so bars that differ by a little still look different."""
    lo, hi = min(values), max(values)
    pad = 0.2 * (hi - lo) if hi > lo else max(abs(hi) * 0.05, 1.0)
    return max(0.0, lo - pad), hi + pad


def _plot_placement(path: Path, rows: list[dict[str, Any]], report: dict[str, Any], backbone: Backbone) -> None:
    """Fig. 4: (a) error and (b) parameters per swapped position, bars coloured by stage, the teacher as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter

    c = report["config"]
    teacher, swapped = rows[0], rows[1:]
    colours = plt.get_cmap("tab10").colors
    n = backbone.num_blocks
    fig, (ax_err, ax_par) = plt.subplots(2, 1, figsize=(max(7.0, 0.32 * n + 4.0), 6.8), sharex=True)
    with_error = [r for r in swapped if _finite(r["test_error_pct"])]
    sd = [r["test_error_sd_pct"] if _finite(r["test_error_sd_pct"]) else 0.0 for r in with_error]
    ax_err.bar([r["position"] for r in with_error], [r["test_error_pct"] for r in with_error],
               yerr=sd if len(c["train_seeds"]) >= 2 else None, capsize=2, ecolor="black",
               color=[colours[(r["stage"] - 1) % len(colours)] for r in with_error], edgecolor="black", linewidth=0.4)
    ax_par.bar([r["position"] for r in swapped], [r["params"] for r in swapped],
               color=[colours[(r["stage"] - 1) % len(colours)] for r in swapped], edgecolor="black", linewidth=0.4)
    errors = [r["test_error_pct"] + s for r, s in zip(with_error, sd)] + [r["test_error_pct"] - s for r, s in
                                                                          zip(with_error, sd)]
    if _finite(teacher["test_error_pct"]):
        ax_err.axhline(teacher["test_error_pct"], color="black", linestyle="--", linewidth=1)
        errors.append(teacher["test_error_pct"])
    if errors:
        ax_err.set_ylim(*_zoom(errors))
    ax_par.axhline(teacher["params"], color="black", linestyle="--", linewidth=1)
    ax_par.set_ylim(*_zoom([r["params"] for r in swapped] + [teacher["params"]]))
    marks = [(p, "not built") for p in report["skipped_positions"]]
    marks += [(r["position"], "diverged") for r in swapped if not _finite(r["test_error_pct"])]
    for position, text in marks:
        for ax in (ax_err, ax_par) if text == "not built" else (ax_err,):
            ax.text(position, 0.03, text, transform=ax.get_xaxis_transform(), rotation=90, ha="center",
                    va="bottom", fontsize=7, color="grey")
    ax_err.set_ylabel("final test error %")
    ax_err.set_title(f"(a) error with one block swapped for {c['type']}", fontsize=10)
    ax_par.set_ylabel("parameters")
    ax_par.yaxis.set_major_formatter(FuncFormatter(lambda v, _: format_count(v)))
    ax_par.set_title("(b) parameters of that network", fontsize=10)
    ax_par.set_xlabel("block position swapped")
    ax_par.set_xticks(range(1, n + 1))
    ax_par.set_xlim(0.4, n + 0.6)
    ax_par.tick_params(axis="x", labelsize=8 if n <= 24 else 6)
    handles = [Patch(facecolor=colours[s % len(colours)], edgecolor="black", label=f"stage {s + 1}")
               for s in range(len(backbone.stage_lengths))]
    handles.append(plt.Line2D([], [], color="black", linestyle="--", label="teacher (all Conv)"))
    ax_err.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(f"{c['model']}: one block at a time swapped for {c['type']} ({plural(c['epochs'], 'epoch')}, "
                 f"{plural(len(c['train_seeds']), 'seed')})", fontsize=11)
    save_png(fig, path, top=1 - 0.1 / fig.get_figheight())


_SETS = ("good", "bad", "all")


@dataclass
class _Student:
    """One row of a finished study used by goodbad: a label, its error and its block names."""

    label: str
    error: float
    blocks: tuple[str, ...]


def _read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise BlockSwapError(f"{path} not found: give --study a finished study folder (study mixing, rank or compare)")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    missing = [c for c in ("genotype", "test_error_pct") if not rows or c not in rows[0]]
    if missing:
        raise BlockSwapError(f"{path} has no {' or '.join(missing)} column (or no rows): it is not a study's results")
    return rows


def _used_rows(rows: list[dict[str, str]], budget: int | None = None) -> tuple[list[dict[str, str]], str]:
    """The students a good/bad split is over: group 'mixed' (study mixing), else 'random' (study compare) of one
    budget (`budget`, needed when the comparison drew random students at several), else all."""
    groups = {r.get("group") for r in rows}
    if "random" in groups and "mixed" not in groups:
        return _one_budget([r for r in rows if r["group"] == "random"], budget)
    if "blockswap" in groups:  # a comparison without random students: its networks differ by budget and by kind
        raise BlockSwapError("this study compare trained no random students to split (--random 0); rerun it with "
                             "--random N to draw them")
    if budget is not None:
        raise BlockSwapError("--budget picks the random students of one budget of a study compare; this study has "
                             "one set of students: leave it out")
    if "mixed" in groups:
        mixed = [r for r in rows if r["group"] == "mixed"]
        return mixed, f"the {len(mixed)} students of group 'mixed' (study mixing's random genotypes)"
    return rows, f"all {len(rows)} students"


def _one_budget(random: list[dict[str, str]], budget: int | None) -> tuple[list[dict[str, str]], str]:
    """study compare's random students (named random-<budget>-<i>) at one budget: errors at different budgets
    differ by the budget, so a split over them would call the larger networks good."""
    by_budget: dict[str, list[dict[str, str]]] = {}
    for r in random:
        by_budget.setdefault(r["name"].rsplit("-", 1)[0].removeprefix("random-"), []).append(r)
    if budget is None and len(by_budget) == 1:
        [(text, chosen)] = by_budget.items()
    elif budget is None:
        raise BlockSwapError(f"the study has random students at {len(by_budget)} budgets ({', '.join(by_budget)}): "
                             f"give --budget to split one of them (e.g. --budget {next(iter(by_budget))})")
    else:
        text = budget_text(budget)
        if text not in by_budget:
            raise BlockSwapError(f"the study has no random students at {text}; its budgets: {', '.join(by_budget)}")
        chosen = by_budget[text]
    return chosen, f"the {len(chosen)} students of group 'random' at {text} (study compare's random genotypes)"


def _error(text: str) -> float:
    try:
        return float(text) if text.strip() else math.nan
    except ValueError:
        return math.nan


def _capacity(backbone: Backbone, position: int, name: str) -> float:
    """Type `name`'s body parameters at block `position` (from 0) as a share of the teacher's block it replaces."""
    s = backbone.block_shapes()[position]
    post = backbone.post_activation
    return block_type(name).params(s.c_in, s.c_out, s.stride, post) / block_type(backbone.teacher_block).params(
        s.c_in, s.c_out, s.stride, post)


def study_goodbad(study_dir: str | Path, sd: float = 2.0, budget: int | None = None) -> dict[str, Any]:
    """Block types and positions of the "good" and "bad" students of a finished study (error more than `sd`
    standard deviations below / above the mean; of a study compare, its random students at `budget`); writes
    goodbad.csv, goodbad.md, good.png and bad.png."""
    from ..space.drawing import plot_genotype

    require_extra()
    if not (math.isfinite(sd) and sd > 0):
        raise BlockSwapError(f"--sd must be a positive number of standard deviations, got {sd}")
    folder = Path(study_dir)
    rows = _read_rows(folder / "results.csv")
    model = read_json(folder / "config.json", "study config").get("model")
    if not isinstance(model, str):
        raise BlockSwapError(f"{folder / 'config.json'} names no model: give --study a finished study folder")
    backbone = get_backbone(model)
    used, source = _used_rows(rows, budget)
    students, other_model, diverged = [], 0, 0
    for i, r in enumerate(used):
        blocks = tuple(r["genotype"].split())
        if len(blocks) != backbone.num_blocks:
            other_model += 1  # e.g. a scaled model of study compare: its blocks are not positions of `model`
            continue
        error = _error(r["test_error_pct"])
        if not math.isfinite(error):
            diverged += 1
            continue
        Genotype(backbone, blocks).validate()
        students.append(_Student(r.get("name") or r.get("index") or str(i), error, blocks))
    if len(students) < 3:
        raise BlockSwapError(f"{folder / 'results.csv'} has {len(students)} {model} student(s) with a test error "
                             "among those used; a good/bad split needs 3 or more")
    errors = np.array([s.error for s in students])
    mean, spread = float(errors.mean()), float(errors.std(ddof=1))
    sets = {"good": sorted((s for s in students if s.error < mean - sd * spread), key=lambda s: s.error),
            "bad": sorted((s for s in students if s.error > mean + sd * spread), key=lambda s: -s.error),
            "all": students}
    counts = {name: [Counter(s.blocks[p] for s in members) for p in range(backbone.num_blocks)]
              for name, members in sets.items()}
    lines = ["set,position,type,count"]
    for name in _SETS:
        for p, counter in enumerate(counts[name]):
            for kind, n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])):
                lines.append(f"{name},{p + 1},{kind},{n}")
    write_text_atomic(folder / "goodbad.csv", "\n".join(lines) + "\n")
    drawn = {}
    for name in ("good", "bad"):
        png = folder / f"{name}.png"
        if sets[name]:
            plot_genotype(Genotype(backbone, sets[name][0].blocks), png)
            drawn[name] = png.name
        else:
            png.unlink(missing_ok=True)  # an earlier run's picture at another --sd would be taken for this one's
    stats = {"mean_error_pct": mean, "sd_error_pct": spread, "good_below_pct": mean - sd * spread,
             "bad_above_pct": mean + sd * spread}
    command = shlex.join(["blockswap", "study", "goodbad", "--study", str(folder), "--sd", f"{sd:g}",
                          *(["--budget", budget_text(budget)] if budget is not None else [])])
    write_text_atomic(folder / "goodbad.md", _goodbad_markdown(command, model, backbone, source, sd, stats, sets,
                                                               counts, drawn, other_model, diverged))
    summary = [f"{len(students)} students, error {mean:.2f} ± {spread:.2f}%: {len(sets['good'])} good (< "
               f"{stats['good_below_pct']:.2f}%), {len(sets['bad'])} bad (> {stats['bad_above_pct']:.2f}%)"]
    if not sets["good"] or not sets["bad"]:
        summary.append(f"no {' and no '.join(n for n in ('good', 'bad') if not sets[n])} student at --sd {sd:g}: "
                       "try a smaller --sd")
    summary.append(f"wrote {folder / 'goodbad.csv'}, goodbad.md"
                   + "".join(f", {png}" for png in drawn.values()))
    return {"study": str(folder), "model": model, "source": source, "sd": sd, "students": len(students), **stats,
            "good": [{"label": s.label, "test_error_pct": s.error, "genotype": " ".join(s.blocks)}
                     for s in sets["good"]],
            "bad": [{"label": s.label, "test_error_pct": s.error, "genotype": " ".join(s.blocks)}
                    for s in sets["bad"]],
            "drawn": drawn, "summary": summary}


def _goodbad_markdown(command: str, model: str, backbone: Backbone, source: str, sd: float, stats: dict[str, float],
                      sets: dict[str, list[_Student]], counts: dict[str, list[Counter[str]]], drawn: dict[str, str],
                      other_model: int, diverged: int) -> str:
    n_all = len(sets["all"])
    lines = [f"# Good and bad students: {model}, {sd:g} SD from the mean", "", *made_by(command),
             f"Of {source}, {n_all} have a test error (mean {stats['mean_error_pct']:.2f}%, SD "
             f"{stats['sd_error_pct']:.2f} points). Good: error below {stats['good_below_pct']:.2f}% "
             f"({plural(len(sets['good']), 'student')}); bad: error above {stats['bad_above_pct']:.2f}% "
             f"({plural(len(sets['bad']), 'student')})."]
    if diverged:
        lines[-1] += f" {diverged} diverged student(s) are left out."
    if other_model:
        lines[-1] += f" {other_model} student(s) of another network than {model} (another block count) are left out."
    missing = [n for n in ("good", "bad") if not sets[n]]
    if missing:
        lines += ["", f"No {' and no '.join(missing)} student at {sd:g} SD: rerun with a smaller --sd "
                  f"(e.g. --sd {max(sd / 2, 0.5):g}) for a split."]
    lines += ["", "## Block types used", "",
              "Share of all block slots of each set that hold the type.", "",
              "| type | family | good % | bad % | all % |", "|---|---|---|---|---|"]
    slots = {name: max(1, len(members) * backbone.num_blocks) for name, members in sets.items()}
    totals = {name: sum(counts[name], Counter()) for name in _SETS}
    for kind, _ in sorted(totals["all"].items(), key=lambda kv: (-kv[1], kv[0])):
        cells = " | ".join(f"{100 * totals[name][kind] / slots[name]:.0f}" if sets[name] else "n/a"
                           for name in _SETS)
        lines.append(f"| {kind} | {block_type(kind).family} | {cells} |")
    lines += ["", "## By position", "",
              "Per block position (from 1): the most common type (its family, and how many of the set hold it), and "
              "capacity: the mean over the set of the block's parameters as a share of the Conv block it replaces "
              "(the paper ranks capacity by each type's error when trained alone, which this study does not have).",
              "", "| position | stage | good: most common | good capacity % | bad: most common | bad capacity % | "
              "all: most common | all capacity % |", "|---|---|---|---|---|---|---|---|"]
    stages = backbone.block_stages()
    capacity = {name: [float(np.mean([_capacity(backbone, p, s.blocks[p]) for s in members])) if members else math.nan
                       for p in range(backbone.num_blocks)] for name, members in sets.items()}
    for p in range(backbone.num_blocks):
        cells = []
        for name in _SETS:
            if not sets[name]:
                cells += ["n/a", "n/a"]
                continue
            kind, n = sorted(counts[name][p].items(), key=lambda kv: (-kv[1], kv[0]))[0]
            cells += [f"{kind} ({block_type(kind).family}, {n}/{len(sets[name])})", f"{100 * capacity[name][p]:.0f}"]
        lines.append(f"| {p + 1} | {stages[p] + 1} | {' | '.join(cells)} |")
    edge = [p for p in range(backbone.num_blocks)
            if p == 0 or p == backbone.num_blocks - 1 or stages[p - 1] != stages[p] or stages[p + 1] != stages[p]]
    middle = [p for p in range(backbone.num_blocks) if p not in edge]
    lines += ["", "## Against the paper", "",
              "The paper (section 4.4, Appendix B) finds that good and bad networks use much the same block types, "
              "so where a block sits matters more than which types are used, and that good networks keep "
              "high-capacity blocks at the start and end of each stage. Here, the mean capacity at the first and "
              "last block of each stage against the blocks between:", "",
              "| set | stage start/end capacity % | mid-stage capacity % |", "|---|---|---|"]
    for name in _SETS:
        if sets[name]:
            mid = f"{100 * np.mean([capacity[name][p] for p in middle]):.0f}" if middle else "n/a (no mid-stage block)"
            lines.append(f"| {name} | {100 * np.mean([capacity[name][p] for p in edge]):.0f} | {mid} |")
    for name, what in (("good", "the best good"), ("bad", "the worst bad")):
        if name in drawn:
            s = sets[name][0]
            lines += ["", f"![{what} student, {s.label}: {s.error:.2f}% error]({drawn[name]})"]
    if drawn:
        lines += ["", "The drawings number the blocks from 0 (position 1 above is their block 0); bar height is the "
                  "block's parameters, colour its family."]
    lines.append("")
    return "\n".join(lines)
