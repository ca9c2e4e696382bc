"""The BlockSwap search: sample budget-feasible genotypes, score each, keep the best.

Every candidate is built with its own seed (derived from the search seed and its
index) and scored on one seeded minibatch shared by all candidates. The
published code draws a new shuffled batch per candidate and sets no seed; we fix
both so a search is reproducible and an interrupted one can resume.

Rows stream to `candidates.csv` (one flushed row per scored candidate), so an
interrupted search loses nothing: rerunning it with the same output directory
and settings scores only the candidates still missing. `search.json` records
the settings, including the scorer's name and settings, so a rerun with any
other setting is refused.

Work splits two ways, with the rows of one process: a pool of worker processes
(`blockswap.workers`), and sharding over a `torch.distributed` group
(`torchrun`): rank r scores the candidates with index % world_size == r,
streams them to `candidates.rank{r}.csv`, and rank 0 gathers every row and
writes the merged `candidates.csv` and `best.json`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from tqdm.auto import tqdm

from .backbones import Backbone, get_backbone
from .blocks import DEFAULT_PALETTE, Palette, block_type
from .candidates import CSV_FIELDS, Candidate, read_candidates, write_candidates
from .counts import parse_budget
from .data import probe_images
from .distributed import on_rank0, rank0_first
from .errors import BlockSwapError
from .genotype import Genotype
from .options import from_record, option
from .outdir import check_recorded, record, write_json_atomic
from .sampling import DEFAULT_TOLERANCE, sample_genotypes
from .scoring import Score, make_scorer, scorer_names
from .workers import score_all

__all__ = ["SearchConfig", "SearchResult", "run_search"]


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


@dataclass
class SearchConfig:
    """Everything that determines a search's candidates and scores; saved as search.json."""

    budget: int = field(metadata=option("parameter budget, e.g. 400k, 1.6M, 400000", parse=parse_budget))
    model: str = field(default="wrn-40-2", metadata=option("the teacher whose blocks are swapped (a registered "
                                                           "backbone: wrn-D-K, resnet18, resnet34, or a plugin's)"))
    samples: int = field(default=1000, metadata=option("candidates to score; the paper's N"))
    batch_size: int = field(default=128, metadata=option("probe minibatch size (the training batch, as in the paper)"))
    tolerance: float = field(default=DEFAULT_TOLERANCE,
                             metadata=option("accept |params - budget| < tolerance * budget (the published window)"))
    seed: int = field(default=0, metadata=option("fixes the candidates, their initial weights and the probe batch"))
    data_dir: str | None = field(default=None, metadata=option(
        "CIFAR-10 folder (downloaded there if missing); default: the embedded 1,000-image sample"))
    scorer: str = field(default="fast", metadata=option(
        "a registered scorer: fast, or reference (the plain fp32 one fast is checked against)", choices=scorer_names))
    scorer_settings: dict[str, Any] = field(default_factory=dict, metadata=option(
        "keyword settings of the scorer, as JSON values", cli=False))
    palette: list[str] | None = field(default=None, metadata=option(
        "comma-separated block types a slot may take; default: the 23 published types", parse=_names,
        metavar="NAMES"))

    def __post_init__(self) -> None:
        """Refuse settings a search cannot run with, naming the first bad one."""
        self.budget = parse_budget(self.budget)
        for name in ("samples", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BlockSwapError(f"{name} must be a positive whole number, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise BlockSwapError(f"seed must be a whole number in [0, 2**63), got {self.seed!r}")
        if not isinstance(self.tolerance, (int, float)) or not 0 < self.tolerance < 1:
            raise BlockSwapError(f"tolerance must be a fraction in (0, 1), got {self.tolerance!r}")
        try:
            json.dumps(self.scorer_settings, allow_nan=False)
        except (TypeError, ValueError):
            raise BlockSwapError(f"scorer_settings must be a dict of JSON values, got {self.scorer_settings!r}") from None
        if not isinstance(self.scorer_settings, dict):
            raise BlockSwapError(f"scorer_settings must be a dict of JSON values, got {self.scorer_settings!r}")
        if self.palette is not None:
            self.palette = list(self.palette)
            self.palette_types()
        get_backbone(self.model)

    def backbone(self) -> Backbone:
        return get_backbone(self.model)

    def palette_types(self) -> Palette:
        """The palette a slot draws from: the named registered types, or the 23 published ones."""
        if self.palette is None:
            return DEFAULT_PALETTE
        try:
            return Palette(block_type(name) for name in self.palette)
        except ValueError as e:
            raise BlockSwapError(f"palette: {e}") from None

    @classmethod
    def from_dict(cls, data: Any) -> SearchConfig:
        """A config as search.json records it; settings added since an earlier version take their defaults."""
        return from_record(cls, data, "search record")


@dataclass
class SearchResult:
    """The ranked candidates (best first) and where they were written."""

    candidates: list[Candidate]
    out_dir: Path
    seconds: float
    scored_now: int
    non_finite: int = 0  # candidates whose score is NaN or infinite: kept in their rows, never chosen

    @property
    def best(self) -> Candidate:
        return self.candidates[0]


def _part_path(out: Path, rank: int) -> Path:
    return out / f"candidates.rank{rank}.csv"


def _normalized(saved: Any) -> dict[str, Any]:
    try:
        return asdict(SearchConfig.from_dict(saved))
    except (BlockSwapError, TypeError):
        return saved if isinstance(saved, dict) else {}


def _trusted_rows(path: Path, genotypes: list[Genotype]) -> dict[int, Candidate]:
    """The rows of `path` this search can keep: each must be one of its candidates with its own counts.

    A row whose index, genotype, params or MACs do not match the candidate, or
    an index that appears twice, means the file was edited or belongs to
    another search: refused. A non-finite score is dropped, so it is scored again.
    """
    rows: dict[int, Candidate] = {}
    for c in read_candidates(path, genotypes[0].backbone):
        if not 0 <= c.index < len(genotypes) or c.genotype != genotypes[c.index]:
            raise BlockSwapError(f"{path}: row {c.index} does not match this search's candidates; "
                                 "use a fresh --out directory")
        g = c.genotype
        if (c.params, c.macs) != (g.params(), g.macs()) or len(c.score_per_block) != g.backbone.num_blocks:
            raise BlockSwapError(f"{path}: row {c.index} has params, MACs or per-block scores that its genotype does "
                                 "not give (edited by hand?); use a fresh --out directory")
        if c.index in rows:
            raise BlockSwapError(f"{path}: candidate {c.index} appears twice; use a fresh --out directory")
        if math.isfinite(c.score):
            rows[c.index] = c
    return rows


def _prepare_out_dir(out: Path, config: SearchConfig, genotypes: list[Genotype]) -> dict[int, Candidate]:
    """Create the output folder or check it belongs to this search; return rows already scored.

    Rows left in per-rank part files by an interrupted sharded search are merged
    into `candidates.csv`, so a rerun with any number of ranks or workers resumes.
    """
    config_path, csv_path = out / "search.json", out / "candidates.csv"
    if not check_recorded(out, "search.json", asdict(config), _normalized, "search", "use a fresh --out directory"):
        if csv_path.exists():
            raise BlockSwapError(f"{csv_path} exists but {config_path} does not; use a fresh --out directory")
        record(out, "search.json", asdict(config))
    parts = sorted(out.glob("candidates.rank*.csv"))
    done: dict[int, Candidate] = {}
    for path in [csv_path, *parts]:
        if path.exists():
            for index, row in _trusted_rows(path, genotypes).items():
                if index in done and done[index] != row:
                    raise BlockSwapError(f"{path}: candidate {index} differs from its row in another file")
                done[index] = row
    write_candidates(csv_path, [done[i] for i in sorted(done)])  # header first, so a cut search resumes
    for path in parts:
        path.unlink()
    return done


def _rank_key(c: Candidate) -> tuple[float, int]:
    """Highest finite score first, ties by index; NaN and infinite scores last."""
    return (-c.score if math.isfinite(c.score) else math.inf, c.index)


def run_search(
    config: SearchConfig,
    out_dir: str | Path,
    device: str | torch.device = "cpu",
    progress: bool = True,
    on_scored: Callable[[Candidate], None] | None = None,
    workers: int = 1,
    group: dist.ProcessGroup | None = None,
) -> SearchResult:
    """Sample, score and rank `config.samples` candidates, streaming rows to `out_dir/candidates.csv`.

    The scorer is the one `config.scorer` names in the registry, built with
    `config.scorer_settings`. Writes `best.json` (the highest-scoring genotype
    with params, macs, score) at the end. Rerunning with the same settings and
    folder resumes an interrupted search. `workers` > 1 scores in that many
    spawned processes (a user scorer and user block types must then be
    picklable). With a `torch.distributed` `group`, this rank scores its share
    (index % size == rank) and every rank returns the merged result; only group
    rank 0 writes `candidates.csv` and `best.json`. Rows are the same whichever
    way the work is split.
    """
    start = time.perf_counter()
    scorer = make_scorer(config.scorer, config.scorer_settings)
    genotypes = sample_genotypes(config.backbone(), config.budget, config.samples, config.tolerance, config.seed,
                                 config.palette_types())
    out = Path(out_dir)
    rank, world = (dist.get_rank(group), dist.get_world_size(group)) if group is not None else (0, 1)
    # The probe batch first: a search that cannot start (no data, a batch larger than it) leaves no folder behind.
    x, y = rank0_first(group, lambda: probe_images(config.data_dir)).probe_batch(config.batch_size, config.seed)
    done = on_rank0(group, lambda: _prepare_out_dir(out, config, genotypes))
    out.mkdir(parents=True, exist_ok=True)  # for ranks on machines that do not share rank 0's disk
    before = len(done)
    todo = [(i, genotypes[i]) for i in range(len(genotypes)) if i % world == rank and i not in done]
    mine = len(range(rank, len(genotypes), world))
    scored: Iterator[tuple[int, Score]] = iter(())
    if todo:
        batch: tuple[Tensor, Tensor] = (x.to(device), y.to(device))
        scored = score_all(todo, config.seed, batch, scorer, min(workers, len(todo)))
    stream = out / "candidates.csv" if group is None else _part_path(out, rank)
    bar = tqdm(total=mine, initial=mine - len(todo), desc="scoring candidates", unit="cand",
               disable=not progress, dynamic_ncols=True)
    new: list[Candidate] = []
    with stream.open("a", newline="") as f, bar:
        if f.tell() == 0:  # a rank's part file starts with the header, so a cut sharded search reads back
            f.write(",".join(CSV_FIELDS) + "\n")
        for i, score in scored:
            g = genotypes[i]
            cand = Candidate(i, g, g.params(), g.macs(), score.total, score.per_block)
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
    ranked = sorted(done.values(), key=_rank_key)
    if not math.isfinite(ranked[0].score):
        raise BlockSwapError(f"no candidate has a finite score ({config.scorer}); see {out / 'candidates.csv'}")
    if rank == 0:
        write_candidates(out / "candidates.csv", [done[i] for i in sorted(done)])
        if group is not None:
            for r in range(world):
                _part_path(out, r).unlink(missing_ok=True)
        best = ranked[0]
        write_json_atomic(out / "best.json", {
            **best.genotype.to_dict(), "index": best.index, "params": best.params, "macs": best.macs,
            "score": best.score, "scorer": config.scorer, "budget": config.budget, "samples": config.samples,
            "seed": config.seed})
    return SearchResult(ranked, out, time.perf_counter() - start, len(done) - before,
                        sum(not math.isfinite(c.score) for c in ranked))
