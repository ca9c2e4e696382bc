"""Why mix block types? (paper section 4.1, Fig. 2): single-type students against random mixed ones at a budget.

SKELETON: the config below is the contract; the rest is to be written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist

from ..util.counts import parse_budget
from ..util.options import check_fields, from_record, option, positive_int
from .config import CohortConfig

__all__ = ["MixingConfig", "run_mixing", "write_mixing_report"]


@dataclass(kw_only=True)
class MixingConfig(CohortConfig):
    """A mixing study: every single-type network inside the budget window and `candidates` random mixed genotypes
    of the budget, all trained with the recipe; saved as config.json."""

    budget: int = field(metadata=option("parameter budget, e.g. 200k", parse=parse_budget))
    candidates: int = field(default=100, metadata=option(
        "random mixed-blocktype students drawn (seeded, uniform over the budget window) and trained",
        check=positive_int))

    def __post_init__(self) -> None:
        self.budget = parse_budget(self.budget)
        check_fields(self)
        self.check_cohort()

    @classmethod
    def from_dict(cls, data: Any) -> MixingConfig:
        return from_record(cls, data, "mixing study config")


def run_mixing(config: MixingConfig, out_dir: str | Path, workers: int = 1, device: str | torch.device = "cpu",
               progress: bool = True, group: torch_dist.ProcessGroup | None = None) -> dict[str, Any]:
    """Train the study's students into `out_dir` (skipping what is done), then write its report; returns
    mixing.json's content ({} on ranks other than 0)."""
    raise NotImplementedError


def write_mixing_report(out_dir: str | Path) -> dict[str, Any]:
    """results.csv, mixing.json, report.md and mixing.png of a finished mixing study folder."""
    raise NotImplementedError
