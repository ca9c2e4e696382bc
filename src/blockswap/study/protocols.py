"""Which training protocol gives a trustworthy target: the noise ceilings of several studies of the same kind
side by side, against what one training run costs.

Each folder is a `blockswap study rank` run with two or more training seeds
(finished or not: only candidates whose every seed finished are used, so a
sweep can be read while it runs). For each one, `compare_protocols` reports
the seed-to-seed Spearman and the one-way ICC with 95% bootstrap intervals
(`ranking.noise_ceiling`) and the minutes one run took, and writes
protocols.csv, protocols.md and protocols.png.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..util.errors import BlockSwapError
from ..util.rundir import read_json, write_text_atomic
from .config import StudyConfig, candidate_dir, final_error, run_finished, trained_indices
from .figures import save_png
from .report import fmt, read_results

__all__ = ["protocol_row", "compare_protocols", "TARGET_SPEARMAN", "TARGET_ICC"]

TARGET_SPEARMAN = 0.8  # what a protocol's seeds must reach to rank candidates reliably (issue 23)
TARGET_ICC = 0.6
CIFAR10_TRAIN, CIFAR10_TEST = 50_000, 10_000


def _finished_runs(out: Path, config: StudyConfig) -> tuple[np.ndarray, list[float], list[int]]:
    """(candidates x seeds) final errors of the candidates whose every seed finished, the seconds of each of
    their runs and the torch threads each used (where the run recorded them)."""
    errors, seconds, threads = [], [], []
    for index in trained_indices(config, out):
        runs = [candidate_dir(out, index) / f"seed-{s}" for s in config.train_seeds]
        if not all(run_finished(r) for r in runs):
            continue
        errors.append([final_error(r) for r in runs])
        for r in runs:
            if (r / "final.json").exists():
                final = read_json(r / "final.json", "training result")
                seconds.append(float(final["seconds"]))
                if "threads" in final:
                    threads.append(int(final["threads"]))
    return np.array(errors, float).reshape(-1, len(config.train_seeds)), seconds, threads


def protocol_row(folder: str | Path, resamples: int = 2000) -> dict[str, Any]:
    """One protocol's line: its recipe, how many candidates finished, its noise ceiling, and the minutes per run."""
    from .ranking import noise_ceiling  # scipy: the `study` extra

    out = Path(folder)
    if (out / "config.json").exists():  # a study folder with its candidates (running or finished)
        config = StudyConfig.from_dict(read_json(out / "config.json", "study config"))
        runs, seconds, threads = _finished_runs(out, config)
    elif not (out / "study.json").exists():
        raise BlockSwapError(f"{out} is not a ranking study folder (no config.json or study.json); name folders "
                             "that `blockswap study rank` wrote")
    else:  # a committed report without the candidate folders: errors from results.csv, no timings
        config = StudyConfig.from_dict(read_json(out / "study.json", "study report")["config"])
        table = read_results(out)
        runs = np.array([[r[f"test_error_pct_seed{s}"] for s in config.train_seeds] for r in table], float)
        seconds, threads = [], []
    if len(config.train_seeds) < 2:
        raise BlockSwapError(f"{out} trains one seed per candidate; a protocol's noise needs two or more")
    ceiling = noise_ceiling(runs, resamples, config.seed)
    recorded = sorted(set(threads))
    minutes = float(np.mean(seconds)) / 60 if seconds else math.nan
    return {
        "protocol": out.name, "model": config.model, "budget_params": config.budget, "epochs": config.epochs,
        "train_images": config.train_subset or CIFAR10_TRAIN, "test_images": config.test_subset or CIFAR10_TEST,
        "batch_size": config.batch_size, "candidates_finished": len(runs),
        "candidates": len(trained_indices(config, out)) or config.candidates,
        "seeds": len(config.train_seeds),
        "seed_spearman": ceiling["spearman"], "seed_spearman_low": ceiling["spearman_low"],
        "seed_spearman_high": ceiling["spearman_high"], "icc": ceiling["candidate_share"],
        "icc_low": ceiling["candidate_share_low"], "icc_high": ceiling["candidate_share_high"],
        "seed_sd_pct": ceiling["seed_sd_pct"], "mean_error_pct": float(np.nanmean(runs)) if runs.size else math.nan,
        "run_minutes": minutes, "threads": recorded[0] if len(recorded) == 1 else "",
        "core_minutes": minutes * recorded[0] if len(recorded) == 1 else math.nan,
    }


def _markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| protocol | model @ budget | epochs x train images | test images | finished | seed Spearman [95% CI] "
        "| ICC [95% CI] | seed SD (points) | mean error % | min/run | meets target |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        meets = r["seed_spearman"] >= TARGET_SPEARMAN and r["icc"] >= TARGET_ICC
        lines.append(
            f"| {r['protocol']} | {r['model']} @ {r['budget_params']:,} | {r['epochs']} x {r['train_images']:,} | "
            f"{r['test_images']:,} | {r['candidates_finished']}/{r['candidates']} | {fmt(r['seed_spearman'])} "
            f"[{fmt(r['seed_spearman_low'])}, {fmt(r['seed_spearman_high'])}] | {fmt(r['icc'])} "
            f"[{fmt(r['icc_low'])}, {fmt(r['icc_high'])}] | {fmt(r['seed_sd_pct'])} | {fmt(r['mean_error_pct'])} "
            f"| {fmt(r['run_minutes'], 1)} | {'yes' if meets else 'no'} |")
    lines += ["", f"Target: seed Spearman >= {TARGET_SPEARMAN} and ICC >= {TARGET_ICC}. Intervals: 95% bootstrap over "
              "candidates. min/run: wall minutes of one training run (mean)."]
    return "\n".join(lines) + "\n"


def _plot(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 1.6 + 0.55 * len(rows)), sharey=True,
                             gridspec_kw={"width_ratios": [1, 1, 0.6]})
    panels = (("seed_spearman", "seed-to-seed Spearman", TARGET_SPEARMAN), ("icc", "one-way ICC", TARGET_ICC))
    labels = [f"{r['protocol']}\n{r['candidates_finished']} cand., {fmt(r['run_minutes'], 1)} min/run" for r in rows]
    y = np.arange(len(rows))[::-1]  # the first protocol on top
    for ax, (key, label, target) in zip(axes[:2], panels):
        for i, r in enumerate(rows):
            low, high = r[f"{key}_low"], r[f"{key}_high"]
            bar = [[r[key] - low], [high - r[key]]] if math.isfinite(low) and math.isfinite(high) else None
            ax.errorbar([r[key]], [y[i]], xerr=bar, fmt="o", capsize=4, color=f"C{i}")
        ax.axvline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target}")
        ax.axvline(0, color="black", linewidth=0.5)
        ax.set_xlim(-1.05, 1.05)
        ax.set_ylim(-0.6, len(rows) - 0.4)
        ax.set_xlabel(f"{label} (95% interval)")
        ax.legend(fontsize=8, loc="lower left")
    axes[0].set_yticks(y, labels, fontsize=8)
    sd = [r["seed_sd_pct"] for r in rows]
    axes[2].barh(y, sd, color=[f"C{i}" for i in range(len(rows))], height=0.5)
    axes[2].set_xlabel("seed SD of one run's error (points)")
    axes[2].set_xlim(0, max([v for v in sd if math.isfinite(v)], default=1.0) * 1.15)
    save_png(fig, path)


def compare_protocols(folders: list[str | Path], out_dir: str | Path, resamples: int = 2000) -> list[dict[str, Any]]:
    """protocols.csv, protocols.md and protocols.png in `out_dir` for the study folders given; returns the rows."""
    if not folders:
        raise BlockSwapError("name at least one study folder")
    rows = [protocol_row(f, resamples) for f in folders]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out / "protocols.csv", text.getvalue())
    write_text_atomic(out / "protocols.md", _markdown(rows))
    _plot(out / "protocols.png", rows)
    return rows
