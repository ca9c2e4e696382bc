"""Where does a cheap block hurt? (paper Appendix B, Figs. 4 and 5): the teacher with one block at a time swapped.

SKELETON: the config below is the contract; the rest is to be written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist

from ..util.options import check_fields, from_record, option
from .config import CohortConfig

__all__ = ["PlacementConfig", "PAPER_G", "run_placement", "write_placement_report", "study_goodbad"]

PAPER_G = "DConv"  # the paper's G(N): grouped + pointwise with one group per channel, i.e. depthwise + pointwise


@dataclass(kw_only=True)
class PlacementConfig(CohortConfig):
    """A placement study: the all-Conv teacher network, and one student per block position with that block alone
    swapped for `type`, all trained with the recipe; saved as config.json."""

    type: str = field(default=PAPER_G, metadata=option(
        f"the block type swapped in, one position at a time (default {PAPER_G}: the paper's G(N), depthwise + "
        "pointwise)"))

    def __post_init__(self) -> None:
        check_fields(self)
        self.check_cohort()

    @classmethod
    def from_dict(cls, data: Any) -> PlacementConfig:
        return from_record(cls, data, "placement study config")


def run_placement(config: PlacementConfig, out_dir: str | Path, workers: int = 1,
                  device: str | torch.device = "cpu", progress: bool = True,
                  group: torch_dist.ProcessGroup | None = None) -> dict[str, Any]:
    """Train the study's students into `out_dir` (skipping what is done), then write its report; returns
    placement.json's content ({} on ranks other than 0)."""
    raise NotImplementedError


def write_placement_report(out_dir: str | Path) -> dict[str, Any]:
    """results.csv, placement.json, report.md and placement.png of a finished placement study folder."""
    raise NotImplementedError


def study_goodbad(study_dir: str | Path, sd: float = 2.0) -> dict[str, Any]:
    """Block types and positions of the "good" and "bad" students of a finished study (error more than `sd`
    standard deviations below / above the mean); writes goodbad.csv, goodbad.md, good.png and bad.png."""
    raise NotImplementedError
