"""Backbones as data: the skeleton a genotype fills, and the registry of names that make one.

A `Backbone` is a plain spec (stem, stage lengths, widths and strides, pre- or
post-activation blocks, input size, classes) from which `networks` builds any
residual network; nothing else in the package branches on what kind of
network it is. Names resolve through a registry in the manner of timm's
`register_model`: `@register_backbone("wrn-{depth}-{width}")` registers a
factory whose `{placeholders}` are whole numbers taken from the name, so
`wrn-40-2`, `resnet18` and any name a user registers resolve the same way
(`get_backbone`). The published WRN-d-k and ResNet-18/34 follow SPEC section 2;
torchvision's Bottleneck ResNets (ResNet-50/101/152, wide_resnet50_2/101_2,
resnext50_32x4d, resnext101_32x8d/64x4d) are the same skeleton with a bottleneck
type as the teacher's block (`Backbone.teacher_block`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..util.counts import whole_number
from ..util.errors import BlockSwapError
from ..util.options import from_record
from ..util.registry import Registry
from .blocks import block_type, bottleneck_name, conv_out_size

__all__ = [
    "Backbone",
    "BlockShape",
    "register_backbone",
    "get_backbone",
    "backbone_names",
    "models_with_blocks",
    "registered_layout",
]


@dataclass(frozen=True)
class BlockShape:
    """Where a block sits: its channels, stride, and input spatial size."""

    c_in: int
    c_out: int
    stride: int
    size_in: int

    @property
    def size_out(self) -> int:
        return conv_out_size(self.size_in, 3, self.stride)

    @property
    def has_projection(self) -> bool:
        return self.c_in != self.c_out or self.stride != 1


@dataclass(frozen=True)
class Backbone:
    """A residual network's skeleton: everything but the block bodies, which a genotype names.

    Pre-activation (`post_activation=False`, WRN): stem conv, blocks
    `x + body(ReLU(BN(x)))` with a 1x1 conv shortcut on the activated input
    where the shape changes, head BN -> ReLU -> pool -> Linear.
    Post-activation (torchvision's ResNet): stem conv -> BN -> ReLU
    [-> max-pool], blocks `ReLU(shortcut(x) + body(x))` with a 1x1 conv + BN
    shortcut where the shape changes, head pool -> Linear.

    `teacher_block` is the type every slot of the teacher holds: `Conv` for WRNs and
    BasicBlock ResNets, a bottleneck type (`ConvB4` for ResNet-50) where the stage
    widths are a Bottleneck's output channels. `Genotype.uniform(backbone)` is the teacher.
    """

    name: str
    stage_lengths: tuple[int, ...]
    stage_widths: tuple[int, ...]
    stage_strides: tuple[int, ...]
    post_activation: bool
    stem_channels: int
    stem_kernel: int = 3
    stem_stride: int = 1
    stem_pool: bool = False  # a 3x3 stride-2 max-pool after the stem, as ImageNet ResNets have
    input_size: int = 32
    num_classes: int = 10
    in_channels: int = 3
    teacher_block: str = "Conv"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise BlockSwapError(f"a backbone needs a name, got {self.name!r}")
        for attr in ("stage_lengths", "stage_widths", "stage_strides"):
            value = getattr(self, attr)
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise BlockSwapError(f"{self.name}: {attr} must be a list of whole numbers, got {value!r}")
            object.__setattr__(self, attr, tuple(whole_number(v, f"{self.name}: {attr} entry") for v in value))
        n = len(self.stage_lengths)
        if n == 0 or len(self.stage_widths) != n or len(self.stage_strides) != n:
            raise BlockSwapError(
                f"{self.name}: stage_lengths, stage_widths and stage_strides need one entry per stage, "
                f"got {len(self.stage_lengths)}, {len(self.stage_widths)} and {len(self.stage_strides)}"
            )
        if not isinstance(self.post_activation, bool) or not isinstance(self.stem_pool, bool):
            raise BlockSwapError(f"{self.name}: post_activation and stem_pool must be true or false")
        for attr in ("stem_channels", "stem_kernel", "stem_stride", "input_size", "num_classes", "in_channels"):
            object.__setattr__(self, attr, whole_number(getattr(self, attr), f"{self.name}: {attr}"))
        if self.stem_kernel % 2 == 0:
            raise BlockSwapError(f"{self.name}: stem_kernel must be odd, got {self.stem_kernel}")
        if self.block_shapes()[-1].size_in < 1 or self.block_shapes()[-1].size_out < 1:
            raise BlockSwapError(f"{self.name}: input size {self.input_size} is too small for its strides")
        if not isinstance(self.teacher_block, str) or not self.teacher_block:
            raise BlockSwapError(f"{self.name}: teacher_block must be a block type name, got {self.teacher_block!r}")
        teacher = block_type(self.teacher_block)
        if bad := next((s for s in self.block_shapes() if not teacher.is_valid(s.c_in, s.c_out, s.stride)), None):
            raise BlockSwapError(f"{self.name}: its teacher block {self.teacher_block} cannot be built at "
                                 f"{bad.c_in}->{bad.c_out} channels")

    @classmethod
    def from_name(cls, name: str, num_classes: int | None = None) -> Backbone:
        """The registered backbone `name` (e.g. `wrn-40-2`, `resnet18`); see `get_backbone`."""
        return get_backbone(name, num_classes)

    def with_classes(self, num_classes: int) -> Backbone:
        """The same skeleton with another head size."""
        return replace(self, num_classes=num_classes)

    @property
    def stem_size_out(self) -> int:
        """Spatial size entering the first block (after the stem and its max-pool, if any)."""
        size = conv_out_size(self.input_size, self.stem_kernel, self.stem_stride)
        return conv_out_size(size, 3, 2) if self.stem_pool else size

    @property
    def num_blocks(self) -> int:
        return sum(self.stage_lengths)

    def block_shapes(self) -> list[BlockShape]:
        """Every block slot in forward order."""
        shapes = []
        c_in, size = self.stem_channels, self.stem_size_out
        for n, width, stride in zip(self.stage_lengths, self.stage_widths, self.stage_strides):
            for i in range(n):
                shape = BlockShape(c_in, width, stride if i == 0 else 1, size)
                shapes.append(shape)
                c_in, size = width, shape.size_out
        return shapes

    def block_stages(self) -> list[int]:
        """The stage index of each block slot."""
        return [s for s, n in enumerate(self.stage_lengths) for _ in range(n)]

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON values (what a genotype file embeds for an unregistered backbone).

        `teacher_block` is left out when it is `Conv`, so the files of earlier versions and these are the same.
        """
        data = asdict(self)
        for attr in ("stage_lengths", "stage_widths", "stage_strides"):
            data[attr] = list(data[attr])
        if data["teacher_block"] == "Conv":
            del data["teacher_block"]
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Backbone:
        """The spec `to_dict` wrote; raise BlockSwapError naming a missing or unknown field."""
        return from_record(cls, data, "backbone spec")


BackboneFactory = Callable[..., Backbone]


@dataclass(frozen=True)
class _Entry:
    template: str
    pattern: re.Pattern[str]
    factory: BackboneFactory


_REGISTRY: Registry[_Entry] = Registry("model", templates=True)


def _pattern(template: str) -> re.Pattern[str]:
    """`wrn-{depth}-{width}` -> `wrn-?(?P<depth>\\d+)-(?P<width>\\d+)`: a hyphen before a number is optional."""
    parts = re.split(r"(\{[a-z_]+\})", template.lower())
    out = []
    for i, part in enumerate(parts):
        if part.startswith("{"):
            out.append(f"(?P<{part[1:-1]}>\\d+)")
        elif i + 1 < len(parts) and part[-1:].isalpha():
            out.append(re.escape(part) + "-?")
        elif i + 1 < len(parts) and part.endswith("-") and part[-2:-1].isalpha():
            out.append(re.escape(part[:-1]) + "-?")
        else:
            out.append(re.escape(part))
    return re.compile("".join(out))


def register_backbone(template: str, help: str = "") -> Callable[[BackboneFactory], BackboneFactory]:
    """Register a factory under a name or a name template such as `wrn-{depth}-{width}`.

    The factory is called with the template's numbers as int keyword arguments
    and returns a `Backbone` (it may raise BlockSwapError for numbers it does not
    support); the resolved name becomes the backbone's `name`. The same factory
    again is a no-op; another under a taken template is refused.
    """
    key = _REGISTRY.check_name(template.strip() if isinstance(template, str) else template)

    def decorate(factory: BackboneFactory) -> BackboneFactory:
        _REGISTRY.add(key, _Entry(key, _pattern(key), factory), help)
        return factory

    return decorate


def backbone_names() -> list[str]:
    """The registered names and templates, with their help where given."""
    return _REGISTRY.choices()


def get_backbone(name: str, num_classes: int | None = None) -> Backbone:
    """The backbone a registered name stands for, with `num_classes` classes if given."""
    if not isinstance(name, str):
        raise BlockSwapError(f"a model name must be text, got {name!r}")
    key = name.strip().lower()
    # Literal names before templates, so a registered `resnet50` wins over `resnet{depth}`; a template whose
    # factory refuses the numbers gives way to the next match, and its reason is reported if none accepts.
    entries = sorted(_REGISTRY.values(), key=lambda e: "{" in e.template)
    refusal: BlockSwapError | None = None
    for entry in entries:
        if m := entry.pattern.fullmatch(key):
            numbers = {k: int(v) for k, v in m.groupdict().items()}
            try:
                backbone = entry.factory(**numbers)
            except BlockSwapError as e:
                refusal = refusal or e
                continue
            backbone = replace(backbone, name=entry.template.format(**numbers))
            return backbone if num_classes is None else backbone.with_classes(num_classes)
    if refusal is not None:
        raise refusal
    raise _REGISTRY.unknown(name)


def _probe(name: str) -> Backbone | None:
    try:
        return get_backbone(name)
    except BlockSwapError:
        return None


def models_with_blocks(num_blocks: int, like: Backbone | None = None) -> list[tuple[str, tuple[str, ...]]]:
    """Registered model names whose backbone has `num_blocks` blocks, to suggest a model for a genotype list.

    Each comes with the placeholders of its template that leave the count unchanged (e.g. `("width",)` for
    `wrn-40-2`). Literal names are tried as they are; a template's `{depth}` is probed from 1 to
    4 * num_blocks + 16 (a block holds at most four of the layers a depth counts, and at most 16 sit outside
    the blocks), its other numbers taken from `like` where `like` comes from that template, else 1. Only
    specs are made, no networks, so this is cheap. Where some of them have `like`'s teacher block (a list of
    `Conv`-teacher slots fits resnet34 before resnet50), only those are given.
    """
    found: dict[str, tuple[str, ...]] = {}
    teachers: dict[str, str] = {}
    depths = range(1, 4 * num_blocks + 17)
    for entry in list(_REGISTRY.values()):
        fields = re.findall(r"\{([a-z_]+)\}", entry.template)
        base = dict.fromkeys(fields, 1)
        if like is not None and (m := entry.pattern.fullmatch(like.name.lower())):
            base.update({k: int(v) for k, v in m.groupdict().items()})
        for depth in depths if "depth" in fields else (None,):
            numbers = base if depth is None else {**base, "depth": depth}
            backbone = _probe(entry.template.format(**numbers))
            if backbone is None or backbone.num_blocks != num_blocks or backbone.name in found:
                continue
            teachers[backbone.name] = backbone.teacher_block
            found[backbone.name] = tuple(
                k for k in fields if k != "depth"
                and (other := _probe(entry.template.format(**{**numbers, k: numbers[k] + 1}))) is not None
                and other.num_blocks == num_blocks
            )
    alike = {name: free for name, free in found.items() if like is not None and teachers[name] == like.teacher_block}
    return list((alike or found).items())


def registered_layout(backbone: Backbone) -> str | None:
    """The registered model name with `backbone`'s layout, whatever its class count (None if there is none): what a
    weight file's network is called when it is searched with another head."""
    for name, _ in models_with_blocks(backbone.num_blocks, like=backbone):
        if replace(get_backbone(name, backbone.num_classes), name=backbone.name) == backbone:
            return name
    return None


@register_backbone("wrn-{depth}-{width}", help="WideResNet, depth 6n+4, e.g. wrn-40-2, wrn-16-1")
def wide_resnet(depth: int, width: int) -> Backbone:
    """WRN-d-k for 32x32 inputs (Zagoruyko & Komodakis 2016): 3 stages of (d-4)/6 pre-activation blocks."""
    depth, width = whole_number(depth, "WRN depth"), whole_number(width, "WRN width")
    if depth < 10 or (depth - 4) % 6:
        raise BlockSwapError(f"WRN depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth}")
    n = (depth - 4) // 6
    return Backbone(f"wrn-{depth}-{width}", (n, n, n), (16 * width, 32 * width, 64 * width), (1, 2, 2),
                    post_activation=False, stem_channels=16)


_RESNET_LAYOUTS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
_BASIC_DEPTHS = (18, 34)  # BasicBlocks; deeper ones are Bottlenecks


def _imagenet_resnet(name: str, depth: int, teacher_block: str = "Conv", expansion: int = 1) -> Backbone:
    """torchvision's ResNet layout for 224x224 ImageNet inputs; a Bottleneck's stage width is `expansion` x 64 x 2^i."""
    widths = tuple(expansion * w for w in (64, 128, 256, 512))
    return Backbone(name, _RESNET_LAYOUTS[depth], widths, (1, 2, 2, 2), post_activation=True, stem_channels=64,
                    stem_kernel=7, stem_stride=2, stem_pool=True, input_size=224, num_classes=1000,
                    teacher_block=teacher_block)


@register_backbone("resnet{depth}", help="torchvision's ResNet-18/34 (BasicBlock) or ResNet-50/101/152 (Bottleneck)")
def resnet(depth: int) -> Backbone:
    """ResNet-18/34/50/101/152 in torchvision's layout: post-activation BasicBlocks (`Conv`) up to 34, Bottlenecks
    (conv1x1 -> conv3x3 with the stride -> conv1x1, expansion 4: `ConvB4`) from 50."""
    if whole_number(depth, "ResNet depth") not in _RESNET_LAYOUTS:
        raise BlockSwapError(f"ResNet depth must be one of {sorted(_RESNET_LAYOUTS)}, got {depth}")
    if depth in _BASIC_DEPTHS:
        return _imagenet_resnet(f"resnet{depth}", depth)
    return _imagenet_resnet(f"resnet{depth}", depth, bottleneck_name(4), 4)


def _register_bottleneck_resnet(name: str, depth: int, teacher_block: str, help: str) -> None:
    register_backbone(name, help=help)(lambda: _imagenet_resnet(name, depth, teacher_block, 4))


# torchvision's wide and ResNeXt Bottleneck ResNets: the inner width m = 64 x 2^i x (width per group / 64) x groups
# against 256 x 2^i output channels gives the ratio; the groups stay fixed from stage to stage (the `A` types).
for _name, _depth, _ratio, _groups in (("wide_resnet50_2", 50, 2, 1), ("wide_resnet101_2", 101, 2, 1),
                                       ("resnext50_32x4d", 50, 2, 32), ("resnext101_32x8d", 101, 1, 32),
                                       ("resnext101_64x4d", 101, 1, 64)):
    _register_bottleneck_resnet(_name, _depth, bottleneck_name(_ratio, _groups),
                                f"torchvision's {_name}: {bottleneck_name(_ratio, _groups)} blocks")
