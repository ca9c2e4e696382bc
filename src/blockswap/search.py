"""The BlockSwap search: sample budget-feasible genotypes, score each, keep the best.

Every candidate is built with its own seed (derived from the search seed and its
index) and scored on one seeded minibatch shared by all candidates. The
published code draws a new shuffled batch per candidate and sets no seed; we fix
both so a search is reproducible and an interrupted one can resume.

Results stream to `candidates.csv` (one flushed row per scored candidate), so an
interrupted search loses nothing: rerunning it with the same output directory
and settings scores only the candidates still missing.

Two kinds of parallelism give the same rows as one process: a pool of worker
processes on one machine (`workers`, one thread each by default, which beats one
process with many threads on small CPU convolutions), and sharding over a
`torch.distributed` group (`torchrun`): rank r scores the candidates with
index % world_size == r, streams them to `candidates.rank{r}.csv`, and rank 0
gathers every row and writes the merged `candidates.csv` and `best.json`.
"""

from __future__ import annotations

import csv
import json
import pickle
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor
from tqdm.auto import tqdm

from .blocks import DEFAULT_PALETTE, Palette
from .budget import sample_genotypes
from .checkpoint import config_changes, write_text_atomic
from .data import ImageSet, ensure_cifar10, load_cifar10, load_embedded_sample
from .errors import BlockSwapError
from .genotype import Genotype
from .networks import Backbone
from .scoring import Score, Scorer, make_scorer

__all__ = [
    "SearchConfig",
    "Candidate",
    "SearchResult",
    "candidate_seed",
    "build_candidate",
    "score_genotype",
    "ScoringPool",
    "probe_data",
    "run_search",
    "read_candidates",
    "CSV_FIELDS",
]

CSV_FIELDS = ["index", "genotype", "params", "macs", "fisher", "fisher_per_block"]


@dataclass
class SearchConfig:
    """Everything that determines a search's candidates and scores."""

    budget: int  # target parameter count
    model: str = "wrn-40-2"  # the teacher whose blocks are swapped
    samples: int = 1000  # candidates to score; the paper's N
    batch_size: int = 128  # probe minibatch size = training batch size, as in the paper
    tolerance: float = 0.025  # accept |params - budget| < tolerance * budget (published window)
    seed: int = 0  # fixes candidates, their initial weights and the probe batch
    data_dir: str | None = None  # CIFAR-10 folder; None uses the embedded 1,000-image sample
    scorer: str = "fast"  # a name registered in blockswap.scoring.SCORERS; "reference" is the plain fp32 one

    def backbone(self) -> Backbone:
        return Backbone.from_name(self.model)


@dataclass(frozen=True)
class Candidate:
    """One scored row of a search."""

    index: int
    genotype: Genotype
    params: int
    macs: int
    fisher: float
    fisher_per_block: tuple[float, ...] = field(default=())

    def csv_line(self) -> str:
        """This candidate as one candidates.csv line (CSV_FIELDS order, no newline); floats round-trip exactly."""
        per_block = " ".join(repr(v) for v in self.fisher_per_block)
        genotype = " ".join(self.genotype.blocks)
        return f"{self.index},{genotype},{self.params},{self.macs},{self.fisher!r},{per_block}"


@dataclass
class SearchResult:
    """The ranked candidates (best first) and where they were written."""

    candidates: list[Candidate]
    out_dir: Path
    seconds: float
    scored_now: int

    @property
    def best(self) -> Candidate:
        return self.candidates[0]


def candidate_seed(seed: int, index: int) -> int:
    """The torch seed for candidate `index`'s initial weights."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def build_candidate(genotype: Genotype, seed: int, index: int, palette: Palette = DEFAULT_PALETTE) -> torch.nn.Module:
    """Candidate `index`'s network with its reproducible initial weights; global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(candidate_seed(seed, index))
        return genotype.build(palette)


def probe_data(data_dir: str | None) -> ImageSet:
    """The images a search draws its minibatch from: a CIFAR-10 train set or the embedded sample."""
    return load_embedded_sample() if data_dir is None else load_cifar10(data_dir, train=True)


def read_candidates(path: str | Path, backbone: Backbone) -> list[Candidate]:
    """Rows of a candidates.csv; a half-written last line (from an interruption) is ignored."""
    path = Path(path)
    text = path.read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    rows = list(csv.DictReader(text.splitlines()))
    out = []
    for row in rows:
        try:
            out.append(
                Candidate(
                    int(row["index"]),
                    Genotype(backbone, tuple(row["genotype"].split())),
                    int(row["params"]),
                    int(row["macs"]),
                    float(row["fisher"]),
                    tuple(float(v) for v in row["fisher_per_block"].split()),
                )
            )
        except (KeyError, ValueError, TypeError, AttributeError) as e:
            raise BlockSwapError(f"{path}: malformed candidate row {row!r} ({e})") from None
    return out


def _part_path(out: Path, rank: int) -> Path:
    return out / f"candidates.rank{rank}.csv"


def _prepare_out_dir(out: Path, config: SearchConfig, genotypes: list[Genotype]) -> dict[int, Candidate]:
    """Create the output folder or check it belongs to this search; return rows already scored.

    Rows left in per-rank part files by an interrupted sharded search are merged
    into `candidates.csv`, so a rerun with any number of ranks or workers resumes.
    """
    out.mkdir(parents=True, exist_ok=True)
    config_path, csv_path = out / "search.json", out / "candidates.csv"
    wanted = asdict(config)
    if config_path.exists():
        changes = config_changes(json.loads(config_path.read_text()), wanted)
        if changes:
            raise BlockSwapError(f"{out} holds a different search ({changes}); use a fresh --out directory")
    else:
        if csv_path.exists():
            raise BlockSwapError(f"{csv_path} exists but {config_path} does not; use a fresh --out directory")
        write_text_atomic(config_path, json.dumps(wanted, indent=2) + "\n")
    parts = sorted(out.glob("candidates.rank*.csv"))
    done: dict[int, Candidate] = {}
    for path in [csv_path, *parts]:
        if not path.exists():
            continue
        for c in read_candidates(path, genotypes[0].backbone):
            if not 0 <= c.index < len(genotypes) or c.genotype != genotypes[c.index]:
                raise BlockSwapError(f"{path}: row {c.index} does not match this search's candidates")
            done[c.index] = c
    _write_candidates(csv_path, [done[i] for i in sorted(done)])  # header first, so a cut search resumes
    for path in parts:
        path.unlink()
    return done


def _write_candidates(path: Path, rows: Iterable[Candidate]) -> None:
    lines = [",".join(CSV_FIELDS), *(c.csv_line() for c in rows)]
    write_text_atomic(path, "\n".join(lines) + "\n")


def score_genotype(
    genotype: Genotype,
    index: int,
    seed: int,
    batch: tuple[Tensor, Tensor],
    scorer: Scorer,
    palette: Palette = DEFAULT_PALETTE,
) -> Score:
    """Build candidate `index` with its seed on the batch's device and score it."""
    model = build_candidate(genotype, seed, index, palette).to(batch[0].device)
    return scorer(model, batch)


@dataclass
class _WorkerState:
    """What every job of a search shares, kept once per pool process."""

    batch: tuple[Tensor, Tensor]
    seed: int
    scorer: Scorer
    palette: Palette


_worker: _WorkerState | None = None


def _init_worker(batch: tuple[Tensor, Tensor], device: str, seed: int, scorer: Scorer,
                 palette: Palette | None, threads: int) -> None:
    """Runs once in each pool process: Ctrl-C is the parent's to handle; keep the shared inputs."""
    global _worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    batch = (batch[0].to(device), batch[1].to(device))
    _worker = _WorkerState(batch, seed, scorer, DEFAULT_PALETTE if palette is None else palette)


def _score_in_worker(index: int, genotype: Genotype) -> tuple[int, Score]:
    w = _worker
    if w is None:
        raise RuntimeError("_score_in_worker runs only in a ScoringPool process")
    return index, score_genotype(genotype, index, w.seed, w.batch, w.scorer, w.palette)


def _picklable(obj: object, what: str) -> object:
    try:
        pickle.dumps(obj)
    except (pickle.PicklingError, AttributeError, TypeError) as e:
        raise BlockSwapError(f"the {what} cannot be sent to worker processes ({e}); use workers=1") from None
    return obj


class ScoringPool:
    """Spawned worker processes that build and score candidates; started once, reused for many jobs.

    Each worker runs `threads` torch threads (default: this process's threads
    split evenly, i.e. one each when there are as many workers as cores).
    """

    def __init__(
        self,
        workers: int,
        batch: tuple[Tensor, Tensor],
        seed: int,
        scorer: Scorer,
        palette: Palette = DEFAULT_PALETTE,
        threads: int | None = None,
    ) -> None:
        threads = threads or max(1, torch.get_num_threads() // workers)
        portable = None if palette is DEFAULT_PALETTE else _picklable(palette, "palette")
        self._pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=mp.get_context("spawn"),
            initializer=_init_worker,
            initargs=((batch[0].cpu(), batch[1].cpu()), str(batch[0].device), seed, _picklable(scorer, "scorer"),
                      portable, threads),
        )

    def score(self, jobs: Iterable[tuple[int, Genotype]]) -> Iterator[tuple[int, Score]]:
        """(index, score) for each (index, genotype) job, in completion order."""
        futures = [self._pool.submit(_score_in_worker, i, g) for i, g in jobs]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            for future in futures:
                future.cancel()

    def close(self) -> None:
        """Drop queued jobs, wait for running ones, end the workers."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ScoringPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _score_all(
    todo: list[int],
    genotypes: list[Genotype],
    seed: int,
    batch: tuple[Tensor, Tensor],
    scorer: Scorer,
    palette: Palette,
    workers: int,
) -> Iterator[tuple[int, Score]]:
    """(index, score) for every index in `todo`, in completion order; `workers` > 1 uses a process pool."""
    if workers <= 1:
        for i in todo:
            yield i, score_genotype(genotypes[i], i, seed, batch, scorer, palette)
        return
    with ScoringPool(workers, batch, seed, scorer, palette) as pool:
        yield from pool.score((i, genotypes[i]) for i in todo)


def _shared_start(out: Path, config: SearchConfig, genotypes: list[Genotype],
                  group: dist.ProcessGroup | None) -> dict[int, Candidate]:
    """Rank 0 prepares the output folder and tells every rank which rows exist (or why it refused)."""
    if group is None:
        return _prepare_out_dir(out, config, genotypes)
    message: list[object] = [None]
    if dist.get_rank(group) == 0:
        try:
            if config.data_dir is not None:  # download a missing data set once, before the other ranks read it
                ensure_cifar10(config.data_dir)
            message = [_prepare_out_dir(out, config, genotypes)]
        except BlockSwapError as e:
            message = [str(e)]
    dist.broadcast_object_list(message, src=dist.get_global_rank(group, 0), group=group)
    if isinstance(message[0], str):
        raise BlockSwapError(message[0])
    return message[0]  # type: ignore[return-value]


def run_search(
    config: SearchConfig,
    out_dir: str | Path,
    palette: Palette = DEFAULT_PALETTE,
    device: str | torch.device = "cpu",
    progress: bool = True,
    scorer: Scorer | None = None,
    on_scored: Callable[[Candidate], None] | None = None,
    workers: int = 1,
    group: dist.ProcessGroup | None = None,
) -> SearchResult:
    """Sample, score and rank `config.samples` candidates, streaming rows to `out_dir/candidates.csv`.

    Writes `best.json` (the max-Fisher genotype with params, macs, fisher) at the end.
    Rerunning with the same settings and folder resumes an interrupted search.
    `workers` > 1 scores in that many spawned processes (a custom scorer or
    palette must then be picklable). With a `torch.distributed` `group`, this
    rank scores its share (index % size == rank) and every rank returns the
    merged result; only group rank 0 writes `candidates.csv` and `best.json`.
    Rows are the same whichever way the work is split.
    """
    start = time.perf_counter()
    backbone = config.backbone()
    scorer = scorer or make_scorer(config.scorer)
    genotypes = sample_genotypes(backbone, config.budget, config.samples, config.tolerance, config.seed, palette)
    out = Path(out_dir)
    rank, world = (dist.get_rank(group), dist.get_world_size(group)) if group is not None else (0, 1)
    done = _shared_start(out, config, genotypes, group)
    out.mkdir(parents=True, exist_ok=True)  # for ranks on machines that do not share rank 0's disk
    before = len(done)
    mine = [i for i in range(len(genotypes)) if i % world == rank]
    todo = [i for i in mine if i not in done]
    scored: Iterator[tuple[int, Score]] = iter(())
    if todo:
        x, y = probe_data(config.data_dir).probe_batch(config.batch_size, config.seed)
        batch = (x.to(device), y.to(device))
        scored = _score_all(todo, genotypes, config.seed, batch, scorer, palette, min(workers, len(todo)))
    stream = out / "candidates.csv" if group is None else _part_path(out, rank)
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc="scoring candidates", unit="cand",
               disable=not progress, dynamic_ncols=True)
    new: list[Candidate] = []
    with stream.open("a", newline="") as f, bar:
        for i, score in scored:
            g = genotypes[i]
            cand = Candidate(i, g, g.params(palette), g.macs(palette), score.total, score.per_block)
            f.write(cand.csv_line() + "\n")
            f.flush()
            new.append(cand)
            bar.update(1)
            if on_scored is not None:
                on_scored(cand)
    if group is not None:
        shares: list[list[Candidate] | None] = [None] * world
        dist.all_gather_object(shares, new, group=group)
        new = [c for share in shares for c in share or ()]
    done.update((c.index, c) for c in new)
    ranked = sorted(done.values(), key=lambda c: (-c.fisher, c.index))
    if rank == 0:
        _write_candidates(out / "candidates.csv", [done[i] for i in sorted(done)])
        if group is not None:
            for r in range(world):
                _part_path(out, r).unlink(missing_ok=True)
        best = ranked[0]
        summary = {**best.genotype.to_dict(), "index": best.index, "params": best.params, "macs": best.macs,
                   "fisher": best.fisher, "budget": config.budget, "samples": config.samples, "seed": config.seed}
        write_text_atomic(out / "best.json", json.dumps(summary, indent=2) + "\n")
    return SearchResult(ranked, out, time.perf_counter() - start, len(done) - before)
