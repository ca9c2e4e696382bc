"""Why mix block types? (paper section 4.1, Fig. 2): single-type students against random mixed ones at a budget.

`run_mixing` trains, with one recipe and the same training seeds, two groups of
students of the teacher's backbone:

- "single": every default-palette type whose all-T network is buildable and
  lies inside the budget window (|params - budget| < tolerance * budget),
  named `all-<T>`;
- "mixed": `candidates` genotypes drawn uniformly from the window, as a search
  samples them, named `mixed-0000`, ...

and writes `results.csv` (one row per student), `mixing.json` (per single type
its error and the share of mixed students that beat it, with a 95% Wilson
interval; the mixed errors' summary; the noise ceiling with two seeds or more),
`report.md` and `mixing.png` (the density of the mixed errors with each single
type's error as a dotted line, as the paper's figure).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist

from ..space.backbones import Backbone
from ..space.blocks import PALETTE_NAMES
from ..space.genotype import Genotype
from ..space.sampling import sample_genotypes
from ..util.counts import format_count, parse_budget
from ..util.distributed import on_rank0
from ..util.errors import BlockSwapError
from ..util.options import check_fields, from_record, option, positive_int
from ..util.rundir import read_json, write_json_atomic, write_text_atomic
from .cohort import Student, claim_out_dir, cohort_ceiling, cohort_rows, study_command, train_cohort, write_cohort_csv
from .config import CohortConfig, require_extra
from .figures import save_png
from .report import fmt, json_safe, made_by, plural

__all__ = ["MixingConfig", "mixing_students", "single_type_params", "run_mixing", "write_mixing_report"]

_NEAREST = 3  # single types named when none lies inside the window


@dataclass(kw_only=True)
class MixingConfig(CohortConfig):
    """A mixing study: every single-type network inside the budget window and `candidates` random mixed genotypes
    of the budget, all trained with the recipe; saved as config.json."""

    budget: int = field(metadata=option("parameter budget, e.g. 200k", parse=parse_budget))
    candidates: int = field(default=100, metadata=option(
        "random mixed-blocktype students drawn (seeded, uniform over the budget window) and trained",
        check=positive_int))

    def __post_init__(self) -> None:
        self.budget = parse_budget(self.budget)
        check_fields(self)
        self.check_cohort()

    @classmethod
    def from_dict(cls, data: Any) -> MixingConfig:
        return from_record(cls, data, "mixing study config")


def single_type_params(backbone: Backbone) -> dict[str, int]:
    """Parameters of the all-T network of every default-palette type T buildable at every slot of `backbone`."""
    counts = {}
    for name in PALETTE_NAMES:
        genotype = Genotype.uniform(backbone, name)
        try:
            genotype.validate()
        except BlockSwapError:
            continue
        counts[name] = genotype.params()
    return counts


def mixing_students(config: MixingConfig) -> list[Student]:
    """The study's students: the single types inside the budget window ("single", `all-<T>`), then `candidates`
    genotypes drawn as a search draws them ("mixed", `mixed-NNNN`).

    A mixed draw that happens to use one type everywhere is kept: it is a random draw like the others, and redrawing
    it would bias the mixed group against single-type genotypes. Refuses a budget no single type lies near.
    """
    backbone = config.backbone()
    counts = single_type_params(backbone)
    window = config.tolerance * config.budget
    inside = [name for name, params in counts.items() if abs(params - config.budget) < window]
    if not inside:
        nearest = sorted(counts, key=lambda n: abs(counts[n] - config.budget))[:_NEAREST]
        needed = round(math.floor(abs(counts[nearest[0]] - config.budget) / config.budget * 1000) / 1000 + 0.001, 3)
        wider = f", or a --tolerance of {needed:g} or more" if needed < 1 else ""
        raise BlockSwapError(
            f"no single block type of {config.model} lies within {config.tolerance:.1%} of the budget "
            f"{format_count(config.budget)}; nearest: "
            + ", ".join(f"{n} ({format_count(counts[n])} params)" for n in nearest)
            + f": choose one of those budgets{wider}")
    students = [Student(f"all-{name}", "single", Genotype.uniform(backbone, name)) for name in inside]
    drawn = sample_genotypes(backbone, config.budget, config.candidates, config.tolerance, config.seed)
    return students + [Student(f"mixed-{i:04d}", "mixed", g) for i, g in enumerate(drawn)]


def run_mixing(config: MixingConfig, out_dir: str | Path, workers: int = 1, device: str | torch.device = "cpu",
               progress: bool = True, group: torch_dist.ProcessGroup | None = None) -> dict[str, Any]:
    """Train the study's students into `out_dir` (skipping what is done), then write its report; returns
    mixing.json's content with "summary" lines ({} on ranks other than 0)."""
    require_extra()
    out = Path(out_dir)
    students = mixing_students(config)  # before the folder is claimed: a bad budget leaves nothing behind
    on_rank0(group, lambda: claim_out_dir(out, config, "mixing"))
    train_cohort(config, students, out, workers, device, progress, group, desc="mixing students")  # all ranks done
    if group is not None and torch_dist.get_rank(group) != 0:
        return {}
    return write_mixing_report(out)


def _share_better(single: float, mixed: np.ndarray) -> dict[str, Any]:
    """How many of the (finite) mixed errors lie strictly below `single`, as a share with its 95% Wilson interval."""
    from scipy.stats import binomtest

    n = len(mixed)
    if n == 0 or not math.isfinite(single):
        return {"mixed_better": None, "mixed_n": n, "share_mixed_better": None, "share_low": None,
                "share_high": None}
    k = int((mixed < single).sum())
    ci = binomtest(k, n).proportion_ci(0.95, method="wilson")
    return {"mixed_better": k, "mixed_n": n, "share_mixed_better": k / n, "share_low": float(ci.low),
            "share_high": float(ci.high)}


def _mixed_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The mixed students' errors: how many trained (diverged ones left out and counted), mean, median, SD, extremes."""
    errors = np.array([r["test_error_pct"] for r in rows], float)
    finite = np.isfinite(errors)
    trained = errors[finite]
    single_type = sum(len(set(r["genotype"].split())) == 1 for r in rows)
    summary: dict[str, Any] = {"drawn": len(rows), "n": int(finite.sum()), "diverged": int((~finite).sum()),
                               "single_type_draws": single_type}
    if not len(trained):
        return summary | dict.fromkeys(("mean_error_pct", "median_error_pct", "sd_error_pct", "best_error_pct",
                                        "worst_error_pct", "best"))
    names = [r["name"] for r, ok in zip(rows, finite) if ok]
    return summary | {"mean_error_pct": float(trained.mean()), "median_error_pct": float(np.median(trained)),
                      "sd_error_pct": float(trained.std(ddof=1)) if len(trained) >= 2 else None,
                      "best_error_pct": float(trained.min()), "worst_error_pct": float(trained.max()),
                      "best": names[int(trained.argmin())]}


def write_mixing_report(out_dir: str | Path) -> dict[str, Any]:
    """results.csv, mixing.json, report.md and mixing.png of a finished mixing study folder; returns mixing.json's
    content with "summary" lines for the terminal."""
    out = Path(out_dir)
    config = MixingConfig.from_dict(read_json(out / "config.json", "mixing study config"))
    rows = cohort_rows(config, mixing_students(config), out)
    write_cohort_csv(out / "results.csv", rows)
    mixed_rows = [r for r in rows if r["group"] == "mixed"]
    mixed = np.array([r["test_error_pct"] for r in mixed_rows], float)
    mixed = mixed[np.isfinite(mixed)]
    singles = []
    for r in rows:
        if r["group"] == "single":
            singles.append({"name": r["name"], "block": r["genotype"].split()[0], "params": r["params"],
                            "macs": r["macs"], "test_error_pct": r["test_error_pct"],
                            "test_error_pct_by_seed": {str(s): r[f"test_error_pct_seed{s}"]
                                                       for s in config.train_seeds},
                            **_share_better(r["test_error_pct"], mixed)})
    report: dict[str, Any] = {"config": asdict(config), "command": study_command("mixing", config, out),
                              "single": singles, "mixed": _mixed_summary(mixed_rows),
                              "noise_ceiling": cohort_ceiling(config, rows)}
    report = json_safe(report)
    write_json_atomic(out / "mixing.json", report)
    write_text_atomic(out / "report.md", _markdown(report))
    _plot(out / "mixing.png", report, mixed)
    return report | {"summary": _summary(report, out)}


def _share(s: dict[str, Any]) -> str:
    if s["share_mixed_better"] is None:
        return "n/a"
    return (f"{100 * s['share_mixed_better']:.0f}% [{100 * s['share_low']:.0f}%, {100 * s['share_high']:.0f}%] "
            f"({s['mixed_better']} of {s['mixed_n']})")


def _mixed_line(m: dict[str, Any]) -> str:
    if not m["n"]:
        return f"Mixed: none of the {m['drawn']} students trained without diverging."
    line = (f"Mixed: {m['n']} students, error mean {fmt(m['mean_error_pct'])}%, median "
            f"{fmt(m['median_error_pct'])}%, SD {fmt(m['sd_error_pct'])} points, best {fmt(m['best_error_pct'])}% "
            f"({m['best']}), worst {fmt(m['worst_error_pct'])}%.")
    if m["diverged"]:
        line += f" {m['diverged']} diverged in training (failed.json in their folder) and are left out."
    if m["single_type_draws"]:
        line += (f" {m['single_type_draws']} of the random draws happen to use one block type only; they count as "
                 "mixed, being random draws like the rest.")
    return line


def _markdown(report: dict[str, Any]) -> str:
    c, m = report["config"], report["mixed"]
    lines = [
        f"# Mixing study: {c['model']} at {format_count(c['budget'])} parameters, {len(report['single'])} single "
        f"block types against {m['drawn']} random mixed students",
        "",
        *made_by(report["command"]),
        f"Every student has {c['model']}'s backbone within {c['tolerance']:.1%} of {format_count(c['budget'])} "
        f"parameters. Single: every block of one type; mixed: genotypes drawn uniformly from the budget window "
        f"(seed {c['seed']}), as a search samples them. Each trained {plural(c['epochs'], 'epoch')} "
        f"({c['schedule']}, lr "
        f"{c['lr']}, batch {c['batch_size']}, train subset {c['train_subset'] or 'all'}, test subset "
        f"{c['test_subset'] or 'all'}, "
        f"{'attention transfer from ' + c['teacher'] if c['teacher'] else 'cross-entropy only'}), training seeds "
        f"{', '.join(map(str, c['train_seeds']))}; error: the final test error, mean over the seeds. Share of mixed "
        "better: the mixed students whose error is strictly lower than the single type's, with a 95% Wilson interval.",
        "",
        "| single type | params | error % | share of mixed better [95% CI] |",
        "|---|---|---|---|",
    ]
    for s in sorted(report["single"], key=lambda s: s["params"]):
        lines.append(f"| {s['block']} | {format_count(s['params'])} | {fmt(s['test_error_pct'])} | {_share(s)} |")
    lines += ["", _mixed_line(m)]
    ceiling = report["noise_ceiling"]
    if ceiling and ceiling["spearman"] is not None:
        lines += ["", f"Noise ceiling: the errors of training seeds {ceiling['seeds'][0]} and {ceiling['seeds'][1]} "
                  f"rank all {ceiling['n']} students with Spearman {fmt(ceiling['spearman'])} "
                  f"[{fmt(ceiling['spearman_low'])}, {fmt(ceiling['spearman_high'])}]; the training seed moves "
                  f"one run's error by SD {fmt(ceiling['seed_sd_pct'])} points, and the student accounts for "
                  f"{fmt(100 * max(0.0, ceiling['candidate_share']), 0)}% of its variance (one-way ICC)."]
    lines += ["", "![density of the mixed students' errors, each single type's error as a dotted line](mixing.png)",
              ""]
    return "\n".join(lines)


def _summary(report: dict[str, Any], out: Path) -> list[str]:
    m = report["mixed"]
    lines = [f"mixed: {m['n']} of {m['drawn']} students trained, error mean {fmt(m['mean_error_pct'])}% "
             f"(best {fmt(m['best_error_pct'])}%, worst {fmt(m['worst_error_pct'])}%)"]
    for s in report["single"]:
        lines.append(f"{s['name']}: {format_count(s['params'])} params, error {fmt(s['test_error_pct'])}%; mixed "
                     f"better: {_share(s)}")
    lines.append(f"wrote {out / 'results.csv'}, mixing.json, report.md and mixing.png")
    return lines


def _plot(path: Path, report: dict[str, Any], mixed: np.ndarray) -> None:
    """The mixed errors' density (a histogram below two distinct values) with a rug, each single type a labelled
    dotted line, the mixed mean a dashed one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import gaussian_kde

    c = report["config"]
    singles = sorted((s for s in report["single"] if s["test_error_pct"] is not None),
                     key=lambda s: s["test_error_pct"])
    points = np.concatenate([mixed, [s["test_error_pct"] for s in singles]])
    kde = gaussian_kde(mixed) if len(np.unique(mixed)) >= 2 else None
    fig, ax = plt.subplots(figsize=(8, 4.6))
    if len(points):
        lo, hi = float(points.min()), float(points.max())
        tail = 3 * math.sqrt(float(kde.covariance[0, 0])) if kde is not None else 0.0  # the density's tails in view
        pad = max(0.1 * (hi - lo), 0.5, tail)
        ax.set_xlim(max(0.0, lo - pad), min(100.0, hi + pad))  # an error lies in [0, 100]
    blue, red = "tab:blue", "tab:red"
    if kde is not None:
        x = np.linspace(*ax.get_xlim(), 400)
        density = kde(x)
        ax.fill_between(x, density, color=blue, alpha=0.3, lw=0)
        ax.plot(x, density, color=blue, lw=1.5, label=f"mixed, {len(mixed)} students (KDE)")
        ax.set_ylabel("density")
    elif len(mixed):
        ax.hist(mixed, bins=1, color=blue, alpha=0.3, label=f"mixed, {len(mixed)} student(s) (too few for a KDE)")
        ax.set_ylabel("students")
    ax.set_ylim(0, ax.get_ylim()[1] / 0.6)  # the top 40% holds the single types' labels
    if len(mixed):
        ax.vlines(mixed, 0, 0.05, transform=ax.get_xaxis_transform(), color=blue, lw=1,
                  label="each mixed student (rug)")
        ax.axvline(float(mixed.mean()), color=blue, ls="--", lw=1.5,
                   label=f"mixed mean {fmt(float(mixed.mean()))}%")
    levels, (left, right) = 6, ax.get_xlim()
    for i, s in enumerate(singles):
        e = s["test_error_pct"]
        ax.axvline(e, color=red, ls=":", lw=2, label="single block type" if i == 0 else None)
        near_right = e > left + 0.8 * (right - left)  # such a label goes left of its line, inside the axes
        ax.text(e, 0.96 - 0.065 * (i % levels), f" {s['block']} " if near_right else f" {s['block']}",
                transform=ax.get_xaxis_transform(), color=red, fontsize=8, ha="right" if near_right else "left",
                va="top", bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})
    ax.set_xlabel("test error %")
    ax.set_title(f"{c['model']} at {format_count(c['budget'])} parameters: random mixed students and single block "
                 f"types ({plural(c['epochs'], 'epoch')})", fontsize=10)
    if not len(mixed):
        ax.text(0.5, 0.5, "no mixed student trained without diverging", transform=ax.transAxes, ha="center")
        ax.set_yticks([])
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=4, frameon=False)
    save_png(fig, path)
