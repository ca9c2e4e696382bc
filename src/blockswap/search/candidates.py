"""Search rows: one scored candidate each, and the candidates.csv file that holds them.

Columns: index, genotype (block names separated by spaces), params, macs,
score and score_per_block (on the full probe batch), screen_score and
screen_score_per_block (on the screening slice of it), and latency_ms (what
the search's latency table predicts; empty without a latency budget). A score not computed is
an empty field: a screened search leaves `score` empty for the candidates it
did not re-score, an unscreened one leaves the screen columns empty. Floats
are written with `repr`, so they read back bit for bit. Files of earlier
versions (columns fisher and fisher_per_block, no screen columns) read the same.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..space.backbones import Backbone
from ..space.genotype import Genotype
from ..util.errors import BlockSwapError
from ..util.rundir import write_text_atomic

__all__ = ["CSV_FIELDS", "Candidate", "read_candidates", "write_candidates"]

CSV_FIELDS = ["index", "genotype", "params", "macs", "score", "score_per_block", "screen_score",
              "screen_score_per_block", "latency_ms"]
_EARLIER_NAMES = {"fisher": "score", "fisher_per_block": "score_per_block"}


def _number(value: float | None) -> str:
    return "" if value is None else repr(value)


def _numbers(values: tuple[float, ...]) -> str:
    return " ".join(repr(v) for v in values)


@dataclass(frozen=True)
class Candidate:
    """One row of a search: a candidate with its full-batch score and/or its screening score."""

    index: int
    genotype: Genotype
    params: int
    macs: int
    score: float | None  # on the full probe batch; None where it was not scored there
    score_per_block: tuple[float, ...] = field(default=())
    screen_score: float | None = None  # on the screening slice; None where the search did not screen
    screen_score_per_block: tuple[float, ...] = field(default=())
    latency_ms: float | None = None  # predicted by the search's latency table; None without a latency budget

    def csv_line(self) -> str:
        """This candidate as one candidates.csv line (CSV_FIELDS order, no newline); floats round-trip exactly."""
        return ",".join([str(self.index), " ".join(self.genotype.blocks), str(self.params), str(self.macs),
                         _number(self.score), _numbers(self.score_per_block), _number(self.screen_score),
                         _numbers(self.screen_score_per_block), _number(self.latency_ms)])


def _optional(text: str | None) -> float | None:
    return None if text is None or text == "" else float(text)


def read_candidates(path: str | Path, backbone: Backbone) -> list[Candidate]:
    """Rows of a candidates.csv in file order; a half-written last line (from an interruption) is ignored."""
    path = Path(path)
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise BlockSwapError(f"{path} is not a candidates table (not text); use a fresh --out directory") from None
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
                    _optional(row["score"]),
                    tuple(float(v) for v in row["score_per_block"].split()),
                    _optional(row.get("screen_score")),
                    tuple(float(v) for v in (row.get("screen_score_per_block") or "").split()),
                    _optional(row.get("latency_ms")),
                )
            )
        except (KeyError, ValueError, TypeError, AttributeError) as e:
            raise BlockSwapError(f"{path}: malformed candidate row {row!r} ({e})") from None
    return out


def write_candidates(path: Path, rows: Iterable[Candidate]) -> None:
    """Replace `path` with a header and these rows, atomically."""
    lines = [",".join(CSV_FIELDS), *(c.csv_line() for c in rows)]
    write_text_atomic(path, "\n".join(lines) + "\n")
