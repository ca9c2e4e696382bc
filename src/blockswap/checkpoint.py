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

from .errors import BlockSwapError
from .genotype import Genotype
from .networks import BlockNetwork
from .outdir import atomic_file

__all__ = ["CheckpointError", "save_atomic", "read_checkpoint", "load_network"]


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


def _describe(genotype: Genotype) -> str:
    kinds = set(genotype.blocks)
    blocks = f"all {genotype.blocks[0]}" if len(kinds) == 1 else "blocks " + " ".join(genotype.blocks)
    return f"{genotype.backbone.name} ({blocks})"


def load_network(
    path: str | Path,
    expected: Genotype | None = None,
    map_location: str | torch.device = "cpu",
) -> tuple[BlockNetwork, Genotype, dict[str, Any]]:
    """The network stored in `path`, its genotype and the file's dict.

    When the file records its genotype and `expected` is given, they must be
    equal. A bare state dict (or a common wrapper of one) is built as
    `expected`, else as the BasicBlock ResNet its shapes show
    (`blockswap.resnet_import`), named after the file.
    """
    payload = read_checkpoint(path, map_location)
    if "genotype" in payload and "state_dict" in payload:
        genotype = Genotype.from_dict(payload["genotype"])
        if expected is not None and expected != genotype:
            raise CheckpointError(
                f"{path} holds {_describe(genotype)}, not the expected {_describe(expected)}; "
                "pass the matching --teacher-model, or leave it out to use the checkpoint's architecture"
            )
        state = payload["state_dict"]
    else:
        from .resnet_import import genotype_of_weights, normalize_state_dict

        try:
            state = normalize_state_dict(payload)
            genotype = expected or genotype_of_weights(state, name=Path(path).stem)
        except BlockSwapError as e:
            raise CheckpointError(f"{path} does not record its architecture and is not a BasicBlock ResNet whose "
                                  f"layout its weights show ({e}); name it (e.g. --teacher-model wrn-40-2)") from None
    model = genotype.build()
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        summary = " ".join(str(e).split())
        raise CheckpointError(f"{path} does not fit {_describe(genotype)}: {summary[:400]}") from None
    return model, genotype, payload
