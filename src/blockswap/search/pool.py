"""The scoring worker pool: spawned processes that build and score candidates, started once per search.

Each worker receives the probe batch, the search seed, the scorer and the
user-registered block types once (so a type registered in the parent resolves
in the child too), then builds and scores one candidate per job. Ctrl-C and
SIGTERM are the parent's to handle; the workers ignore them, are shut down by
the parent, and end themselves within a second if the parent dies, whatever
killed it.

Every candidate is scored with `SCORING_THREADS` torch threads on the CPU,
in a worker or in the calling process alike, so its row is the same bytes for
any number of workers or torchrun ranks (a different thread count changes the
last digits of a convolution's sums).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.multiprocessing as mp
from torch import Tensor, nn

from ..scoring.scorer import Score, Scorer, average_scores
from ..space.blocks import DEFAULT_PALETTE, BlockType, register_block_type, registered_block_types
from ..space.genotype import Genotype
from ..util.errors import BlockSwapError
from ..util.system import start_worker

__all__ = ["SCORING_THREADS", "Job", "user_block_types", "candidate_seed", "build_candidate", "score_genotype", "ScoringPool", "Scoring"]

Job = tuple[int, Genotype, int]  # (candidate index, genotype, how many images of the probe batch to score it on)

SCORING_THREADS = 1  # torch threads per scoring on the CPU: one worker per core beats threads, and fixes the rows


def candidate_seed(seed: int, index: int, draw: int = 0) -> int:
    """The torch seed for candidate `index`'s initial weights (its `draw`-th initialisation)."""
    key = [seed, index] if draw == 0 else [seed, index, draw]
    return int(np.random.SeedSequence(key).generate_state(1)[0])


def build_candidate(genotype: Genotype, seed: int, index: int, draw: int = 0) -> nn.Module:
    """Candidate `index`'s network with its reproducible initial weights; global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(candidate_seed(seed, index, draw))
        return genotype.build()


def score_genotype(genotype: Genotype, index: int, seed: int, batch: tuple[Tensor, Tensor], scorer: Scorer,
                   inits: int = 1) -> Score:
    """Build candidate `index` with its seed on the batch's device and score it.

    With `inits` > 1, the score is the average over that many initialisations
    (`blockswap.scoring.proxies.average_scores`; draw 0 is the single-initialisation one).
    """
    scores = [scorer(build_candidate(genotype, seed, index, draw).to(batch[0].device), batch)
              for draw in range(inits)]
    return average_scores(scores, getattr(scorer, "log_average", True))


@dataclass
class _WorkerState:
    """What every job of a search shares, kept once per pool process."""

    batch: tuple[Tensor, Tensor]
    seed: int
    scorer: Scorer
    inits: int


_worker: _WorkerState | None = None


def _init_worker(batch: tuple[Tensor, Tensor], device: str, seed: int, scorer: Scorer, inits: int,
                 user_types: list[BlockType], parent: int) -> None:
    """Runs once in each pool process: register the parent's user block types, keep the shared inputs."""
    global _worker
    start_worker(parent, SCORING_THREADS)
    for block in user_types:
        register_block_type(block)
    _worker = _WorkerState((batch[0].to(device), batch[1].to(device)), seed, scorer, inits)


def _first(batch: tuple[Tensor, Tensor], images: int) -> tuple[Tensor, Tensor]:
    """The first `images` images of the batch (all of it when it has no more)."""
    return batch if images >= len(batch[0]) else (batch[0][:images], batch[1][:images])


def _score_in_worker(index: int, genotype: Genotype, images: int) -> tuple[int, Score]:
    w = _worker
    if w is None:
        raise RuntimeError("_score_in_worker runs only in a ScoringPool process")
    return index, score_genotype(genotype, index, w.seed, _first(w.batch, images), w.scorer, w.inits)


def _picklable(obj: object, what: str) -> object:
    try:
        pickle.dumps(obj)
    except (pickle.PicklingError, AttributeError, TypeError) as e:
        raise BlockSwapError(f"the {what} cannot be sent to worker processes ({e}); use workers=1") from None
    return obj


def user_block_types(names: set[str]) -> list[BlockType]:
    """The registered types among `names` that are not published ones: what a fresh process would lack."""
    return [t for name, t in registered_block_types().items() if name in names and name not in DEFAULT_PALETTE]


class ScoringPool:
    """Spawned worker processes that build and score candidates; started once, reused for many jobs."""

    def __init__(self, workers: int, batch: tuple[Tensor, Tensor], seed: int, scorer: Scorer,
                 block_types: Iterable[str] = (), inits: int = 1) -> None:
        """`block_types`: the names the jobs' genotypes use; user-registered ones among them go to every worker."""
        user_types = _picklable(user_block_types(set(block_types)), "registered block types")
        self._pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=mp.get_context("spawn"),
            initializer=_init_worker,
            initargs=((batch[0].cpu(), batch[1].cpu()), str(batch[0].device), seed, _picklable(scorer, "scorer"),
                      inits, user_types, os.getpid()),
        )

    def score(self, jobs: Iterable[Job]) -> Iterator[tuple[int, Score]]:
        """(index, score) for each (index, genotype, images) job, in completion order."""
        futures = [self._pool.submit(_score_in_worker, i, g, n) for i, g, n in jobs]
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


@contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Scoring:
    """Scores jobs in this process (`workers` 1) or in a `ScoringPool` started on first use and kept until exit.

    One pool serves every stage of a search (screening, then re-scoring), so
    workers start once.
    """

    def __init__(self, workers: int, batch: tuple[Tensor, Tensor], seed: int, scorer: Scorer,
                 block_types: Iterable[str] = (), inits: int = 1) -> None:
        self.workers, self.batch, self.seed, self.scorer, self.inits = workers, batch, seed, scorer, inits
        self.block_types = set(block_types)
        self._pool: ScoringPool | None = None

    def score(self, jobs: list[Job]) -> Iterator[tuple[int, Score]]:
        """(index, score) for every job, in completion order."""
        if self.workers <= 1 or len(jobs) <= 1 and self._pool is None:
            for i, g, n in jobs:
                with _threads(SCORING_THREADS if self.batch[0].device.type == "cpu" else torch.get_num_threads()):
                    score = score_genotype(g, i, self.seed, _first(self.batch, n), self.scorer, self.inits)
                yield i, score
            return
        if self._pool is None:
            self._pool = ScoringPool(min(self.workers, len(jobs)), self.batch, self.seed, self.scorer,
                                     self.block_types, self.inits)
        yield from self._pool.score(jobs)

    def __enter__(self) -> Scoring:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.close()
