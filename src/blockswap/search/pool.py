"""Scoring candidates: in the calling process, or in a `blockswap.util.workers.WorkerPool` started once per search.

Each worker receives the probe batch, the search seed and the scorer once, then
builds and scores one candidate per job. The block types and scorers a plugin
registers reach the workers by name: every worker imports the plugins and the
modules that defined the user types the jobs use (`user_modules`), and refuses to
start, naming the type, when one is still missing.

Every candidate is scored with `SCORING_THREADS` torch threads on the CPU,
in a worker or in the calling process alike, so its row is the same bytes for
any number of workers or torchrun ranks (a different thread count changes the
last digits of a convolution's sums).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..scoring.scorer import Score, Scorer, average_scores, make_scorer, scorer_factory, scorer_info, scorer_names
from ..space.blocks import DEFAULT_PALETTE, has_block_type, registered_block_types
from ..space.genotype import Genotype
from ..util.errors import BlockSwapError
from ..util.workers import MAKE_IT_A_PLUGIN, WorkerPool

__all__ = ["SCORING_THREADS", "Job", "candidate_seed", "build_candidate", "score_genotype", "first_images",
           "user_modules", "require_registered", "ScorerSpec", "ScoringPool", "Scoring"]

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
    (`blockswap.scoring.scorer.average_scores`; draw 0 is the single-initialisation one).
    """
    scores = [scorer(build_candidate(genotype, seed, index, draw).to(batch[0].device), batch)
              for draw in range(inits)]
    return average_scores(scores, scorer_info(scorer).log_average)


def _defining_modules(obj: object, seen: set[int]) -> Iterator[str]:
    """The modules that defined `obj`: its own (a function's) or its class's, and those of the functions and
    arguments its closure or `functools.partial` holds (a user's `gamma` inside `grouped_chain`, say)."""
    if id(obj) in seen or obj is None or isinstance(obj, (str, bytes, int, float, bool)):
        return
    seen.add(id(obj))
    yield getattr(obj, "__module__", None) or type(obj).__module__
    if isinstance(obj, functools.partial):
        for inner in (obj.func, *obj.args, *obj.keywords.values()):
            yield from _defining_modules(inner, seen)
    for cell in getattr(obj, "__closure__", None) or ():
        try:
            inner = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        yield from _defining_modules(inner, seen)


def user_modules(block_names: Iterable[str] = (), scorers: Iterable[object] = ()) -> list[str]:
    """The importable modules that defined the user block types among `block_names` and the `scorers` (instances
    or factories): a worker imports them, so what they register on import resolves there too."""
    seen: set[int] = set()
    types = registered_block_types()
    found = {m for name in set(block_names) if name in types and name not in DEFAULT_PALETTE
             for part in (types[name], types[name].chain) for m in _defining_modules(part, seen)}
    found |= {m for scorer in scorers for m in _defining_modules(scorer, seen)}
    return sorted(m for m in found if m.split(".")[0] not in ("blockswap", "__main__", "__mp_main__", "builtins"))


def require_registered(block_names: Iterable[str] = (), scorers: Iterable[str] = ()) -> None:
    """In a worker: every block type and scorer the jobs name is registered here too; else one BlockSwapError
    naming the first missing one and the fix."""
    for name in sorted(n for n in set(block_names) if not has_block_type(n)):
        raise BlockSwapError(f"block type {name!r} is registered in this process but not in its worker processes: "
                             f"{MAKE_IT_A_PLUGIN}")
    for name in sorted(set(scorers) - set(scorer_names())):
        raise BlockSwapError(f"scorer {name!r} is registered in this process but not in its worker processes: "
                             f"{MAKE_IT_A_PLUGIN}")


@dataclass(frozen=True)
class ScorerSpec:
    """A registered scorer by name: what `make_scorer` takes. Workers build their own scorer from it, so a
    plugin's scorer reaches them by name, however its factory makes it."""

    name: str
    settings: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)


@dataclass
class _WorkerState:
    """What every job of a search shares, kept once per pool process."""

    batch: tuple[Tensor, Tensor]
    seed: int
    scorer: Scorer
    inits: int


_worker: _WorkerState | None = None


def _init_scoring(batch: tuple[Tensor, Tensor], device: str, seed: int, scorer: Scorer | ScorerSpec, inits: int,
                  block_names: list[str]) -> None:
    """Runs once in each scoring worker, after the plugins: check the jobs' block types and scorer, build the
    scorer from its spec, keep the shared inputs."""
    global _worker
    if isinstance(scorer, ScorerSpec):
        require_registered(block_names, [scorer.name])
        scorer = make_scorer(scorer.name, scorer.settings, scorer.context)
    else:
        require_registered(block_names)
    _worker = _WorkerState((batch[0].to(device), batch[1].to(device)), seed, scorer, inits)


def first_images(batch: tuple[Tensor, Tensor], images: int) -> tuple[Tensor, Tensor]:
    """The first `images` images of the batch (all of it when it has no more)."""
    return batch if images >= len(batch[0]) else (batch[0][:images], batch[1][:images])


def _score_in_worker(index: int, genotype: Genotype, images: int) -> tuple[int, Score]:
    w = _worker
    if w is None:
        raise RuntimeError("_score_in_worker runs only in a ScoringPool process")
    return index, score_genotype(genotype, index, w.seed, first_images(w.batch, images), w.scorer, w.inits)


class ScoringPool:
    """Worker processes that build and score candidates; started once, reused for many jobs.

    A failed job, Ctrl-C or SIGTERM while in its `with` block stops the running jobs at once (`WorkerPool`).
    """

    def __init__(self, workers: int, batch: tuple[Tensor, Tensor], seed: int, scorer: Scorer | ScorerSpec,
                 block_types: Iterable[str] = (), inits: int = 1) -> None:
        """`scorer`: sent to every worker, or a `ScorerSpec` each worker builds its own from. `block_types`: the
        names the jobs' genotypes use; every worker imports the modules of the user ones."""
        names = sorted(set(block_types))
        factory = scorer_factory(scorer.name) if isinstance(scorer, ScorerSpec) else scorer
        self._pool = WorkerPool(workers, SCORING_THREADS, _init_scoring,
                                ((batch[0].cpu(), batch[1].cpu()), str(batch[0].device), seed, scorer, inits, names),
                                user_modules(names, [factory]))

    def score(self, jobs: Iterable[Job]) -> Iterator[tuple[int, Score]]:
        """(index, score) for each (index, genotype, images) job, in completion order."""
        return self._pool.run(_score_in_worker, jobs)

    def close(self, stop: bool = False) -> None:
        """End the workers: at once, dropping the running jobs (`stop`), or once the submitted jobs are done."""
        if stop:
            self._pool.stop()
        else:
            self._pool.close()

    def __enter__(self) -> ScoringPool:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        self.close(stop=kind is not None)


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
    workers start once. With a `spec` (how `scorer` was made), each worker builds
    its own scorer from it instead of receiving `scorer`.
    """

    def __init__(self, workers: int, batch: tuple[Tensor, Tensor], seed: int, scorer: Scorer,
                 block_types: Iterable[str] = (), inits: int = 1, spec: ScorerSpec | None = None) -> None:
        self.workers, self.batch, self.seed, self.scorer, self.inits = workers, batch, seed, scorer, inits
        self.spec = spec
        self.block_types = set(block_types)
        self._pool: ScoringPool | None = None

    def score(self, jobs: list[Job]) -> Iterator[tuple[int, Score]]:
        """(index, score) for every job, in completion order."""
        if self.workers <= 1 or len(jobs) <= 1 and self._pool is None:
            for i, g, n in jobs:
                with _threads(SCORING_THREADS if self.batch[0].device.type == "cpu" else torch.get_num_threads()):
                    score = score_genotype(g, i, self.seed, first_images(self.batch, n), self.scorer, self.inits)
                yield i, score
            return
        if self._pool is None:
            self._pool = ScoringPool(min(self.workers, len(jobs)), self.batch, self.seed, self.spec or self.scorer,
                                     self.block_types, self.inits)
        yield from self._pool.score(jobs)

    def __enter__(self) -> Scoring:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if self._pool is not None:
            self._pool.close(stop=kind is not None)
