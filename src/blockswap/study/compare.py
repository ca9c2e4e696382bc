"""The comparison (paper Tables 2 and 6, Fig. 3): BlockSwap's pick against the other ways to reach a budget.

SKELETON: the config below is the contract; the rest is to be written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist

from ..util.options import check_fields, comma_separated, from_record, non_negative_int, option, positive_int
from .config import CohortConfig

__all__ = ["CompareConfig", "run_compare", "write_compare_report"]


@dataclass(kw_only=True)
class CompareConfig(CohortConfig):
    """A comparison study at one or more budgets; saved as config.json."""

    budgets: list[int] = field(metadata=option(
        "comma-separated parameter budgets, e.g. 200k,400k,800k", parse=comma_separated, metavar="BUDGETS"))
    samples: int = field(default=1000, metadata=option(
        "candidates BlockSwap's search scores at each budget (its pick is trained)", check=positive_int))
    random: int = field(default=1, metadata=option(
        "random genotypes of each budget trained (Table 6's Random)", check=non_negative_int))
    scaled: list[str] | None = field(default=None, metadata=option(
        "comma-separated registered models trained as depth/width-scaled all-Conv students (default: the paper's "
        "depth-, width- and depth+width-scaled WRNs of a WRN teacher; none for other teachers)",
        parse=comma_separated, metavar="MODELS"))
    types: list[str] = field(default_factory=lambda: ["MBConv6", "DARTS"], metadata=option(
        "comma-separated block types trained as single-type students whatever their size (the palette's single "
        "types inside a budget window are trained too)", parse=comma_separated, metavar="TYPES"))
    prune: list[str] = field(default_factory=lambda: ["snip", "l1"], metadata=option(
        "comma-separated pruning methods applied to the teacher at each budget", parse=comma_separated,
        metavar="METHODS"))

    def __post_init__(self) -> None:
        check_fields(self)
        self.check_cohort()

    @classmethod
    def from_dict(cls, data: Any) -> CompareConfig:
        return from_record(cls, data, "comparison study config")


def run_compare(config: CompareConfig, out_dir: str | Path, workers: int = 1, device: str | torch.device = "cpu",
                progress: bool = True, group: torch_dist.ProcessGroup | None = None) -> dict[str, Any]:
    """Train the teacher (unless --teacher names one), search each budget, train every student into `out_dir`
    (skipping what is done), then write the report; returns compare.json's content ({} on ranks other than 0)."""
    raise NotImplementedError


def write_compare_report(out_dir: str | Path) -> dict[str, Any]:
    """results.csv, compare.json, report.md and compare.png of a finished comparison study folder."""
    raise NotImplementedError
