"""Weight files: one dict holding the genotype with the state dict, written atomically.

Every `.pt` a training run writes (`checkpoint.pt`, `best.pt`, `last.pt`) is a
dict with at least `genotype` (the `Genotype.to_dict()` form) and `state_dict`,
so a teacher or an evaluated model is rebuilt from the file alone. A bare state
dict (e.g. from another training script) loads too when the architecture is
given. Files load with `weights_only=True`: they hold tensors and plain values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..util.errors import BlockSwapError
from ..util.rundir import atomic_file

__all__ = ["CheckpointError", "save_atomic", "read_checkpoint"]


class CheckpointError(BlockSwapError):
    """A weight file that is missing, unreadable, or does not fit the architecture asked for."""


def save_atomic(payload: dict[str, Any], path: str | Path) -> None:
    """torch.save through `outdir.atomic_file`: a kill never leaves half a file."""
    with atomic_file(path, "wb") as f:
        torch.save(payload, f)


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The dict stored in a weight file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load raises many types on a file that is not a weight file
        reason = " ".join(str(e).split())[:200]
        raise CheckpointError(f"cannot read {path} as a weight file ({type(e).__name__}: {reason})") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} holds a {type(payload).__name__}, expected a dict of weights")
    return payload
