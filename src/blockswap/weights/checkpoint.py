"""Weight files: one dict holding the genotype with the state dict, written atomically.

Every `.pt` a training run writes (`checkpoint.pt`, `best.pt`, `last.pt`) is a
dict with at least `genotype` (the `Genotype.to_dict()` form) and `state_dict`,
so a teacher or an evaluated model is rebuilt from the file alone. A bare state
dict (e.g. from another training script) loads too when the architecture is
given. Files load with `weights_only=True`: they hold tensors and plain values.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
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


def _plain(e: BaseException) -> str:
    """An exception as one short plain line: its type and text without ANSI escapes or line breaks."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    return f"{type(e).__name__}: {' '.join(text.split())[:200]}"


def _is_torchscript(path: Path) -> bool:
    """Whether `path` is a TorchScript archive: a zip whose members include the scripted code."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(name.split("/", 2)[1:2] == ["code"] or name.endswith("/constants.pkl") for name in names)


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The dict stored in a weight file."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; name a weight file in it (a run's last.pt or best.pt)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if _is_torchscript(path):
        raise CheckpointError(f"{path} is a TorchScript export (as `blockswap export` writes), not a weight file; "
                              "use the weight file it was exported from, or run it with torch.jit.load")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on the file's format: the one line below says it
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e):
            raise CheckpointError(f"{path} holds a pickled Python object (a whole module, saved with "
                                  "torch.save(model)), which is not loaded because unpickling can run code; save "
                                  "the weights instead: torch.save(model.state_dict(), path)") from None
        raise CheckpointError(f"cannot read {path} as a weight file (it is not what torch.save writes)") from None
    except Exception as e:  # noqa: BLE001 - torch.load raises many types on a file that is not a weight file
        raise CheckpointError(f"cannot read {path} as a weight file ({_plain(e)})") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} holds a {type(payload).__name__}, expected a dict of weights")
    return payload
