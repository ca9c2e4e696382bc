"""Genotypes: which registered block type fills each block slot of a backbone.

A genotype is a small immutable value saved as JSON, e.g.
`{"model": "wrn-40-2", "num_classes": 10, "blocks": [...]}`; a backbone that
is not a registered name (or differs from it) is embedded in full as
`"backbone": {...}`, so the file rebuilds its network on its own. Files of
earlier versions (`{"family": "wrn", "depth": 40, "width": 2, ...}`) still
read. The published pytorch-blockswap CSV format (columns `,index,convs,fisher`,
with `convs` a Python-literal list of names) is read too, as WRN-40-2 /
CIFAR-10 unless another backbone is given; a list of the wrong length is refused
with the registered models that have that many blocks (e.g. resnet34 for the
published 16-block ImageNet genotypes). Names resolve through the block-type
registry, so a user's registered type is handled exactly as a published one.
"""

from __future__ import annotations

import ast
import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..util.counts import whole_number
from ..util.errors import BlockSwapError
from ..util.rundir import write_text_atomic
from .backbones import Backbone, get_backbone, models_with_blocks
from .blocks import block_type
from .networks import BlockNetwork, build_network, fixed_costs

__all__ = ["Genotype", "GenotypeError", "load_genotype"]

_LEGACY_FAMILIES = {"wrn": "wrn-{depth}-{width}", "resnet": "resnet{depth}"}


class GenotypeError(BlockSwapError):
    """A genotype that cannot be read or does not fit its backbone."""


@dataclass(frozen=True)
class Genotype:
    """A backbone plus one block-type name per block slot."""

    backbone: Backbone
    blocks: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", tuple(self.blocks))

    def validate(self) -> Genotype:
        """Check length, names and buildability; raise GenotypeError naming the problem."""
        shapes = self.backbone.block_shapes()
        if len(self.blocks) != len(shapes):
            raise GenotypeError(_count_mismatch(self.backbone, len(self.blocks)))
        for i, (name, shape) in enumerate(zip(self.blocks, shapes)):
            try:
                kind = block_type(name)
            except BlockSwapError as e:
                raise GenotypeError(f"position {i}: {e}") from None
            if not kind.is_valid(shape.c_in, shape.c_out, shape.stride):
                raise GenotypeError(
                    f"block type {name!r} at position {i} cannot be built at {shape.c_in}->{shape.c_out} channels"
                )
        return self

    @classmethod
    def uniform(cls, backbone: Backbone, block: str | None = None) -> Genotype:
        """Every slot the same type; without `block`, the backbone's teacher block (the teacher network)."""
        return cls(backbone, (block or backbone.teacher_block,) * backbone.num_blocks)

    def params(self) -> int:
        """Closed-form trainable parameter count of the whole network."""
        post = self.backbone.post_activation
        shapes = self.backbone.block_shapes()
        return fixed_costs(self.backbone).params + sum(
            block_type(n).params(s.c_in, s.c_out, s.stride, post) for n, s in zip(self.blocks, shapes)
        )

    def macs(self) -> int:
        """Closed-form multiply-accumulates of convs and the Linear layer for one input image."""
        return fixed_costs(self.backbone).macs + sum(
            block_type(n).macs(s.c_in, s.c_out, s.stride, s.size_in)
            for n, s in zip(self.blocks, self.backbone.block_shapes())
        )

    def build(self) -> BlockNetwork:
        """A freshly initialised network for this genotype."""
        self.validate()
        return build_network(self.backbone, self.blocks)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: model name and classes, plus the full backbone spec where the name alone would not
        rebuild it."""
        b = self.backbone
        data: dict[str, Any] = {"model": b.name, "num_classes": b.num_classes}
        try:
            registered = get_backbone(b.name, b.num_classes) == b
        except BlockSwapError:
            registered = False
        if not registered:
            data["backbone"] = b.to_dict()
        data["blocks"] = list(self.blocks)
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Genotype:
        """Parse the JSON form (or an earlier version's); raise GenotypeError naming a missing or wrong field."""
        if not isinstance(data, dict):
            raise GenotypeError("a genotype must be a JSON object with model, num_classes and blocks")
        if "blocks" not in data:
            raise GenotypeError("genotype is missing field(s): blocks")
        blocks = data["blocks"]
        if not isinstance(blocks, list) or not all(isinstance(b, str) for b in blocks):
            raise GenotypeError("genotype field 'blocks' must be a list of block type names")
        try:
            backbone = _backbone_of(data)
        except (TypeError, ValueError, OverflowError) as e:
            raise GenotypeError(f"invalid backbone in genotype: {e}") from None
        return cls(backbone, tuple(blocks)).validate()

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def save(self, path: str | Path) -> None:
        """Write the JSON form atomically."""
        write_text_atomic(path, self.to_json() + "\n")

    def __str__(self) -> str:
        return f"{self.backbone.name}[{' '.join(self.blocks)}]"


_MAX_SUGGESTIONS = 3


def _count_mismatch(backbone: Backbone, listed: int, option: str | None = None) -> str:
    """Why `listed` block names do not fit `backbone`, naming the registered models they would fit.

    With `option` (e.g. `--model`), the message also says how to pick one of them.
    """
    head = f"{backbone.name} has {backbone.num_blocks} blocks but the genotype lists {listed}"
    matches = models_with_blocks(listed, like=backbone)[:_MAX_SUGGESTIONS]
    if not matches:
        return f"{head}; no registered model has {listed} blocks"
    shown = [f"{name} (any {' and '.join(free)})" if free else name for name, free in matches]
    names = ", ".join(shown[:-1]) + " and " + shown[-1] if len(shown) > 1 else shown[0]
    text = f"{head}: {names} {'have' if len(shown) > 1 else 'has'} {listed} blocks"
    if option:
        text += f" (pass {' or '.join(f'{option} {name}' for name, _ in matches)})"
    return text


def _backbone_of(data: dict[str, Any]) -> Backbone:
    """The backbone a genotype dict names: an embedded spec, a registered model, or an earlier version's family."""
    num_classes = data.get("num_classes")
    if "backbone" in data:
        return Backbone.from_dict(data["backbone"])
    if "model" in data:
        return get_backbone(data["model"], num_classes)
    if "family" not in data or "depth" not in data:
        raise GenotypeError("genotype is missing field(s): model")
    family = data["family"]
    if family not in _LEGACY_FAMILIES:
        raise GenotypeError(f"unknown network family {family!r}; valid choices: {', '.join(_LEGACY_FAMILIES)}")
    depth, width = (whole_number(data.get(k, 1), f"genotype field {k!r}") for k in ("depth", "width"))
    name = _LEGACY_FAMILIES[family].format(depth=depth, width=width)
    return get_backbone(name, num_classes)


def _read_csv(path: Path, row: int) -> Sequence[str]:
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise GenotypeError(f"{path}: not a readable genotype CSV ({e})") from None
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


def load_genotype(path: str | Path, backbone: Backbone | None = None, row: int = 0) -> Genotype:
    """Read a genotype from JSON or the published CSV format (WRN-40-2 unless `backbone` is given).

    For a CSV with several rows, `row` picks one (default the first data row). A CSV list whose length does
    not fit the backbone is refused naming the models it fits (the published ImageNet lists need resnet34).
    """
    path = Path(path)
    if not path.is_file():
        raise GenotypeError(f"genotype file not found: {path}")
    if path.suffix.lower() == ".csv":
        blocks = _read_csv(path, row)
        backbone = backbone or get_backbone("wrn-40-2")
        if len(blocks) != backbone.num_blocks:
            raise GenotypeError(f"{path}: {_count_mismatch(backbone, len(blocks), option='--model')}")
        return Genotype(backbone, tuple(blocks)).validate()
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        expected = "expected a genotype JSON or a published-format CSV"
        raise GenotypeError(f"{path}: not valid JSON ({e}); {expected}") from None
    genotype = Genotype.from_dict(data)
    if backbone is not None and backbone != genotype.backbone:
        raise GenotypeError(f"{path}: genotype is for {genotype.backbone.name}, expected {backbone.name}")
    return genotype
