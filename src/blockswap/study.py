"""The ranking study (paper sections 4.2 and 4.3): score a pool of students with every proxy, train each, compare.

`run_study` samples `candidates` genotypes of a budget (seeded, as a search
does), scores each with every proxy of `proxies` on the search's probe batch
and initial weights (candidate i's weights are search candidate i's), trains
each with the given recipe for every training seed, and writes:

- `candidates/NNNN/scores.json` and `candidates/NNNN/seed-S/` (a training run
  folder): one folder per candidate, so an interrupted study resumes where it
  stopped and a finished one trains nothing when rerun;
- `results.csv`: one row per candidate (genotype, counts, every proxy, the
  test error of each training seed and their mean);
- `study.json`: the settings, per proxy its statistics (`blockswap.ranking`),
  and the noise ceiling (the Spearman of the errors of two training seeds);
- `report.md`: the table, best proxy first, and `proxies.png`: each proxy
  against error, one panel per proxy, its Spearman in the title.

Proxy names: a registered scorer at initialisation (`fisher`), the same after
k SGD steps of the recipe (`fisher@10`), and, with `inits` > 1, the average
over that many initialisations (`fisher.mean4`; `blockswap.proxies.average_scores`).
`study_samples` then answers section 4.3 from the finished pool: the expected
error of the best-by-proxy of n samples, against a random pick and the oracle.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import shlex
import signal
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from torch import Tensor
from tqdm.auto import tqdm

from .backbones import get_backbone
from .blocks import BlockType, register_block_type, registered_block_types
from .counts import format_count, parse_budget
from .data import probe_images
from .distributed import on_rank0, rank0_first
from .errors import BlockSwapError
from .genotype import Genotype
from .options import command_args, comma_separated, from_record, option, recorded_form
from .outdir import atomic_file, check_recorded, read_json, record, write_json_atomic, write_text_atomic
from .proxies import RecipeSteps, average_scores
from .sampling import DEFAULT_TOLERANCE, sample_genotypes
from .scoring import Score, make_scorer, register_scorer, scorer_factory, scorer_names
from .training import ONE_PROCESS, SCHEDULES, DivergedError, TrainConfig, train
from .workers import build_candidate, start_worker, usable_cores, user_block_types

__all__ = ["StudyConfig", "run_study", "write_report", "read_results", "study_samples", "parse_proxy", "parse_sizes",
           "DEFAULT_PROXIES"]

DEFAULT_PROXIES = ("fisher", "fisher_convs", "grad_norm", "snip", "grasp", "synflow", "naswot", "jacob_cov", "l2",
                   "params", "macs", "fisher@1", "fisher@10", "grad_norm@1", "grad_norm@10", "l2@1", "l2@10",
                   "accuracy@1", "accuracy@10")
_AT_INIT_ONLY = ("params", "macs")  # proxies that do not depend on the weights: never averaged


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in comma_separated(text)]
    except ValueError:
        raise BlockSwapError(f"training seeds must be whole numbers separated by commas, got {text!r}") from None


def parse_proxy(name: str) -> tuple[str, int]:
    """'fisher@10' -> ('fisher', 10); 'fisher' -> ('fisher', 0): a registered scorer and its training steps."""
    base, _, steps = name.partition("@")
    if base not in scorer_names() or base == "trained":
        raise BlockSwapError(f"unknown proxy {name!r}: name a registered scorer ({', '.join(scorer_names())}), "
                             "optionally with @K for the value after K training steps")
    if not steps:
        return base, 0
    if not steps.isdigit() or int(steps) < 1:
        raise BlockSwapError(f"proxy {name!r}: the steps after '@' must be a positive whole number")
    return base, int(steps)


@dataclass
class StudyConfig:
    """Everything that determines a ranking study's pool, scores and training runs; saved as config.json."""

    budget: int = field(metadata=option("parameter budget of the pool, e.g. 200k", parse=parse_budget))
    data_dir: str = field(metadata=option(
        "CIFAR-10 folder (downloaded there if missing) or an image folder: probe batch and training"))
    model: str = field(default="wrn-16-2", metadata=option("the teacher whose blocks are swapped"))
    candidates: int = field(default=30, metadata=option("students sampled (seeded) and trained"))
    proxies: list[str] = field(default_factory=lambda: list(DEFAULT_PROXIES), metadata=option(
        "comma-separated proxies: registered scorers, NAME@K for the value after K SGD steps of the recipe "
        "(fp32, lr --lr, batch --batch-size, seeded batches of the whole training set)",
        parse=comma_separated, metavar="NAMES"))
    inits: int = field(default=1, metadata=option(
        "initialisations averaged for the at-initialisation proxies, reported beside the single ones as NAME.meanK"))
    average: list[str] | None = field(default=None, metadata=option(
        "comma-separated at-initialisation proxies averaged over --inits (default: all that depend on the weights)",
        parse=comma_separated, metavar="NAMES"))
    seed: int = field(default=0, metadata=option("fixes the pool, the initial weights and the probe batch"))
    tolerance: float = field(default=DEFAULT_TOLERANCE, metadata=option("budget window, as for search"))
    batch_size: int = field(default=128, metadata=option("probe batch and training batch (equal, as in the paper)"))
    epochs: int = field(default=200, metadata=option("training epochs of every candidate"))
    lr: float = field(default=0.1, metadata=option("initial learning rate"))
    schedule: str = field(default="cosine", metadata=option("learning-rate schedule", choices=SCHEDULES))
    train_subset: int | None = field(default=None, metadata=option("train on the first N images only"))
    test_subset: int | None = field(default=None, metadata=option("test on the first N images only"))
    train_seeds: list[int] = field(default_factory=lambda: [0], metadata=option(
        "comma-separated training seeds; each candidate is trained once per seed, the target is the mean error, "
        "and two seeds give the noise ceiling", parse=_seeds, metavar="SEEDS"))
    teacher: str | None = field(default=None, metadata=option(
        "teacher weight file: train every candidate with attention transfer from it (default: cross-entropy only)"))

    def __post_init__(self) -> None:
        """Refuse settings a study cannot run with, naming the first bad one."""
        self.budget = parse_budget(self.budget)
        for name in ("candidates", "inits", "batch_size", "epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BlockSwapError(f"{name} must be a positive whole number, got {value!r}")
        if self.candidates < 3:
            raise BlockSwapError(f"a ranking study needs at least 3 candidates, got {self.candidates}")
        self.proxies = list(self.proxies)
        if not self.proxies:
            raise BlockSwapError("name at least one proxy")
        if len(set(self.proxies)) != len(self.proxies):
            raise BlockSwapError(f"a proxy is named twice in {self.proxies}")
        for name in self.proxies:
            parse_proxy(name)
        if self.average is not None:
            if self.inits == 1:
                raise BlockSwapError("--average names proxies averaged over --inits initialisations: give --inits 2 "
                                     "or more")
            self.average = list(self.average)
            wrong = [n for n in self.average if n not in self.proxies or parse_proxy(n)[1] or n in _AT_INIT_ONLY]
            if wrong:
                raise BlockSwapError(f"--average takes at-initialisation proxies of --proxies that depend on the "
                                     f"weights; not {', '.join(wrong)}")
        self.train_seeds = list(self.train_seeds)
        if not self.train_seeds or len(set(self.train_seeds)) != len(self.train_seeds):
            raise BlockSwapError(f"training seeds must be distinct and at least one, got {self.train_seeds}")
        get_backbone(self.model)
        self.train_config(Genotype.uniform(get_backbone(self.model)), self.train_seeds[0]).validate()

    def train_config(self, genotype: Genotype, seed: int) -> TrainConfig:
        """The training run of one candidate for one seed."""
        return TrainConfig(genotype=genotype.to_dict(), data_dir=self.data_dir, epochs=self.epochs,
                           batch_size=self.batch_size, lr=self.lr, schedule=self.schedule, teacher=self.teacher,
                           train_subset=self.train_subset, test_subset=self.test_subset, seed=seed)

    def columns(self) -> list[str]:
        """The proxy columns of results.csv: every proxy, then the averaged at-initialisation ones."""
        return self.proxies + [f"{name}.mean{self.inits}" for name in self.averaged()]

    def averaged(self) -> list[str]:
        """The proxies averaged over `inits` initialisations (the at-initialisation ones that depend on weights)."""
        if self.inits == 1:
            return []
        if self.average is not None:
            return list(self.average)
        return [n for n in self.proxies if parse_proxy(n)[1] == 0 and n not in _AT_INIT_ONLY]

    def genotypes(self) -> list[Genotype]:
        return sample_genotypes(get_backbone(self.model), self.budget, self.candidates, self.tolerance, self.seed)

    @classmethod
    def from_dict(cls, data: Any) -> StudyConfig:
        return from_record(cls, data, "study config")


def require_extra() -> None:
    """Refuse to start a study without scipy and matplotlib (the `study` extra), not hours later at the report."""
    import importlib.util

    missing = [m for m in ("scipy", "matplotlib") if importlib.util.find_spec(m) is None]
    if missing:
        raise BlockSwapError(f"the ranking study needs {' and '.join(missing)}: pip install 'blockswap[study]'")


def _candidate_dir(out: Path, index: int) -> Path:
    return out / "candidates" / f"{index:04d}"


def _score_all(config: StudyConfig, genotype: Genotype, index: int,
               batch: tuple[Tensor, Tensor]) -> tuple[dict[str, Score], dict[str, float]]:
    """Every proxy of the config on candidate `index`: at initialisation, averaged, and after training steps."""
    device = batch[0].device
    scores: dict[str, Score] = {}
    seconds: dict[str, float] = {}

    def measure(name: str, base: str, model: torch.nn.Module) -> Score:
        state = {k: v.clone() for k, v in model.state_dict().items()}  # BN statistics move in a train-mode pass
        start = time.perf_counter()
        score = make_scorer(base)(model, batch)  # type: ignore[arg-type]
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
        model.load_state_dict(state)
        return score

    parsed = {name: parse_proxy(name) for name in config.proxies}
    model = build_candidate(genotype, config.seed, index).to(device)
    for name, (base, steps) in parsed.items():
        if steps == 0:
            scores[name] = measure(name, base, model)
    for name in config.averaged():
        base = parsed[name][0]
        seconds[f"{name}.mean{config.inits}"] = seconds[name]
        draws = [scores[name]] + [measure(f"{name}.mean{config.inits}", base,
                                          build_candidate(genotype, config.seed, index, draw).to(device))
                                  for draw in range(1, config.inits)]
        scores[f"{name}.mean{config.inits}"] = average_scores(draws, getattr(make_scorer(base), "log_average", True))
    trained = sorted({steps for _, steps in parsed.values() if steps})
    if trained:
        recipe = RecipeSteps(config.data_dir, config.seed, config.batch_size, config.lr)
        start = time.perf_counter()
        for k, net in recipe.run(model, trained, device):
            for name, (base, steps) in parsed.items():
                if steps == k:
                    scores[name] = measure(name, base, net)
        seconds["training steps"] = time.perf_counter() - start - sum(
            v for n, v in seconds.items() if "@" in n)
    return scores, seconds


@dataclass
class _Job:
    config: StudyConfig
    index: int
    genotype: Genotype
    out: Path
    device: str


def _run_candidate(job: _Job, batch: tuple[Tensor, Tensor]) -> int:
    """Score (unless scores.json exists) and train (each seed without final.json) one candidate; returns its index."""
    config, folder = job.config, _candidate_dir(job.out, job.index)
    folder.mkdir(parents=True, exist_ok=True)
    scores_path = folder / "scores.json"
    device = torch.device(job.device)
    if not scores_path.exists():
        scores, seconds = _score_all(config, job.genotype, job.index, (batch[0].to(device), batch[1].to(device)))
        write_json_atomic(scores_path, _json_safe({  # a NaN or infinite score is kept as null, read back as NaN
            "index": job.index, "blocks": list(job.genotype.blocks),
            "scores": {n: {"score": s.total, "per_block": list(s.per_block)} for n, s in scores.items()},
            "seconds": seconds}))
    for seed in config.train_seeds:
        run = folder / f"seed-{seed}"
        if not _trained(run):
            try:
                train(config.train_config(job.genotype, seed), run, resume=True, device=device, progress=False,
                      group=ONE_PROCESS)  # under torchrun, each rank trains its own candidates
            except DivergedError as e:  # a diverged candidate is a result (no error to rank), not the end of the study
                run.mkdir(parents=True, exist_ok=True)
                write_json_atomic(run / "failed.json", {"reason": str(e)})
    return job.index


_batch: tuple[Tensor, Tensor] | None = None


def _stop_job(signum: int, frame: object) -> None:
    """SIGUSR1 in a study worker: the parent is stopping; end the running job (its files resume exactly)."""
    raise KeyboardInterrupt


def _init_worker(batch: tuple[Tensor, Tensor], threads: int, parent: int, scorers: dict[str, Any],
                 block_types: list[BlockType]) -> None:
    """Runs once in each study process: the parent's user scorers and block types (unpickling them imports the
    plugin that defines them), the probe batch, the thread count."""
    global _batch
    start_worker(parent, threads)
    signal.signal(signal.SIGUSR1, _stop_job)
    for name, factory in scorers.items():
        if name not in scorer_names():
            register_scorer(name)(factory)
    for block in block_types:
        if block.name not in registered_block_types():
            register_block_type(block)
    _batch = batch


def _run_in_worker(job: _Job) -> int:
    if _batch is None:
        raise RuntimeError("_run_in_worker runs only in a study worker process")
    return _run_candidate(job, _batch)


def _done(config: StudyConfig, out: Path, index: int) -> bool:
    folder = _candidate_dir(out, index)
    return (folder / "scores.json").exists() and all(_trained(folder / f"seed-{s}") for s in config.train_seeds)


def _trained(run: Path) -> bool:
    """Whether a candidate's training run is over: finished (final.json) or diverged (failed.json)."""
    return (run / "final.json").exists() or (run / "failed.json").exists()


def _final_error(run: Path) -> float:
    """A training run's final test error; NaN for a run that diverged (its failed.json says why)."""
    if (run / "failed.json").exists():
        return math.nan
    return float(read_json(run / "final.json", "training result")["test_error_pct"])


def _run_jobs(jobs: list[_Job], batch: tuple[Tensor, Tensor], workers: int, bar: tqdm) -> None:
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            _run_candidate(job, batch)
            bar.update(1)
        return
    threads = max(1, usable_cores() // workers)
    config = jobs[0].config
    scorers = {base: scorer_factory(base) for base, _ in map(parse_proxy, config.proxies)
               if not scorer_factory(base).__module__.startswith("blockswap.")}  # a plugin's: the workers import it
    user_types = user_block_types({name for job in jobs for name in job.genotype.blocks})
    pool = ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=mp.get_context("spawn"),
                               initializer=_init_worker, initargs=(batch, threads, os.getpid(), scorers, user_types))
    futures = [pool.submit(_run_in_worker, job) for job in jobs]
    try:
        for future in as_completed(futures):
            future.result()
            bar.update(1)
    except BaseException:
        # Ctrl-C, SIGTERM or a failed candidate: stop now instead of waiting hours for the candidates in training
        # (their folders resume exactly: every write is atomic). The workers ignore SIGINT and SIGTERM; SIGUSR1
        # interrupts the job each one is running, after which it ends as the pool shuts down.
        for process in list(getattr(pool, "_processes", {}).values()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGUSR1)
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def run_study(config: StudyConfig, out_dir: str | Path, workers: int = 1, device: str | torch.device = "cpu",
              progress: bool = True, group: torch_dist.ProcessGroup | None = None) -> dict[str, Any]:
    """Score and train the study's pool into `out_dir` (skipping what is done), then write its report.

    `workers` candidates run at once in spawned processes (on one GPU too), each
    with an equal share of the CPU threads. With a `torch.distributed` `group`,
    rank r takes the candidates with index % size == r and rank 0 writes the
    report once every rank is done. Returns what study.json holds.
    """
    require_extra()
    out = Path(out_dir)
    rank, world = (torch_dist.get_rank(group), torch_dist.get_world_size(group)) if group is not None else (0, 1)
    # Training takes hours and ranks finish at different times: they wait for each other on a gloo group whose
    # timeout allows it, made now, while every rank is at the same point.
    waiting = torch_dist.new_group(backend="gloo", timeout=timedelta(days=30)) if group is not None else None
    # The pool and the probe batch first: a study that cannot start (a budget no genotype reaches, no data) leaves
    # no config.json behind to refuse the corrected command.
    genotypes = config.genotypes()
    size = genotypes[0].backbone.input_size
    batch = rank0_first(group, lambda: probe_images(config.data_dir, size)).probe_batch(config.batch_size, config.seed)
    on_rank0(group, lambda: _prepare_out_dir(out, config))
    mine = [i for i in range(len(genotypes)) if i % world == rank]
    todo = [_Job(config, i, genotypes[i], out, str(device)) for i in mine if not _done(config, out, i)]
    with tqdm(total=len(mine), initial=len(mine) - len(todo), desc="study candidates", unit="cand",
              disable=not progress or rank != 0, dynamic_ncols=True) as bar:
        _run_jobs(todo, batch, workers, bar)
    if waiting is not None:
        torch_dist.barrier(group=waiting)
    if rank != 0:
        return {}
    return write_report(out)


def _prepare_out_dir(out: Path, config: StudyConfig) -> None:
    """Record config.json in a new folder, or check that the folder's study is this one."""
    if not check_recorded(out, "config.json", asdict(config), partial(recorded_form, StudyConfig), "study",
                          "use a fresh --out directory"):
        record(out, "config.json", asdict(config))


def _results(out: Path, config: StudyConfig) -> list[dict[str, Any]]:
    """One row per candidate from its folder: genotype, counts, proxies, errors per seed and their mean."""
    rows = []
    columns = config.columns()
    for i, g in enumerate(config.genotypes()):
        folder = _candidate_dir(out, i)
        if not _done(config, out, i):
            raise BlockSwapError(f"candidate {i} is not finished ({folder}); rerun the study to complete it")
        scores = read_json(folder / "scores.json", "candidate's scores")["scores"]
        row: dict[str, Any] = {"index": i, "genotype": " ".join(g.blocks), "params": g.params(), "macs": g.macs()}
        for name in columns:
            if name not in scores:
                raise BlockSwapError(f"{folder / 'scores.json'} has no {name!r}; delete it to score again")
            value = scores[name]["score"]
            row[name] = math.nan if value is None else float(value)
        errors = [_final_error(folder / f"seed-{s}") for s in config.train_seeds]
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
    path = Path(out) / "results.csv"
    if not path.is_file():
        raise BlockSwapError(f"{path} not found: run `blockswap study rank` into {out} first")
    with path.open(newline="") as f:
        return [{k: v if k == "genotype" else float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def write_report(out_dir: str | Path, resamples: int = 2000) -> dict[str, Any]:
    """results.csv, study.json, report.md and proxies.png of a finished study folder."""
    from .ranking import rank_stats  # scipy: the `study` extra

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
        a, b = (np.array([r[f"test_error_pct_seed{s}"] for r in rows]) for s in config.train_seeds[:2])
        stats = rank_stats(-a, b, resamples, config.seed)  # -a: "higher predicts better", so rho is positive
        r, k = -stats["spearman"], len(config.train_seeds)
        reliability = k * r / (1 + (k - 1) * r) if r > 0 else math.nan  # Spearman-Brown: the mean of k seeds' errors
        runs = np.array([[row[f"test_error_pct_seed{s}"] for s in config.train_seeds] for row in rows])
        runs = runs[np.isfinite(runs).all(1)]
        means = runs.mean(1)  # one-way ICC(1): the share of one run's error variance that is the candidate's own
        between, within = k * means.var(ddof=1), ((runs - means[:, None]) ** 2).sum() / (len(runs) * (k - 1))
        ceiling = {"seeds": config.train_seeds[:2], "candidate_share": (between - within) / (between + (k - 1) * within),
                   "seed_sd_pct": math.sqrt(within), "spearman": r,
                   "spearman_low": -stats["spearman_high"], "spearman_high": -stats["spearman_low"],
                   "kendall": -stats["kendall"], "mean_reliability": reliability,
                   "max_abs_spearman": math.sqrt(reliability) if reliability == reliability else math.nan}
    seconds = [read_json(_candidate_dir(out, i) / "scores.json", "candidate's scores")["seconds"] for i in range(len(rows))]
    cost = {name: float(np.mean([s.get(name, 0.0) for s in seconds])) for name in {k for s in seconds for k in s}}
    trained = error[np.isfinite(error)]
    command = shlex.join(["blockswap", "study", "rank", *command_args(config), "--out", str(out)])
    report = {"config": asdict(config), "command": command, "candidates": len(rows), "diverged": int(len(error) - len(trained)),
              "proxies": per_proxy, "noise_ceiling": ceiling, "proxy_seconds_per_candidate": cost,
              "error_pct": {"best": float(trained.min()), "median": float(np.median(trained)),
                            "mean": float(trained.mean()), "worst": float(trained.max())}}
    write_json_atomic(out / "study.json", _json_safe(report))
    write_text_atomic(out / "report.md", _markdown(report))
    _plot_proxies(out / "proxies.png", rows, config, per_proxy)
    return report


def _json_safe(value: Any) -> Any:
    """`value` with NaN and infinities as null, so study.json is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _fmt(x: float, digits: int = 2) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _markdown(report: dict[str, Any]) -> str:
    c, proxies = report["config"], report["proxies"]
    order = sorted(proxies, key=lambda n: (math.inf if not math.isfinite(proxies[n]["spearman"])
                                           else proxies[n]["spearman"]))
    lines = [
        f"# Ranking study: {c['model']} at {format_count(c['budget'])} parameters, {report['candidates']} candidates",
        "",
        "Made by:",
        "",
        "```bash",
        report["command"],
        "```",
        "",
        f"Each candidate trained {c['epochs']} epochs ({c['schedule']}, lr {c['lr']}, batch {c['batch_size']}, "
        f"train subset {c['train_subset'] or 'all'}, test subset {c['test_subset'] or 'all'}, "
        f"{'attention transfer from ' + c['teacher'] if c['teacher'] else 'cross-entropy only'}), "
        f"training seeds {', '.join(map(str, c['train_seeds']))}; the error is the final test error "
        "(mean over seeds). Spearman and Kendall are with error: negative means a higher proxy value "
        "goes with a lower error. Intervals: 95% bootstrap (percentile).",
        "",
        "| proxy | Spearman [95% CI] | Kendall [95% CI] | top-1 err % | top-5 err % | top-1 in best decile | s/cand |",
        "|---|---|---|---|---|---|---|",
    ]
    cost = report["proxy_seconds_per_candidate"]
    for n in order:
        s = proxies[n]
        lines.append(f"| {n} | {_fmt(s['spearman'])} [{_fmt(s['spearman_low'])}, {_fmt(s['spearman_high'])}] | "
                     f"{_fmt(s['kendall'])} [{_fmt(s['kendall_low'])}, {_fmt(s['kendall_high'])}] | "
                     f"{_fmt(s['top1_error_pct'])} | {_fmt(s['top5_error_pct'])} | "
                     f"{_fmt(100 * s['top1_in_best_decile'], 0)}% | {_fmt(cost.get(n, math.nan))} |")
    e = report["error_pct"]
    lines += ["", f"Pool: best {_fmt(e['best'])}%, median {_fmt(e['median'])}%, mean (a random pick) "
              f"{_fmt(e['mean'])}%, worst {_fmt(e['worst'])}%."]
    ceiling = report["noise_ceiling"]
    if ceiling:
        lines += ["", f"Noise ceiling: the errors of training seeds {ceiling['seeds'][0]} and {ceiling['seeds'][1]} "
                  f"rank the pool with Spearman {_fmt(ceiling['spearman'])} [{_fmt(ceiling['spearman_low'])}, "
                  f"{_fmt(ceiling['spearman_high'])}]; the candidate accounts for "
                  f"{_fmt(100 * max(0.0, ceiling['candidate_share']), 0)}% of the variance of one run's error "
                  f"(one-way ICC {_fmt(ceiling['candidate_share'])}), the training seed for the rest (SD "
                  f"{_fmt(ceiling['seed_sd_pct'])} points)."]
        if math.isfinite(ceiling["mean_reliability"]):
            lines[-1] += (f" The target, the mean of the seeds' errors, is then about "
                          f"{_fmt(ceiling['mean_reliability'])} reliable (Spearman-Brown), so even a perfect proxy "
                          f"would show a Spearman of only about -{_fmt(ceiling['max_abs_spearman'])} with it.")
        else:
            lines[-1] += (" The seeds do not rank the candidates alike, so the target holds no ranking for a proxy "
                          "to find: train longer before comparing proxies.")
    if report["diverged"]:
        lines += ["", f"{report['diverged']} candidate(s) diverged in training (failed.json in their folder): "
                  "left out of every statistic."]
    if "training steps" in cost:
        lines += ["", f"The SGD steps behind the NAME@K proxies took {_fmt(cost['training steps'])} s per candidate "
                  "(the s/cand column counts only the measurement)."]
    lines += ["", "![each proxy against error](proxies.png)", ""]
    return "\n".join(lines)


def _save_png(fig: Any, path: Path, top: float = 1.0) -> None:
    """Lay out (below `top`, leaving room for a suptitle), write the figure as PNG atomically, free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout(rect=(0, 0, 1, top))
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


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
        ax.set_title(f"{name}  rho={_fmt(stats[name]['spearman'])}", fontsize=9)
        ax.set_xlabel(name, fontsize=8)
        ax.set_ylabel("test error %", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(f"{config.model} at {format_count(config.budget)}: proxy against final test error "
                 f"({len(rows)} candidates)", fontsize=10)
    _save_png(fig, path, top=1 - 0.35 / fig.get_figheight())


def study_samples(out_dir: str | Path, sizes: list[int] | None = None, proxies: list[str] | None = None,
                  resamples: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """Expected error of the best-by-proxy of n samples for several n, from a finished study; writes samples.csv/png.

    Rows: one per (proxy, n), plus the random pick (the pool's mean) and the
    oracle (the best error among n) as references.
    """
    require_extra()
    from .ranking import best_of_curve

    out = Path(out_dir)
    rows = [r for r in read_results(out) if math.isfinite(r["test_error_pct"])]  # diverged candidates: no error
    pool = len(rows)
    if pool < 2:
        raise BlockSwapError(f"{out / 'results.csv'} has {pool} candidate(s) with a test error; need 2 or more")
    error = np.array([r["test_error_pct"] for r in rows])
    names = proxies or StudyConfig.from_dict(read_json(out / "config.json", "study config")).columns()
    for name in names:
        if name not in rows[0]:
            raise BlockSwapError(f"{out / 'results.csv'} has no proxy {name!r}; it has "
                                 f"{', '.join(k for k in rows[0] if k not in ('index', 'genotype'))}")
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

    fig, ax = plt.subplots(figsize=(9, 4.8))
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
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save_png(fig, path)


def parse_sizes(text: str) -> list[int]:
    """'1,5,10' -> [1, 5, 10]."""
    parts = comma_separated(text)
    if not parts or not all(p.isdigit() for p in parts):
        raise BlockSwapError(f"sample sizes must be whole numbers separated by commas, got {text!r}")
    return [int(p) for p in parts]
