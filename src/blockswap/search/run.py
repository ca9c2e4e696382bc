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
(`blockswap.search.pool`), and sharding over a `torch.distributed` group
(`torchrun`): rank r scores the candidates with index % world_size == r,
streams them to `candidates.rank{r}.csv`, and rank 0 gathers every row and
writes the merged `candidates.csv` and `best.json`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch
import torch.distributed as dist
from torch import Tensor
from tqdm.auto import tqdm

from ..data import probe_images
from ..data.imagefolder import check_classes
from ..scoring.proxies import PROXIES  # noqa: F401  (registers the proxies, so a search can name them)
from ..scoring.scorer import make_scorer, scorer_names
from ..space.backbones import Backbone
from ..space.blocks import DEFAULT_PALETTE, PALETTE_NAMES, Palette, block_type
from ..space.genotype import Genotype
from ..space.latency import LatencyTable, latency_table, parse_ms
from ..space.sampling import DEFAULT_TOLERANCE, sample_genotypes
from ..util.counts import format_count, parse_budget, parse_count
from ..util.distributed import on_rank0, rank0_first
from ..util.errors import BlockSwapError
from ..util.options import (
    check_fields,
    comma_separated,
    fraction,
    fraction_or_one,
    from_record,
    json_object,
    option,
    positive_int,
    recorded_form,
    seed_int,
)
from ..util.rundir import check_recorded, record, write_json_atomic
from ..weights.teachers import model_backbone
from .candidates import CSV_FIELDS, Candidate, write_candidates
from .pool import Job, ScorerSpec, Scoring, first_images, score_genotype
from .resume import check_inputs, check_rescored, same_score, search_inputs, sums_blocks, trusted_rows

__all__ = ["SearchConfig", "SearchResult", "run_search", "screen_key", "parse_mac_budget"]


LATENCY_FILE = "latency.json"  # the latency table a search with a latency budget drew its candidates with
DEFAULT_SCREEN_BATCH = 16  # images; see benchmarks/README.md: the full pick ranked 1st of 200 at 200K, 400K, 800K
DEFAULT_RESCORE_FRACTION = 0.05  # see benchmarks/README.md: the worst rank of the full pick in the screen order


def parse_mac_budget(text: str | int | float) -> int:
    """A MAC budget: `parse_count` with "MAC budget" in its errors."""
    return parse_count(text, "MAC budget")


@dataclass
class SearchConfig:
    """Everything that determines a search's candidates and scores; saved as search.json."""

    budget: int | None = field(default=None, metadata=option(
        "parameter budget, e.g. 400k, 1.6M, 400000; give at least one of --budget, --budget-macs and --budget-ms "
        "(every one given must hold)", parse=parse_budget))
    budget_macs: int | None = field(default=None, metadata=option(
        "MAC budget: multiply-accumulates for one image at the network's input size, e.g. 90M",
        parse=parse_mac_budget))
    budget_ms: float | None = field(default=None, metadata=option(
        "latency budget in milliseconds per batch of --latency-batch on the search's --device, as a table of "
        "block timings measured there predicts (blockswap latency; cached, copied to the output folder)",
        parse=parse_ms))
    latency_batch: int = field(default=1, metadata=option("batch size the latency budget is measured at",
                                                          check=positive_int))
    latency_threads: int = field(default=1, metadata=option("CPU threads the latency budget is measured with",
                                                            check=positive_int))
    model: str = field(default="wrn-40-2", metadata=option(
        "the teacher whose blocks are swapped: a registered backbone (wrn-D-K, resnet18 to resnet152, "
        "wide_resnet50_2, resnext50_32x4d, ..., or a plugin's) or the user's ResNet weight file "
        "(.pt/.pth/.bin/.ckpt; BasicBlock or Bottleneck, layout read from its shapes)"))
    num_classes: int | None = field(default=None, metadata=option(
        "classes of the network's head; default: the model's own (10 for wrn-D-K, 1000 for the ImageNet ResNets)",
        check=positive_int))
    samples: int = field(default=1000, metadata=option("candidates to score; the paper's N", check=positive_int))
    batch_size: int = field(default=128, metadata=option("probe minibatch size (the training batch, as in the paper)",
                                                         check=positive_int))
    tolerance: float = field(default=DEFAULT_TOLERANCE,
                             metadata=option("accept |cost - budget| < tolerance * budget for each budget given (the "
                                             "published window)", check=fraction))
    seed: int = field(default=0, metadata=option("fixes the candidates, their initial weights and the probe batch",
                                                 check=seed_int))
    data_dir: str | None = field(default=None, metadata=option(
        "CIFAR-10 folder (downloaded there if missing) or an image folder (train/<class>/*, val/<class>/*), probed "
        "at the network's input size; default: the embedded 1,000-image CIFAR-10 sample"))
    scorer: str = field(default="fast", metadata=option(
        "a registered scorer: fast (Fisher potential; also named fisher), reference (plain fp32 Fisher), or a proxy "
        "of the ranking study (blockswap.scoring.proxies; trained takes --scorer-setting proxy=NAME steps=K)",
        choices=scorer_names))
    scorer_settings: dict[str, Any] = field(default_factory=dict, metadata=option(
        "keyword settings of the scorer, as JSON values", cli=False, check=json_object))
    screen: bool = field(default=True, metadata=option(
        "score every candidate on the whole probe batch, as the paper does, instead of screening on a slice first"))
    screen_batch: int = field(default=DEFAULT_SCREEN_BATCH, metadata=option(
        "screening slice: the first N images of the probe batch (no screening when not smaller than --batch-size)",
        check=positive_int))
    rescore_fraction: float = field(default=DEFAULT_RESCORE_FRACTION, metadata=option(
        "fraction of the candidates, best screened first, re-scored on the whole probe batch", check=fraction_or_one))
    inits: int = field(default=1, metadata=option(
        "initialisations scored per candidate and averaged (mean of the log score for positive scorers)",
        check=positive_int))
    palette: list[str] | None = field(default=None, metadata=option(
        "comma-separated block types a slot may take; default: the 23 published types", parse=comma_separated,
        metavar="NAMES"))

    def __post_init__(self) -> None:
        """Refuse settings a search cannot run with, naming the first bad one."""
        if self.budget is None and self.budget_macs is None and self.budget_ms is None:
            raise BlockSwapError("give at least one budget: parameters (--budget), MACs (--budget-macs) or latency "
                                 "in milliseconds (--budget-ms)")
        self.budget = None if self.budget is None else parse_budget(self.budget)
        self.budget_macs = None if self.budget_macs is None else parse_mac_budget(self.budget_macs)
        self.budget_ms = None if self.budget_ms is None else parse_ms(self.budget_ms)
        check_fields(self)
        # The names are recorded even for the default, so a folder resumes to the palette it was searched with
        # whatever the default becomes (a folder that recorded null searched the 23 published types).
        self.palette = list(PALETTE_NAMES if self.palette is None else self.palette)
        self.palette_types()
        self.backbone()

    def budgets(self) -> str:
        """The budgets as a user reads them: "400.0K params, 90.00M MACs, 4 ms at batch 1"."""
        parts = [f"{format_count(self.budget)} params"] if self.budget is not None else []
        parts += [f"{format_count(self.budget_macs)} MACs"] if self.budget_macs is not None else []
        parts += [f"{self.budget_ms:g} ms at batch {self.latency_batch}"] if self.budget_ms is not None else []
        return ", ".join(parts)

    def backbone(self) -> Backbone:
        """The teacher's skeleton: the model `model` names, with `num_classes` classes where given."""
        return model_backbone(self.model, self.num_classes)

    @property
    def screens(self) -> bool:
        """Whether this search screens: asked to, on a slice smaller than the probe batch."""
        return self.screen and self.screen_batch < self.batch_size

    def rescored(self) -> int:
        """How many candidates, best screened first, a screened search re-scores on the whole batch."""
        return max(1, math.ceil(self.rescore_fraction * self.samples - 1e-9))

    def palette_types(self) -> Palette:
        """The palette a slot draws from: the named registered types, or the 23 published ones."""
        return self.named_palette(self.palette)

    @staticmethod
    def named_palette(names: list[str] | None) -> Palette:
        """The palette of these registered types (the 23 published ones for None); BlockSwapError naming a bad one."""
        if names is None:
            return DEFAULT_PALETTE
        try:
            return Palette(block_type(name) for name in names)
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
    screened_now: int = 0  # candidates scored on the screening slice by this call

    @property
    def best(self) -> Candidate:
        return self.candidates[0]


def _part_path(out: Path, rank: int) -> Path:
    return out / f"candidates.rank{rank}.csv"


def _normalized(saved: Any) -> dict[str, Any]:
    if isinstance(saved, dict) and "screen" not in saved:  # recorded before screening existed: unscreened
        saved = {**saved, "screen": False}
    return recorded_form(SearchConfig, saved)


def _prepare_out_dir(out: Path, config: SearchConfig, genotypes: list[Genotype], latency: LatencyTable | None,
                     predicted: list[float] | None, inputs: dict[str, Any], sums: bool) -> dict[int, Candidate]:
    """Create the output folder or check it belongs to this search and its inputs; return the rows it trusts
    (`blockswap.search.resume`).

    The latency table (if any) is written before search.json, so a recorded
    search always finds the table its candidates were drawn with. Rows left in
    per-rank part files by an interrupted sharded search are merged into
    `candidates.csv`, so a rerun with any number of ranks or workers resumes.
    """
    csv_path = out / "candidates.csv"
    if not check_recorded(out, "search.json", asdict(config), _normalized, "search", "use a fresh --out directory",
                          own=(LATENCY_FILE,)):
        if latency is not None and not (out / LATENCY_FILE).exists():
            latency.save(out / LATENCY_FILE)
        record(out, "search.json", asdict(config))
    check_inputs(out, inputs, config.data_dir, config.model, LATENCY_FILE)
    parts = sorted(out.glob("candidates.rank*.csv"))
    done: dict[int, Candidate] = {}
    for path in [csv_path, *parts]:
        if path.exists():
            for index, row in trusted_rows(path, genotypes, predicted, sums).items():
                known = done.get(index)
                if known is not None and not same_score(known.screen_score, row.screen_score):
                    raise BlockSwapError(f"{path}: candidate {index} differs from its row in another file")
                if known is None or known.score is None:
                    done[index] = row
    write_candidates(csv_path, [done[i] for i in sorted(done)])  # header first, so a cut search resumes
    for path in parts:
        path.unlink()
    return done


def _latency_table(config: SearchConfig, out: Path, device: torch.device, progress: bool) -> LatencyTable | None:
    """The table a latency budget is drawn with: the one the output folder holds, else the cached or measured one."""
    if config.budget_ms is None:
        return None
    backbone, path = config.backbone(), out / LATENCY_FILE
    if not path.is_file():
        return latency_table(backbone, config.palette_types().names, device, config.latency_batch,
                             config.latency_threads, progress=progress)[0]
    table = LatencyTable.load(path)
    if (table.backbone, table.batch_size, table.threads) != (backbone, config.latency_batch, config.latency_threads):
        raise BlockSwapError(f"{path} was measured for another model, batch size or thread count than this search; "
                             "use a fresh --out directory")
    table.matrix(backbone, config.palette_types().names)
    return table


def _best_first(score: float | None, index: int) -> tuple[float, int]:
    """Sort key: highest finite score first, ties by index; missing, NaN and infinite scores last."""
    return (-score if score is not None and math.isfinite(score) else math.inf, index)


def _rank_key(c: Candidate) -> tuple[float, int]:
    """The pick's order: by whole-batch score."""
    return _best_first(c.score, c.index)


def screen_key(c: Candidate) -> tuple[float, int]:
    """The screening order (whose head a screened search re-scores): by screening score."""
    return _best_first(c.screen_score, c.index)


def _score_stage(
    jobs: list[Job],
    scoring: Scoring,
    genotypes: list[Genotype],
    done: dict[int, Candidate],
    stream: TextIO,
    bar: tqdm,
    screen: bool,
    on_scored: Callable[[Candidate], None] | None,
    latency_ms: list[float] | None,
) -> list[Candidate]:
    """Score the jobs, completing each candidate's row with the new score; rows are streamed as they come."""
    new = []
    for i, score in scoring.score(jobs):
        g, known = genotypes[i], done.get(i)
        ms = None if latency_ms is None else latency_ms[i]
        if screen:
            cand = Candidate(i, g, g.params(), g.macs(), None, (), score.total, score.per_block, ms)
        else:
            screened = (known.screen_score, known.screen_score_per_block) if known is not None else (None, ())
            cand = Candidate(i, g, g.params(), g.macs(), score.total, score.per_block, *screened, ms)
        stream.write(cand.csv_line() + "\n")
        stream.flush()
        new.append(cand)
        bar.update(1)
        if on_scored is not None:
            on_scored(cand)
    return new


def _gather(new: list[Candidate], group: dist.ProcessGroup | None) -> list[Candidate]:
    """Every rank's new rows, on every rank."""
    if group is None:
        return new
    shares: list[list[Candidate] | None] = [None] * dist.get_world_size(group)
    dist.all_gather_object(shares, new, group=group)
    return [c for share in shares for c in share or ()]


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
    `config.scorer_settings`. A screened search (`config.screens`) scores every
    candidate on the first `screen_batch` images of the probe batch, then
    re-scores the best screened `rescore_fraction` on the whole batch with the
    same weights; either way the pick is the highest whole-batch score, so it
    is the paper's pick whenever that candidate survives the screen. Writes
    `best.json` at the end. Rerunning with the same settings and folder
    resumes an interrupted search at either stage. `workers` > 1 scores in
    that many spawned processes, which import the loaded plugins (so a user
    scorer or block type must be registered when its module is imported).
    With a `torch.distributed` `group`, this rank scores its share
    (index % size == rank) of each stage and every rank returns the merged
    result; only group rank 0 writes `candidates.csv` and `best.json`.
    Rows are the same whichever way the work is split.
    """
    start = time.perf_counter()
    spec = ScorerSpec(config.scorer, config.scorer_settings,
                      {"data_dir": config.data_dir, "seed": config.seed, "batch_size": config.batch_size})
    scorer = make_scorer(spec.name, spec.settings, spec.context)
    out = Path(out_dir)
    latency = on_rank0(group, lambda: _latency_table(config, out, torch.device(device), progress))
    genotypes = sample_genotypes(config.backbone(), config.budget, config.samples, config.tolerance, config.seed,
                                 config.palette_types(), macs=config.budget_macs, ms=config.budget_ms,
                                 latency=latency)
    predicted = None if latency is None else [latency.predict(g) for g in genotypes]
    rank, world = (dist.get_rank(group), dist.get_world_size(group)) if group is not None else (0, 1)
    # The probe batch first: a search that cannot start (no data, a batch larger than it) leaves no folder behind.
    backbone = config.backbone()
    images = rank0_first(group, lambda: probe_images(config.data_dir, backbone.input_size))
    check_classes(backbone, images, config.data_dir or "the embedded CIFAR-10 sample")
    x, y = images.probe_batch(config.batch_size, config.seed)
    batch: tuple[Tensor, Tensor] = (x.to(device), y.to(device))

    def prepare() -> dict[int, Candidate]:  # rank 0: the folder, its recorded inputs, the rows it trusts
        inputs = search_inputs(None if config.data_dir is None else images, config.batch_size, config.seed,
                               config.model)
        rows = _prepare_out_dir(out, config, genotypes, latency, predicted, inputs, sums_blocks(scorer, config.inits))
        check_rescored(rows, lambda i, screen: score_genotype(
            genotypes[i], i, config.seed, first_images(batch, config.screen_batch) if screen else batch, scorer,
            config.inits), out)
        return rows

    done = on_rank0(group, prepare)
    out.mkdir(parents=True, exist_ok=True)  # for ranks on machines that do not share rank 0's disk
    before = sum(c.score is not None for c in done.values())
    screened_before = sum(c.screen_score is not None for c in done.values())
    mine = [i for i in range(len(genotypes)) if i % world == rank]
    stream_path = out / "candidates.csv" if group is None else _part_path(out, rank)
    names = {name for g in genotypes for name in g.blocks}
    with (Scoring(workers, batch, config.seed, scorer, names, config.inits, spec) as scoring,
          stream_path.open("a", newline="") as stream):
        if stream.tell() == 0:  # a rank's part file starts with the header, so a cut sharded search reads back
            stream.write(",".join(CSV_FIELDS) + "\n")
        finalists = range(len(genotypes))
        if config.screens:
            todo = [(i, genotypes[i], config.screen_batch) for i in mine
                    if i not in done or done[i].screen_score is None]
            with tqdm(total=len(mine), initial=len(mine) - len(todo), desc="screening candidates", unit="cand",
                      disable=not progress, dynamic_ncols=True) as bar:
                new = _score_stage(todo, scoring, genotypes, done, stream, bar, True, on_scored, predicted)
            done.update((c.index, c) for c in _gather(new, group))  # only candidates with no score were screened
            ranked = sorted(done.values(), key=screen_key)
            finalists = sorted(c.index for c in ranked[: config.rescored()])
        mine = [i for i in finalists if i % world == rank]
        todo = [(i, genotypes[i], config.batch_size) for i in mine if i not in done or done[i].score is None]
        desc = "re-scoring the best screened" if config.screens else "scoring candidates"
        with tqdm(total=len(mine), initial=len(mine) - len(todo), desc=desc, unit="cand", disable=not progress,
                  dynamic_ncols=True) as bar:
            new = _score_stage(todo, scoring, genotypes, done, stream, bar, False, on_scored, predicted)
    done.update((c.index, c) for c in _gather(new, group))
    ranked = sorted(done.values(), key=_rank_key)
    if ranked[0].score is None or not math.isfinite(ranked[0].score):
        raise BlockSwapError(f"no candidate has a finite score ({config.scorer}); see {out / 'candidates.csv'}")
    if rank == 0:
        write_candidates(out / "candidates.csv", [done[i] for i in sorted(done)])
        if group is not None:
            for r in range(world):
                _part_path(out, r).unlink(missing_ok=True)
        best = ranked[0]
        write_json_atomic(out / "best.json", {
            **best.genotype.to_dict(), "index": best.index, "params": best.params, "macs": best.macs,
            "latency_ms": best.latency_ms, "score": best.score, "scorer": config.scorer, "budget": config.budget,
            "budget_macs": config.budget_macs, "budget_ms": config.budget_ms, "samples": config.samples,
            "seed": config.seed})
    scored = [c for c in ranked if c.score is not None]
    return SearchResult(ranked, out, time.perf_counter() - start, len(scored) - before,
                        sum(not math.isfinite(c.score) for c in scored),  # type: ignore[arg-type]
                        sum(c.screen_score is not None for c in ranked) - screened_before)
