"""The BlockSwap search: sample budget-feasible genotypes, score each, keep the best.

Every candidate is built with its own seed (derived from the search seed and its
index) and scored on one seeded minibatch shared by all candidates. The
published code draws a new shuffled batch per candidate and sets no seed; we fix
both so a search is reproducible and an interrupted one can resume.

Results stream to `candidates.csv` (one flushed row per scored candidate), so an
interrupted search loses nothing: rerunning it with the same output directory
and settings scores only the candidates still missing.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .blocks import DEFAULT_PALETTE, Palette
from .budget import sample_genotypes
from .data import ImageSet, load_cifar10, load_embedded_sample
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
    scorer: str = "reference"  # a name registered in blockswap.scoring.SCORERS

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

    def to_row(self) -> dict[str, str]:
        return {
            "index": str(self.index),
            "genotype": " ".join(self.genotype.blocks),
            "params": str(self.params),
            "macs": str(self.macs),
            "fisher": repr(self.fisher),
            "fisher_per_block": " ".join(repr(v) for v in self.fisher_per_block),
        }


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


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _prepare_out_dir(out: Path, config: SearchConfig, genotypes: list[Genotype]) -> dict[int, Candidate]:
    """Create the output folder or check it belongs to this search; return rows already scored."""
    out.mkdir(parents=True, exist_ok=True)
    config_path, csv_path = out / "search.json", out / "candidates.csv"
    wanted = asdict(config)
    if config_path.exists():
        saved = json.loads(config_path.read_text())
        diff = {k: (saved.get(k), v) for k, v in wanted.items() if saved.get(k) != v}
        if diff:
            changes = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise BlockSwapError(f"{out} holds a different search ({changes}); use a fresh --out directory")
    else:
        if csv_path.exists():
            raise BlockSwapError(f"{csv_path} exists but {config_path} does not; use a fresh --out directory")
        _write_atomic(config_path, json.dumps(wanted, indent=2) + "\n")
    done: dict[int, Candidate] = {}
    if csv_path.exists():
        for c in read_candidates(csv_path, genotypes[0].backbone):
            if not 0 <= c.index < len(genotypes) or c.genotype != genotypes[c.index]:
                raise BlockSwapError(f"{csv_path}: row {c.index} does not match this search's candidates")
            done[c.index] = c
    _write_candidates(csv_path, [done[i] for i in sorted(done)])
    return done


def _write_candidates(path: Path, rows: Iterable[Candidate]) -> None:
    buf = [",".join(CSV_FIELDS)]
    for c in rows:
        r = c.to_row()
        buf.append(",".join(r[k] for k in CSV_FIELDS))
    _write_atomic(path, "\n".join(buf) + "\n")


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


def run_search(
    config: SearchConfig,
    out_dir: str | Path,
    palette: Palette = DEFAULT_PALETTE,
    device: str | torch.device = "cpu",
    progress: bool = True,
    scorer: Scorer | None = None,
    on_scored: Callable[[Candidate], None] | None = None,
) -> SearchResult:
    """Sample, score and rank `config.samples` candidates, streaming rows to `out_dir/candidates.csv`.

    Writes `best.json` (the max-Fisher genotype with params, macs, fisher) at the end.
    Rerunning with the same settings and folder resumes an interrupted search.
    """
    start = time.perf_counter()
    backbone = config.backbone()
    scorer = scorer or make_scorer(config.scorer)
    genotypes = sample_genotypes(backbone, config.budget, config.samples, config.tolerance, config.seed, palette)
    out = Path(out_dir)
    done = _prepare_out_dir(out, config, genotypes)
    todo = [i for i in range(len(genotypes)) if i not in done]
    if todo:
        x, y = probe_data(config.data_dir).probe_batch(config.batch_size, config.seed)
        batch = (x.to(device), y.to(device))
    bar = tqdm(total=len(genotypes), initial=len(done), desc="scoring candidates", unit="cand",
               disable=not progress, dynamic_ncols=True)
    with (out / "candidates.csv").open("a", newline="") as f, bar:
        for i in todo:
            g = genotypes[i]
            score = score_genotype(g, i, config.seed, batch, scorer, palette)
            cand = Candidate(i, g, g.params(palette), g.macs(palette), score.total, score.per_block)
            row = cand.to_row()
            f.write(",".join(row[k] for k in CSV_FIELDS) + "\n")
            f.flush()
            done[i] = cand
            bar.update(1)
            if on_scored is not None:
                on_scored(cand)
    ranked = sorted(done.values(), key=lambda c: (-c.fisher, c.index))
    best = ranked[0]
    summary = {**best.genotype.to_dict(), "index": best.index, "params": best.params, "macs": best.macs,
               "fisher": best.fisher, "budget": config.budget, "samples": config.samples, "seed": config.seed}
    _write_atomic(out / "best.json", json.dumps(summary, indent=2) + "\n")
    return SearchResult(ranked, out, time.perf_counter() - start, len(todo))
