"""Genotypes: which palette type fills each block slot of a backbone.

A genotype is a small immutable value saved as JSON, e.g.
`{"family": "wrn", "depth": 40, "width": 2, "num_classes": 10, "blocks": [...]}`.
The published pytorch-blockswap CSV format (columns `,index,convs,fisher`, with
`convs` a Python-literal list of names) is read too, as WRN-40-2 / CIFAR-10
unless another backbone is given.
"""

from __future__ import annotations

import ast
import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .blocks import DEFAULT_PALETTE, Palette
from .errors import BlockSwapError
from .networks import Backbone, BlockNetwork, build_network

__all__ = ["Genotype", "GenotypeError", "load_genotype"]


class GenotypeError(BlockSwapError):
    """A genotype that cannot be read or does not fit its backbone."""


@dataclass(frozen=True)
class Genotype:
    """A backbone plus one block-type name per block slot."""

    backbone: Backbone
    blocks: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", tuple(self.blocks))

    def validate(self, palette: Palette = DEFAULT_PALETTE) -> Genotype:
        """Check length, names and buildability; raise GenotypeError naming the problem."""
        shapes = self.backbone.block_shapes()
        if len(self.blocks) != len(shapes):
            raise GenotypeError(
                f"{self.backbone.name} has {len(shapes)} blocks but the genotype lists {len(self.blocks)}"
            )
        for i, (name, shape) in enumerate(zip(self.blocks, shapes)):
            if name not in palette:
                raise GenotypeError(
                    f"unknown block type {name!r} at position {i}; valid choices: {', '.join(palette.names)}"
                )
            if not palette[name].is_valid(shape.c_in, shape.c_out, shape.stride):
                raise GenotypeError(
                    f"block type {name!r} at position {i} cannot be built at {shape.c_in}->{shape.c_out} channels"
                )
        return self

    @classmethod
    def uniform(cls, backbone: Backbone, block: str = "Conv") -> Genotype:
        """Every slot the same type (the teacher is `uniform(backbone, "Conv")`)."""
        return cls(backbone, (block,) * backbone.num_blocks)

    def params(self, palette: Palette = DEFAULT_PALETTE) -> int:
        """Closed-form trainable parameter count of the whole network."""
        post = self.backbone.post_activation
        shapes = self.backbone.block_shapes()
        return self.backbone.fixed_params() + sum(
            palette[n].params(s.c_in, s.c_out, s.stride, post) for n, s in zip(self.blocks, shapes)
        )

    def macs(self, palette: Palette = DEFAULT_PALETTE) -> int:
        """Closed-form multiply-accumulates of convs and the Linear layer for one input image."""
        return self.backbone.fixed_macs() + sum(
            palette[n].macs(s.c_in, s.c_out, s.stride, s.size_in)
            for n, s in zip(self.blocks, self.backbone.block_shapes())
        )

    def build(self, palette: Palette = DEFAULT_PALETTE) -> BlockNetwork:
        """A freshly initialised network for this genotype."""
        self.validate(palette)
        return build_network(self.backbone, self.blocks, palette)

    def to_dict(self) -> dict[str, Any]:
        b = self.backbone
        return {"family": b.family, "depth": b.depth, "width": b.width, "num_classes": b.num_classes,
                "blocks": list(self.blocks)}

    @classmethod
    def from_dict(cls, data: Any, palette: Palette = DEFAULT_PALETTE) -> Genotype:
        """Parse the JSON form; raise GenotypeError naming a missing or wrong field."""
        if not isinstance(data, dict):
            raise GenotypeError("a genotype must be a JSON object with family, depth, width, num_classes, blocks")
        missing = [k for k in ("family", "depth", "blocks") if k not in data]
        if missing:
            raise GenotypeError(f"genotype is missing field(s): {', '.join(missing)}")
        blocks = data["blocks"]
        if not isinstance(blocks, list) or not all(isinstance(b, str) for b in blocks):
            raise GenotypeError("genotype field 'blocks' must be a list of block type names")
        family = str(data["family"])
        try:
            backbone = Backbone(
                family,
                int(data["depth"]),
                int(data.get("width", 1)),
                int(data.get("num_classes", 10 if family == "wrn" else 1000)),
            )
        except (TypeError, ValueError) as e:
            raise GenotypeError(f"invalid backbone in genotype: {e}") from None
        return cls(backbone, tuple(blocks)).validate(palette)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    def __str__(self) -> str:
        return f"{self.backbone.name}[{' '.join(self.blocks)}]"


def _read_csv(path: Path, row: int) -> Sequence[str]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "convs" not in rows[0]:
        raise GenotypeError(f"{path}: a genotype CSV needs a 'convs' column holding a list of block names")
    if not 0 <= row < len(rows):
        raise GenotypeError(f"{path}: row {row} requested but the file has {len(rows)} data rows")
    try:
        blocks = ast.literal_eval(rows[row]["convs"])
    except (ValueError, SyntaxError):
        raise GenotypeError(f"{path}: row {row} 'convs' is not a Python list literal: {rows[row]['convs']!r}") from None
    if not isinstance(blocks, (list, tuple)) or not all(isinstance(b, str) for b in blocks):
        raise GenotypeError(f"{path}: row {row} 'convs' must be a list of block names")
    return blocks


def load_genotype(
    path: str | Path,
    backbone: Backbone | None = None,
    row: int = 0,
    palette: Palette = DEFAULT_PALETTE,
) -> Genotype:
    """Read a genotype from JSON or the published CSV format (WRN-40-2 unless `backbone` is given).

    For a CSV with several rows, `row` picks one (default the first data row).
    """
    path = Path(path)
    if not path.is_file():
        raise GenotypeError(f"genotype file not found: {path}")
    if path.suffix.lower() == ".csv":
        blocks = _read_csv(path, row)
        return Genotype(backbone or Backbone.from_name("wrn-40-2"), tuple(blocks)).validate(palette)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        expected = "expected a genotype JSON or a published-format CSV"
        raise GenotypeError(f"{path}: not valid JSON ({e}); {expected}") from None
    genotype = Genotype.from_dict(data, palette)
    if backbone is not None and backbone != genotype.backbone:
        raise GenotypeError(f"{path}: genotype is for {genotype.backbone.name}, expected {backbone.name}")
    return genotype
