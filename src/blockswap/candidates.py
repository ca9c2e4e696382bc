"""Search rows: one scored candidate each, and the candidates.csv file that holds them.

Columns: index, genotype (block names separated by spaces), params, macs,
score, score_per_block (space-separated). Floats are written with `repr`, so
they read back bit for bit. Files of earlier versions, whose score columns
were called fisher and fisher_per_block, read the same.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .backbones import Backbone
from .errors import BlockSwapError
from .genotype import Genotype
from .outdir import write_text_atomic

__all__ = ["CSV_FIELDS", "Candidate", "read_candidates", "write_candidates"]

CSV_FIELDS = ["index", "genotype", "params", "macs", "score", "score_per_block"]
_EARLIER_NAMES = {"fisher": "score", "fisher_per_block": "score_per_block"}


@dataclass(frozen=True)
class Candidate:
    """One scored row of a search."""

    index: int
    genotype: Genotype
    params: int
    macs: int
    score: float
    score_per_block: tuple[float, ...] = field(default=())

    def csv_line(self) -> str:
        """This candidate as one candidates.csv line (CSV_FIELDS order, no newline); floats round-trip exactly."""
        per_block = " ".join(repr(v) for v in self.score_per_block)
        genotype = " ".join(self.genotype.blocks)
        return f"{self.index},{genotype},{self.params},{self.macs},{self.score!r},{per_block}"


def read_candidates(path: str | Path, backbone: Backbone) -> list[Candidate]:
    """Rows of a candidates.csv; a half-written last line (from an interruption) is ignored."""
    path = Path(path)
    text = path.read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    out = []
    for row in csv.DictReader(text.splitlines()):
        row = {_EARLIER_NAMES.get(k, k): v for k, v in row.items()}
        try:
            out.append(
                Candidate(
                    int(row["index"]),
                    Genotype(backbone, tuple(row["genotype"].split())),
                    int(row["params"]),
                    int(row["macs"]),
                    float(row["score"]),
                    tuple(float(v) for v in row["score_per_block"].split()),
                )
            )
        except (KeyError, ValueError, TypeError, AttributeError) as e:
            raise BlockSwapError(f"{path}: malformed candidate row {row!r} ({e})") from None
    return out


def write_candidates(path: Path, rows: Iterable[Candidate]) -> None:
    """Replace `path` with a header and these rows, atomically."""
    lines = [",".join(CSV_FIELDS), *(c.csv_line() for c in rows)]
    write_text_atomic(path, "\n".join(lines) + "\n")
