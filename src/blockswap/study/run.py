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
- `study.json`: the settings, per proxy its statistics (`blockswap.study.ranking`),
  and the noise ceiling (the Spearman of the errors of two training seeds);
- `report.md`: the table, best proxy first, and `proxies.png`: each proxy
  against error, one panel per proxy, its Spearman in the title.

A contrast study (`contrast` set) first scores the whole pool as searches do
(`pool/<ranking>/`), records the groups it trains in `groups.json` (Fisher's
top, random and bottom; `blockswap.study.contrast`), and trains only those.

Proxy names: a registered scorer at initialisation (`fisher`), the same after
k SGD steps of the recipe (`fisher@10`), and, with `inits` > 1, the average
over that many initialisations (`fisher.mean4`; `blockswap.scoring.scorer.average_scores`).
`study_samples` (`study/report.py`) then answers section 4.3 from the finished pool: the expected
error of the best-by-proxy of n samples, against a random pick and the oracle.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import Tensor
from tqdm.auto import tqdm

from ..data import check_subsets, probe_images
from ..data.imagefolder import check_classes
from ..scoring.scorer import Score, average_scores, make_scorer, scorer_factory, scorer_info
from ..scoring.trained import RecipeSteps
from ..search.pool import build_candidate, require_registered, user_modules
from ..space.genotype import Genotype
from ..train.training import ONE_PROCESS, DivergedError, train
from ..util.distributed import on_rank0, rank0_first
from ..util.options import recorded_form
from ..util.rundir import check_recorded, record, write_json_atomic
from ..util.system import usable_cores
from ..util.workers import WorkerPool
from .config import (
    StudyConfig,
    candidate_dir,
    candidate_done,
    groups_path,
    parse_proxy,
    require_extra,
    run_finished,
    trained_indices,
)
from .contrast import score_pool, select_groups
from .report import json_safe, write_report

__all__ = ["run_study"]


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
        scores[f"{name}.mean{config.inits}"] = average_scores(draws, scorer_info(base).log_average)
    trained = sorted({steps for _, steps in parsed.values() if steps})
    if trained:
        recipe = RecipeSteps(data_dir=config.data_dir, seed=config.seed, **config.recipe_settings())
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
    config, folder = job.config, candidate_dir(job.out, job.index)
    folder.mkdir(parents=True, exist_ok=True)
    scores_path = folder / "scores.json"
    device = torch.device(job.device)
    if not scores_path.exists():
        scores, seconds = _score_all(config, job.genotype, job.index, (batch[0].to(device), batch[1].to(device)))
        write_json_atomic(scores_path, json_safe({  # a NaN or infinite score is kept as null, read back as NaN
            "index": job.index, "blocks": list(job.genotype.blocks),
            "scores": {n: {"score": s.total, "per_block": list(s.per_block)} for n, s in scores.items()},
            "seconds": seconds}))
    for seed in config.train_seeds:
        run = folder / f"seed-{seed}"
        if not run_finished(run):
            try:
                train(config.train_config(job.genotype, seed), run, resume=True, device=device, progress=False,
                      group=ONE_PROCESS)  # under torchrun, each rank trains its own candidates
            except DivergedError as e:  # a diverged candidate is a result (no error to rank), not the end of the study
                run.mkdir(parents=True, exist_ok=True)
                write_json_atomic(run / "failed.json", {"reason": str(e)})
    return job.index


_batch: tuple[Tensor, Tensor] | None = None


def _init_study(batch: tuple[Tensor, Tensor], block_names: list[str], scorers: list[str]) -> None:
    """Runs once in each study worker, after the plugins: check the jobs' block types and scorers, keep the batch."""
    global _batch
    require_registered(block_names, scorers)
    _batch = batch


def _run_in_worker(job: _Job) -> int:
    if _batch is None:
        raise RuntimeError("_run_in_worker runs only in a study worker process")
    return _run_candidate(job, _batch)


def _run_jobs(jobs: list[_Job], batch: tuple[Tensor, Tensor], workers: int, bar: tqdm) -> None:
    """Run the jobs here (one worker) or in a `WorkerPool`, whose workers share the CPU threads equally. Ctrl-C,
    SIGTERM or a failed candidate stop the candidates in training at once (their folders resume exactly)."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            _run_candidate(job, batch)
            bar.update(1)
        return
    threads = max(1, usable_cores() // workers)
    scorers = sorted({base for base, _ in map(parse_proxy, jobs[0].config.proxies)})
    names = sorted({name for job in jobs for name in job.genotype.blocks})
    modules = user_modules(names, [scorer_factory(name) for name in scorers])
    with WorkerPool(min(workers, len(jobs)), threads, _init_study, (batch, names, scorers), modules) as pool:
        for _ in pool.run(_run_in_worker, [(job,) for job in jobs]):
            bar.update(1)


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
    images = rank0_first(group, lambda: probe_images(config.data_dir, size))
    check_classes(genotypes[0].backbone, images, config.data_dir)
    check_subsets(images, config.data_dir, size, config.train_subset, config.test_subset)
    batch = images.probe_batch(config.batch_size, config.seed)
    on_rank0(group, lambda: _prepare_out_dir(out, config))
    if config.contrast is not None and not groups_path(out).exists():
        _choose_groups(config, out, workers, device, progress, group)
    mine = [i for i in trained_indices(config, out) if i % world == rank]
    todo = [_Job(config, i, genotypes[i], out, str(device)) for i in mine if not candidate_done(config, out, i)]
    with tqdm(total=len(mine), initial=len(mine) - len(todo), desc="study candidates", unit="cand",
              disable=not progress or rank != 0, dynamic_ncols=True) as bar:
        _run_jobs(todo, batch, workers, bar)
    if waiting is not None:
        torch_dist.barrier(group=waiting)
    if rank != 0:
        return {}
    return write_report(out)


def _choose_groups(config: StudyConfig, out: Path, workers: int, device: str | torch.device, progress: bool,
                   group: torch_dist.ProcessGroup | None) -> None:
    """Score the whole pool as searches do (in pool/, resumable; ranks share it) and record the contrast groups."""
    search = {"budget": config.budget, "model": config.model, "samples": config.candidates,
              "batch_size": config.batch_size, "tolerance": config.tolerance, "seed": config.seed,
              "data_dir": config.data_dir}
    scores = score_pool(search, config.inits, out, workers, device, progress, group)
    groups = select_groups(scores, config.contrast, config.seed)  # type: ignore[arg-type]
    on_rank0(group, lambda: write_json_atomic(groups_path(out), groups))


def _prepare_out_dir(out: Path, config: StudyConfig) -> None:
    """Record config.json in a new folder, or check that the folder's study is this one."""
    if not check_recorded(out, "config.json", asdict(config), partial(recorded_form, StudyConfig), "study",
                          "use a fresh --out directory"):
        record(out, "config.json", asdict(config))
