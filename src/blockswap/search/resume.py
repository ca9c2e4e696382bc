"""What a resumed search trusts, and how it checks it.

A search folder can be edited by hand, copied from another machine, or left
behind while its inputs change. Before a rerun keeps any row:

- `inputs.json` (written when the search starts) must still describe its
  inputs: the probe images (`probe_fingerprint`: the bytes of the images the
  probe batch draws, so images added to or changed in a folder are noticed)
  and the `--model` weight file's SHA-256. A difference is refused, named.
- each row must be one of this search's candidates with its own counts, once
  (`trusted_rows`), and where the scorer's total is the sum of its per-block
  values (Fisher), it must be.
- the best rows are scored again (`check_rescored`): a value that differs beyond
  floating-point noise means the folder was edited or made with other code or
  data, and is refused with the row's index.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..data.cifar import ImageSet
from ..data.imagefolder import FolderSplit
from ..scoring.scorer import Score, scorer_info
from ..space.genotype import Genotype
from ..util.errors import BlockSwapError
from ..util.rundir import file_digest, read_json, write_json_atomic
from ..weights.resnet_import import is_weight_file
from .candidates import Candidate, read_candidates

__all__ = ["INPUTS_FILE", "RESCORE_CHECKS", "RESCORE_TOLERANCE", "search_inputs", "check_inputs", "trusted_rows",
           "check_rescored", "same_score"]

INPUTS_FILE = "inputs.json"
RESCORE_CHECKS = 2  # the best whole-batch rows (and the best screened one) scored again on a resume
RESCORE_TOLERANCE = 1e-4  # relative: threads and CPUs move a score by far less; an edit by far more

_FRESH = "use a fresh --out directory"


def search_inputs(images: ImageSet | FolderSplit | None, batch_size: int, seed: int, model: str) -> dict[str, Any]:
    """The fingerprint of a search's inputs: its probe images (None for the embedded sample) and --model file."""
    return {"probe_images_sha256": None if images is None else images.probe_fingerprint(batch_size, seed),
            "model_sha256": file_digest(model, "sha256") if is_weight_file(model) else None}


def check_inputs(out: Path, inputs: dict[str, Any], data_dir: str | None, model: str, latency_file: str) -> None:
    """Record `inputs` (and the SHA-256 of the folder's latency table, if it has one) in a new search folder, or
    refuse a folder whose recorded inputs differ, naming which."""
    path, table = out / INPUTS_FILE, out / latency_file
    inputs = {**inputs, "latency_sha256": file_digest(table, "sha256") if table.exists() else None}
    if not path.exists():
        write_json_atomic(path, inputs)
        return
    saved = read_json(path, "search inputs record")
    if not isinstance(saved, dict):
        raise BlockSwapError(f"{path} is not a search inputs record; {_FRESH}")
    if saved.get("latency_sha256", inputs["latency_sha256"]) != inputs["latency_sha256"]:
        raise BlockSwapError(f"{table} is not the latency table this search drew its candidates with (it was "
                             f"edited or replaced); restore it or {_FRESH}")
    if saved.get("model_sha256") != inputs["model_sha256"]:
        raise BlockSwapError(f"--model {model} is not the file {out} was searched with (SHA-256 "
                             f"{str(saved.get('model_sha256'))[:12]} -> {str(inputs['model_sha256'])[:12]}); "
                             f"restore that file or {_FRESH}")
    if saved.get("probe_images_sha256") != inputs["probe_images_sha256"]:
        raise BlockSwapError(f"the probe images of {data_dir} differ from those {path} records (images were "
                             f"added, removed or changed since, or that file was edited); restore them or {_FRESH}")


def same_score(a: float | None, b: float | None) -> bool:
    """Whether two recorded scores are the same value (NaN the same as NaN, as the file writes both alike)."""
    return a == b or (a is not None and b is not None and math.isnan(a) and math.isnan(b))


def _finite(c: Candidate) -> Candidate | None:
    """`c` without the scores that are NaN or infinite (so they are computed again); None if nothing is left.

    A screening score is kept, whatever it is, once the candidate has a finite whole-batch score: its screen is over.
    """
    if c.score is not None and not math.isfinite(c.score):
        c = replace(c, score=None, score_per_block=())
    if c.score is None and c.screen_score is not None and not math.isfinite(c.screen_score):
        c = replace(c, screen_score=None, screen_score_per_block=())
    return None if c.score is None and c.screen_score is None else c


def _sums(total: float | None, per_block: tuple[float, ...]) -> bool:
    """Whether a recorded total is the sum of its per-block values (as a scorer that declares so computes it)."""
    if total is None or not per_block or not math.isfinite(total):
        return True
    return math.isclose(total, float(sum(per_block)), rel_tol=1e-12, abs_tol=1e-300)


def trusted_rows(path: Path, genotypes: list[Genotype], latency_ms: list[float] | None,
                 sums_blocks: bool) -> dict[int, Candidate]:
    """The rows of `path` this search can keep: each must be one of its candidates with its own counts.

    A row whose index, genotype, params or MACs do not match the candidate, or
    an index that appears twice, means the file was edited or belongs to
    another search: refused; so is a total that is not the sum of its
    per-block values when `sums_blocks`. A non-finite score is dropped, so it
    is scored again.
    """
    rows: dict[int, Candidate] = {}
    for c in read_candidates(path, genotypes[0].backbone):
        if not 0 <= c.index < len(genotypes) or c.genotype != genotypes[c.index]:
            raise BlockSwapError(f"{path}: row {c.index} does not match this search's candidates; {_FRESH}")
        g, blocks = c.genotype, c.genotype.backbone.num_blocks
        if ((c.params, c.macs) != (g.params(), g.macs())
                or c.latency_ms != (None if latency_ms is None else latency_ms[c.index])
                or (c.score is not None and len(c.score_per_block) not in (0, blocks))
                or (c.screen_score is not None and len(c.screen_score_per_block) not in (0, blocks))):
            raise BlockSwapError(f"{path}: row {c.index} has params, MACs, latency or per-block scores that its "
                                 f"genotype does not give (edited by hand?); {_FRESH}")
        if sums_blocks and not (_sums(c.score, c.score_per_block)
                                and _sums(c.screen_score, c.screen_score_per_block)):
            raise BlockSwapError(f"{path}: row {c.index} has a score that is not the sum of its per-block scores "
                                 f"(edited by hand?); {_FRESH}")
        before = rows.get(c.index)
        if before is not None and not (before.score is None and c.score is not None
                                       and same_score(before.screen_score, c.screen_score)):
            raise BlockSwapError(f"{path}: candidate {c.index} appears twice; {_FRESH}")
        rows[c.index] = c  # a screened row, then the same row re-scored: the later line completes the earlier
    kept = {i: _finite(c) for i, c in rows.items()}
    return {i: c for i, c in kept.items() if c is not None}


def sums_blocks(scorer: Any, inits: int) -> bool:
    """Whether this search's totals must equal the sum of their per-block values: the scorer declares it, and
    there is one initialisation (an average over several is taken of totals and of blocks apart)."""
    return inits == 1 and scorer_info(scorer).sums_blocks


def _best(rows: list[Candidate], key: Callable[[Candidate], float | None], n: int) -> list[Candidate]:
    finite = [c for c in rows if key(c) is not None and math.isfinite(key(c))]  # type: ignore[arg-type]
    return sorted(finite, key=lambda c: (-key(c), c.index))[:n]  # type: ignore[operator]


def check_rescored(done: dict[int, Candidate], score: Callable[[int, bool], Score], out: Path) -> None:
    """Score the best `RESCORE_CHECKS` whole-batch rows and the best screened-only row again with
    `score(index, screen)` (on the screening slice, else the whole batch); refuse the folder when one differs."""
    rows = list(done.values())
    checks = [(c, c.score, False) for c in _best(rows, lambda c: c.score, RESCORE_CHECKS)]
    screened = [c for c in rows if c.score is None]
    checks += [(c, c.screen_score, True) for c in _best(screened, lambda c: c.screen_score, 1)]
    for candidate, recorded, screen in checks:
        again = score(candidate.index, screen).total
        if not math.isclose(again, recorded, rel_tol=RESCORE_TOLERANCE, abs_tol=1e-30):  # type: ignore[arg-type]
            what = "screening score" if screen else "score"
            raise BlockSwapError(f"{out / 'candidates.csv'}: row {candidate.index}'s {what} {recorded:.6g} is not "
                                 f"what it scores again ({again:.6g}); the folder was edited or made with other code "
                                 f"or data: {_FRESH}")
