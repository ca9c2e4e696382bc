"""A finished study's results: results.csv, study.json, report.md and proxies.png (`write_report`), and
the section 4.3 table of the best-by-proxy of n samples (`study_samples`).
"""

from __future__ import annotations

import csv
import math
import numbers
import shlex
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..util.counts import format_count
from ..util.errors import BlockSwapError
from ..util.options import comma_separated, command_args
from ..util.rundir import read_json, write_json_atomic, write_text_atomic
from .config import (
    StudyConfig,
    candidate_dir,
    candidate_done,
    final_error,
    groups_path,
    require_extra,
    trained_indices,
)
from .figures import save_png

__all__ = ["write_report", "read_results", "study_samples", "parse_sizes", "json_safe", "fmt", "plural", "made_by"]


def _results(out: Path, config: StudyConfig) -> list[dict[str, Any]]:
    """One row per candidate from its folder: genotype, counts, proxies, errors per seed and their mean."""
    rows = []
    columns = config.columns()
    genotypes = config.genotypes()
    for i in trained_indices(config, out):
        g = genotypes[i]
        folder = candidate_dir(out, i)
        if not candidate_done(config, out, i):
            raise BlockSwapError(f"candidate {i} is not finished ({folder}); rerun the study to complete it")
        record = read_json(folder / "scores.json", "candidate's scores")
        if not isinstance(record, dict) or record.get("index") != i or record.get("blocks") != list(g.blocks):
            raise BlockSwapError(f"{folder / 'scores.json'} is not candidate {i}'s ({' '.join(g.blocks)}): it was "
                                 "edited or copied; delete it to score the candidate again")
        scores = record["scores"]
        row: dict[str, Any] = {"index": i, "genotype": " ".join(g.blocks), "params": g.params(), "macs": g.macs()}
        for name in columns:
            if name not in scores:
                raise BlockSwapError(f"{folder / 'scores.json'} has no {name!r}; delete it to score again")
            value = scores[name]["score"]
            row[name] = math.nan if value is None else float(value)
        errors = [final_error(folder / f"seed-{s}", g) for s in config.train_seeds]
        for s, e in zip(config.train_seeds, errors):
            row[f"test_error_pct_seed{s}"] = e
        row["test_error_pct"] = float(np.mean(errors))
        rows.append(row)
    return rows


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    lines = [",".join(rows[0])]
    lines += [",".join(repr(v) if isinstance(v, float) else str(v) for v in row.values()) for row in rows]
    write_text_atomic(path, "\n".join(lines) + "\n")


def read_results(out: str | Path) -> list[dict[str, Any]]:
    """The rows of a study's results.csv (numbers as floats, genotype as text)."""
    out = Path(out)
    path = out / "results.csv"
    if not out.is_dir():
        raise BlockSwapError(f"--study {out} is not a folder; name the --out folder of `blockswap study rank`")
    if not path.is_file():
        raise BlockSwapError(f"{path} not found: {out} is not a finished `blockswap study rank` folder")
    try:
        with path.open(newline="") as f:
            return [{k: v if k == "genotype" else float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    except (ValueError, TypeError, UnicodeDecodeError):
        raise BlockSwapError(f"{path} is not a ranking study's results table (a cell that should be a number is "
                             "not); name the --out folder of `blockswap study rank`") from None


def write_report(out_dir: str | Path, resamples: int = 2000) -> dict[str, Any]:
    """results.csv, study.json, report.md and proxies.png of a finished study folder."""
    from .ranking import noise_ceiling, rank_stats  # scipy: the `study` extra

    out = Path(out_dir)
    config = StudyConfig.from_dict(read_json(out / "config.json", "study config"))
    rows = _results(out, config)
    _write_csv(out / "results.csv", rows)
    error = np.array([r["test_error_pct"] for r in rows])
    if np.isfinite(error).sum() < 3:
        raise BlockSwapError(f"only {np.isfinite(error).sum()} of {len(rows)} candidates trained without diverging; "
                             "a ranking needs 3 or more (see failed.json in the candidate folders)")
    per_proxy = {name: rank_stats(np.array([r[name] for r in rows]), error, resamples, config.seed)
                 for name in config.columns()}
    ceiling = None
    if len(config.train_seeds) >= 2:
        runs = np.array([[row[f"test_error_pct_seed{s}"] for s in config.train_seeds] for row in rows])
        ceiling = {"seeds": config.train_seeds[:2], **noise_ceiling(runs, resamples, config.seed)}
    seconds = [read_json(candidate_dir(out, r["index"]) / "scores.json", "candidate's scores")["seconds"] for r in rows]
    cost = {name: float(np.mean([s.get(name, 0.0) for s in seconds])) for name in {k for s in seconds for k in s}}
    trained = error[np.isfinite(error)]
    command = shlex.join(["blockswap", "study", "rank", *command_args(config), "--out", str(out)])
    report = {"config": asdict(config), "command": command, "candidates": len(rows),
              "diverged": int(len(error) - len(trained)),
              "proxies": per_proxy, "noise_ceiling": ceiling, "proxy_seconds_per_candidate": cost,
              "error_pct": {"best": float(trained.min()), "median": float(np.median(trained)),
                            "mean": float(trained.mean()), "worst": float(trained.max())}}
    if config.contrast is not None:
        report["contrast"] = _contrast(out, config, rows, resamples)
    write_json_atomic(out / "study.json", json_safe(report))
    write_text_atomic(out / "report.md", _markdown(report))
    _plot_proxies(out / "proxies.png", rows, config, per_proxy)
    return report


def _contrast(out: Path, config: StudyConfig, rows: list[dict[str, Any]], resamples: int) -> dict[str, Any]:
    """A contrast study's groups, their mean errors and differences (`contrast.contrast_stats`), and contrast.png."""
    from .contrast import contrast_stats, plot_contrast

    groups = {name: [int(i) for i in members] for name, members in read_json(groups_path(out),
                                                                               "contrast groups").items()}
    errors = {int(r["index"]): r["test_error_pct"] for r in rows}
    stats = contrast_stats(errors, groups, max(resamples, 10_000), config.seed)
    plot_contrast(out / "contrast.png", errors, groups, stats,
                  f"{config.model} at {format_count(config.budget)}: {config.contrast} per group of "
                  f"{config.candidates} scored, {config.epochs} epochs, "
                  f"seeds {', '.join(map(str, config.train_seeds))}")
    return {"members": groups, **stats}


def _contrast_markdown(contrast: dict[str, Any], pool: int) -> list[str]:
    lines = ["## Does the pick matter?", "",
             f"Of {pool} candidates scored as a search scores them, these groups were trained (a candidate in two "
             "groups is trained once). Error: the final test error, mean over the training seeds.", "",
             "| group | students | mean error % [95% CI] |", "|---|---|---|"]
    for name, g in contrast["groups"].items():
        lines.append(f"| {name} | {g['n']} | {fmt(g['mean_error_pct'])} [{fmt(g['low'])}, {fmt(g['high'])}] |")
    lines += ["", "| comparison | difference of mean error, points [95% CI] | permutation p |", "|---|---|---|"]
    for d in contrast["differences"]:
        lines.append(f"| {d['group']} - {d['versus']} | {fmt(d['difference_pct'])} [{fmt(d['low'])}, "
                     f"{fmt(d['high'])}] | {fmt(d['p_value'], 3)} |")
    lines += ["", "Negative: the top group trains to lower error. Intervals resample the students within each group.",
              "", "![trained students by group](contrast.png)", "",
              "The proxy table below covers the trained students only: a selected sample (best, random and worst "
              "by Fisher), not a random pool, so its correlations run stronger than a random pool's would.", ""]
    return lines


def json_safe(value: Any) -> Any:
    """`value` with NaN and infinities as null, so study.json is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def fmt(x: Any, digits: int = 2, sign: bool = False) -> str:
    """A number for a report, "n/a" for None, NaN, infinity or anything not a number; `sign` shows + too."""
    if not isinstance(x, numbers.Real) or not math.isfinite(x):
        return "n/a"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def plural(n: int, word: str) -> str:
    """'1 epoch', '2 epochs'."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def made_by(command: str) -> list[str]:
    """The lines under a report's title that give the command rebuilding it."""
    return ["Made by:", "", "```bash", command, "```", ""]


def _markdown(report: dict[str, Any]) -> str:
    c, proxies = report["config"], report["proxies"]
    order = sorted(proxies, key=lambda n: (math.inf if not math.isfinite(proxies[n]["spearman"])
                                           else proxies[n]["spearman"]))
    lines = [
        f"# {'Contrast' if c.get('contrast') else 'Ranking'} study: {c['model']} at {format_count(c['budget'])} "
        f"parameters, {report['candidates']} candidates trained",
        "",
        *made_by(report["command"]),
        f"Each candidate trained {c['epochs']} epochs ({c['schedule']}, lr {c['lr']}, batch {c['batch_size']}, "
        f"train subset {c['train_subset'] or 'all'}, test subset {c['test_subset'] or 'all'}, "
        f"{'attention transfer from ' + c['teacher'] if c['teacher'] else 'cross-entropy only'}), "
        f"training seeds {', '.join(map(str, c['train_seeds']))}; the error is the final test error "
        "(mean over seeds). Spearman and Kendall are with error: negative means a higher proxy value "
        "goes with a lower error. Intervals: 95% bootstrap (percentile).",
        "",
        *(_contrast_markdown(report["contrast"], c["candidates"]) if report.get("contrast") else []),
        "| proxy | Spearman [95% CI] | Kendall [95% CI] | top-1 err % | top-5 err % | top-1 in best decile | s/cand |",
        "|---|---|---|---|---|---|---|",
    ]
    cost = report["proxy_seconds_per_candidate"]
    for n in order:
        s = proxies[n]
        lines.append(f"| {n} | {fmt(s['spearman'])} [{fmt(s['spearman_low'])}, {fmt(s['spearman_high'])}] | "
                     f"{fmt(s['kendall'])} [{fmt(s['kendall_low'])}, {fmt(s['kendall_high'])}] | "
                     f"{fmt(s['top1_error_pct'])} | {fmt(s['top5_error_pct'])} | "
                     f"{fmt(100 * s['top1_in_best_decile'], 0)}% | {fmt(cost.get(n, math.nan))} |")
    e = report["error_pct"]
    lines += ["", f"Pool: best {fmt(e['best'])}%, median {fmt(e['median'])}%, mean (a random pick) "
              f"{fmt(e['mean'])}%, worst {fmt(e['worst'])}%."]
    ceiling = report["noise_ceiling"]
    if ceiling:
        lines += ["", f"Noise ceiling: the errors of training seeds {ceiling['seeds'][0]} and {ceiling['seeds'][1]} "
                  f"rank the pool with Spearman {fmt(ceiling['spearman'])} [{fmt(ceiling['spearman_low'])}, "
                  f"{fmt(ceiling['spearman_high'])}]; the candidate accounts for "
                  f"{fmt(100 * max(0.0, ceiling['candidate_share']), 0)}% of the variance of one run's error "
                  f"(one-way ICC {fmt(ceiling['candidate_share'])} [{fmt(ceiling.get('candidate_share_low'))}, "
                  f"{fmt(ceiling.get('candidate_share_high'))}]), the training seed for the rest (SD "
                  f"{fmt(ceiling['seed_sd_pct'])} points)."]
        if math.isfinite(ceiling["mean_reliability"]):
            lines[-1] += (f" The target, the mean of the seeds' errors, is then about "
                          f"{fmt(ceiling['mean_reliability'])} reliable (Spearman-Brown), so even a perfect proxy "
                          f"would show a Spearman of only about -{fmt(ceiling['max_abs_spearman'])} with it.")
        else:
            lines[-1] += (" The seeds do not rank the candidates alike, so the target holds no ranking for a proxy "
                          "to find: train longer before comparing proxies.")
    if report["diverged"]:
        lines += ["", f"{report['diverged']} candidate(s) diverged in training (failed.json in their folder): "
                  "left out of every statistic."]
    if "training steps" in cost:
        lines += ["", f"The SGD steps behind the NAME@K proxies took {fmt(cost['training steps'])} s per candidate "
                  "(the s/cand column counts only the measurement)."]
    lines += ["", "![each proxy against error](proxies.png)", ""]
    return "\n".join(lines)




def _plot_proxies(path: Path, rows: list[dict[str, Any]], config: StudyConfig, stats: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    names = config.columns()
    cols = min(4, len(names))
    nrows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.4 * cols, 2.9 * nrows), squeeze=False)
    error = np.array([r["test_error_pct"] for r in rows])
    for ax, name in zip(axes.flat, names):
        x = np.array([r[name] for r in rows])
        positive = bool(np.all(x[np.isfinite(x)] > 0)) and np.nanmax(x) / max(np.nanmin(x), 1e-300) > 100
        ax.scatter(x, error, s=12, alpha=0.8)
        if positive:
            ax.set_xscale("log")
        else:
            ax.xaxis.set_major_locator(MaxNLocator(4))
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4), useOffset=False)
        ax.set_title(f"{name}  rho={fmt(stats[name]['spearman'])}", fontsize=9)
        ax.set_xlabel(name, fontsize=8)
        ax.set_ylabel("test error %", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(f"{config.model} at {format_count(config.budget)}: proxy against final test error "
                 f"({len(rows)} candidates)", fontsize=10)
    save_png(fig, path, top=1 - 0.35 / fig.get_figheight())


def study_samples(out_dir: str | Path, sizes: list[int] | None = None, proxies: list[str] | None = None,
                  resamples: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """Expected error of the best-by-proxy of n samples for several n, from a finished study; writes samples.csv/png.

    Rows: one per (proxy, n), plus the random pick (the pool's mean) and the
    oracle (the best error among n) as references.
    """
    require_extra()
    from .ranking import best_of_curve

    out = Path(out_dir)
    every = read_results(out)
    config = StudyConfig.from_dict(read_json(out / "config.json", "study config"))
    indices = [int(r["index"]) for r in every]
    if sorted(indices) != trained_indices(config, out):
        twice = sorted({i for i in indices if indices.count(i) > 1})
        raise BlockSwapError(f"{out / 'results.csv'} does not hold each trained candidate once (" + (
            f"candidate {twice[0]} appears twice" if twice else "a candidate is missing or foreign") +
            "): it was edited; rerun `blockswap study rank` with the same options to rewrite it")
    rows = [r for r in every if math.isfinite(r["test_error_pct"])]  # diverged candidates: no error
    pool = len(rows)
    if pool < 2:
        raise BlockSwapError(f"{out / 'results.csv'} has {pool} candidate(s) with a test error; need 2 or more")
    error = np.array([r["test_error_pct"] for r in rows])
    names = proxies or config.columns()
    for name in names:
        if name not in config.columns() or name not in rows[0]:
            raise BlockSwapError(f"{out / 'results.csv'} has no proxy {name!r} (the errors and counts are not "
                                 f"proxies); its proxies: {', '.join(config.columns())}")
    if sizes is None:
        sizes = sorted({n for n in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000) if n <= pool} | {pool})
    bad = [n for n in sizes if not 1 <= n <= pool]
    if bad:
        raise BlockSwapError(f"sample sizes must be in [1, {pool}] (the pool), got {bad}")
    table: list[dict[str, Any]] = []
    for name in names:
        curve = best_of_curve(np.array([r[name] for r in rows]), error, sizes, resamples, seed)
        table += [{"proxy": name, **row, "random_error_pct": float(error.mean())} for row in curve]
    _write_csv(out / "samples.csv", table)
    _plot_samples(out / "samples.png", table, names, sizes, float(error.mean()), pool)
    return table


def _plot_samples(path: Path, table: list[dict[str, Any]], names: list[str], sizes: list[int], random: float,
                  pool: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 1 + (len(names) + 1) // 20  # a legend column holds about 20 lines at this size: a long one wraps
    fig, ax = plt.subplots(figsize=(7 + 2 * columns, 4.8))
    colors, styles = plt.get_cmap("tab10").colors, ("-", "--", "-.", ":")
    for i, name in enumerate(names):
        rows = [r for r in table if r["proxy"] == name]
        ax.plot(sizes, [r["expected_error_pct"] for r in rows], marker="o", ms=3, lw=1.2, label=name,
                color=colors[i % len(colors)], ls=styles[i // len(colors) % len(styles)])
    oracle = [r["oracle_error_pct"] for r in table if r["proxy"] == names[0]]
    ax.plot(sizes, oracle, "k", lw=2, label="oracle (best of n)")
    ax.axhline(random, color="grey", lw=2, ls=":", label="random pick")
    ax.set_xscale("log")
    ax.set_xlabel("candidates sampled (n)")
    ax.set_ylabel("expected test error of the pick (%)")
    ax.set_title(f"Best-by-proxy of n samples from a pool of {pool}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncols=columns)
    save_png(fig, path)


def parse_sizes(text: str) -> list[int]:
    """'1,5,10' -> [1, 5, 10]."""
    parts = comma_separated(text)
    if not parts or not all(p.isdigit() for p in parts):
        raise BlockSwapError(f"sample sizes must be whole numbers separated by commas, got {text!r}")
    return [int(p) for p in parts]
