"""Residual networks whose every block body comes from the palette.

WRN-d-k (Zagoruyko & Komodakis 2016, pre-activation, CIFAR-sized input) and
ResNet-18/34 (He et al. 2016 in torchvision's module layout, post-activation), as
in SPEC section 2. A `Backbone` describes the fixed skeleton (block shapes and the
parameters/MACs outside the bodies) so costs can be tabulated without building
anything; `build_network` places one palette type in each block slot.

Networks expose `forward_taps`, which returns the logits together with the
stage outputs (for attention transfer) and the block-body outputs (Fisher
probes), so no forward hooks are needed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import Tensor, nn

from .blocks import DEFAULT_PALETTE, BlockType, Palette, conv_out_size, init_weights
from .errors import BlockSwapError

__all__ = [
    "Backbone",
    "BlockShape",
    "Taps",
    "BlockNetwork",
    "WideResNet",
    "ResNet",
    "PreActBlock",
    "PostActBlock",
    "bn_relu_pairs",
    "build_network",
    "MODEL_CHOICES",
]

MODEL_CHOICES = "wrn-D-K (e.g. wrn-40-2, wrn-16-1; D = 6n+4), resnet18, resnet34"

_RESNET_LAYOUTS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


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
    """The skeleton a genotype applies to: family ("wrn" or "resnet"), depth, width, classes."""

    family: str
    depth: int
    width: int
    num_classes: int

    def __post_init__(self) -> None:
        if self.family == "wrn":
            if self.depth < 10 or (self.depth - 4) % 6:
                raise BlockSwapError(f"WRN depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40, ...), got {self.depth}")
            if self.width < 1:
                raise BlockSwapError(f"WRN width must be a positive integer, got {self.width}")
        elif self.family == "resnet":
            if self.depth not in _RESNET_LAYOUTS:
                raise BlockSwapError(f"ResNet depth must be one of {sorted(_RESNET_LAYOUTS)}, got {self.depth}")
            if self.width != 1:
                raise BlockSwapError(f"ResNet width must be 1, got {self.width}")
        else:
            raise BlockSwapError(f"unknown network family {self.family!r}; valid choices: wrn, resnet")
        if self.num_classes < 1:
            raise BlockSwapError(f"num_classes must be positive, got {self.num_classes}")

    @classmethod
    def from_name(cls, name: str, num_classes: int | None = None) -> Backbone:
        """Parse `wrn-40-2`, `wrn-16-1`, `resnet18`, `resnet-34` (CIFAR-10 / ImageNet class counts by default)."""
        key = name.strip().lower()
        if m := re.fullmatch(r"wrn-?(\d+)-(\d+)", key):
            return cls("wrn", int(m[1]), int(m[2]), num_classes or 10)
        if m := re.fullmatch(r"resnet-?(\d+)", key):
            return cls("resnet", int(m[1]), 1, num_classes or 1000)
        raise BlockSwapError(f"unknown model {name!r}; valid choices: {MODEL_CHOICES}")

    @property
    def name(self) -> str:
        return f"wrn-{self.depth}-{self.width}" if self.family == "wrn" else f"resnet{self.depth}"

    @property
    def post_activation(self) -> bool:
        return self.family == "resnet"

    @property
    def input_size(self) -> int:
        return 32 if self.family == "wrn" else 224

    @property
    def stage_lengths(self) -> tuple[int, ...]:
        if self.family == "wrn":
            n = (self.depth - 4) // 6
            return (n, n, n)
        return _RESNET_LAYOUTS[self.depth]

    @property
    def stage_widths(self) -> tuple[int, ...]:
        if self.family == "wrn":
            return (16 * self.width, 32 * self.width, 64 * self.width)
        return (64, 128, 256, 512)

    @property
    def stage_strides(self) -> tuple[int, ...]:
        return (1, 2, 2) if self.family == "wrn" else (1, 2, 2, 2)

    @property
    def stem_channels(self) -> int:
        return 16 if self.family == "wrn" else 64

    @property
    def stem_size_out(self) -> int:
        """Spatial size entering the first block (after the stem, and max-pool for ResNet)."""
        if self.family == "wrn":
            return self.input_size
        return conv_out_size(conv_out_size(self.input_size, 7, 2), 3, 2)

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

    def fixed_params(self) -> int:
        """Parameters outside the block bodies: stem, shortcuts, pre-activation BNs, head."""
        feat = self.stage_widths[-1]
        head = feat * self.num_classes + self.num_classes
        total = head
        if self.family == "wrn":
            total += 3 * 16 * 9 + 2 * feat  # stem conv, final BN
            for s in self.block_shapes():
                total += 2 * s.c_in + (s.c_in * s.c_out if s.has_projection else 0)
        else:
            total += 3 * 64 * 49 + 2 * 64  # stem conv + BN
            for s in self.block_shapes():
                total += s.c_in * s.c_out + 2 * s.c_out if s.has_projection else 0
        return total

    def fixed_macs(self) -> int:
        """MACs outside the block bodies for one input image."""
        feat = self.stage_widths[-1]
        total = feat * self.num_classes
        if self.family == "wrn":
            total += self.input_size**2 * 3 * 16 * 9
        else:
            total += conv_out_size(self.input_size, 7, 2) ** 2 * 3 * 64 * 49
        for s in self.block_shapes():
            if s.has_projection:
                total += s.size_out**2 * s.c_in * s.c_out
        return total


@dataclass
class Taps:
    """What `forward_taps` returns: logits, one output per stage, one body output per block."""

    logits: Tensor
    stages: list[Tensor]
    probes: list[Tensor]


class PreActBlock(nn.Module):
    """WRN block: h = ReLU(BN(x)); out = shortcut + body(h), shortcut = x or Conv1x1(h)."""

    _bn_relu = ("bn", "relu")  # self.relu is applied to self.bn's output and nothing else

    def __init__(self, body: nn.Module, shape: BlockShape) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(shape.c_in)
        self.relu = nn.ReLU(inplace=False)
        self.body = body
        self.shortcut = (
            nn.Conv2d(shape.c_in, shape.c_out, 1, stride=shape.stride, bias=False) if shape.has_projection else None
        )

    def forward_tap(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Block output and the body output (the Fisher probe)."""
        h = self.relu(self.bn(x))
        probe = self.body(h)
        shortcut = x if self.shortcut is None else self.shortcut(h)
        return shortcut + probe, probe

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_tap(x)[0]


class PostActBlock(nn.Module):
    """ResNet block: out = ReLU(shortcut(x) + body(x)), shortcut = x or Conv1x1+BN.

    The body's layers are registered on the block itself (conv1, bn1, ...), so the
    all-`Conv` network has torchvision's BasicBlock keys and loads its state dicts.
    """

    def __init__(self, body: nn.Sequential, shape: BlockShape) -> None:
        super().__init__()
        self._body_names = [name for name, _ in body.named_children()]
        for name, layer in body.named_children():
            self.add_module(name, layer)
        self.relu = nn.ReLU(inplace=False)
        self.downsample = (
            nn.Sequential(
                nn.Conv2d(shape.c_in, shape.c_out, 1, stride=shape.stride, bias=False),
                nn.BatchNorm2d(shape.c_out),
            )
            if shape.has_projection
            else None
        )

    def forward_tap(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Block output and the body output (the Fisher probe)."""
        probe = x
        for name in self._body_names:
            probe = getattr(self, name)(probe)
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(shortcut + probe), probe

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_tap(x)[0]


class BlockNetwork(nn.Module):
    """Shared forward logic: stem -> stages of blocks -> head."""

    backbone: Backbone
    block_names: tuple[str, ...]

    def stage_modules(self) -> list[nn.Sequential]:
        raise NotImplementedError

    def forward_stem(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward_head(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    @property
    def blocks(self) -> list[nn.Module]:
        return [b for stage in self.stage_modules() for b in stage]

    def forward(self, x: Tensor) -> Tensor:
        x = self.forward_stem(x)
        for stage in self.stage_modules():
            x = stage(x)
        return self.forward_head(x)

    def forward_taps(self, x: Tensor) -> Taps:
        """Logits plus stage outputs (attention-transfer points) and body outputs (probes)."""
        x = self.forward_stem(x)
        stages, probes = [], []
        for stage in self.stage_modules():
            for block in stage:
                x, probe = block.forward_tap(x)
                probes.append(probe)
            stages.append(x)
        return Taps(self.forward_head(x), stages, probes)


def _bodies(backbone: Backbone, block_names: Sequence[str], palette: Palette) -> list[tuple[nn.Module, BlockShape]]:
    shapes = backbone.block_shapes()
    if len(block_names) != len(shapes):
        raise ValueError(f"{backbone.name} has {len(shapes)} blocks, got {len(block_names)} block names")
    out = []
    for i, (name, shape) in enumerate(zip(block_names, shapes)):
        block_type: BlockType = palette[name]
        try:
            body = block_type.build(shape.c_in, shape.c_out, shape.stride, backbone.post_activation)
        except ValueError as e:
            raise ValueError(f"block {i} ({name}) cannot be built at {shape.c_in}->{shape.c_out}: {e}") from None
        out.append((body, shape))
    return out


class WideResNet(BlockNetwork):
    """WRN-d-k for 32x32 inputs, pre-activation blocks."""

    _bn_relu = ("bn", "relu")  # the head

    def __init__(self, backbone: Backbone, block_names: Sequence[str], palette: Palette = DEFAULT_PALETTE) -> None:
        super().__init__()
        self.backbone, self.block_names = backbone, tuple(block_names)
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        bodies = iter(_bodies(backbone, block_names, palette))
        self.stages = nn.ModuleList(
            nn.Sequential(*(PreActBlock(*next(bodies)) for _ in range(n))) for n in backbone.stage_lengths
        )
        feat = backbone.stage_widths[-1]
        self.bn = nn.BatchNorm2d(feat)
        self.relu = nn.ReLU(inplace=False)
        self.fc = nn.Linear(feat, backbone.num_classes)
        init_weights(self)

    def stage_modules(self) -> list[nn.Sequential]:
        return list(self.stages)

    def forward_stem(self, x: Tensor) -> Tensor:
        return self.conv1(x)

    def forward_head(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class ResNet(BlockNetwork):
    """ResNet-18/34 in torchvision's layout (conv1, bn1, layer1..4, fc), post-activation blocks."""

    _bn_relu = ("bn1", "relu")  # the stem

    def __init__(self, backbone: Backbone, block_names: Sequence[str], palette: Palette = DEFAULT_PALETTE) -> None:
        super().__init__()
        self.backbone, self.block_names = backbone, tuple(block_names)
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        bodies = iter(_bodies(backbone, block_names, palette))
        for i, n in enumerate(backbone.stage_lengths, start=1):
            self.add_module(f"layer{i}", nn.Sequential(*(PostActBlock(*next(bodies)) for _ in range(n))))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, backbone.num_classes)
        init_weights(self)

    def stage_modules(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward_stem(self, x: Tensor) -> Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward_head(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.avgpool(x), 1))


def bn_relu_pairs(model: nn.Module) -> Iterator[tuple[nn.Module, str, str]]:
    """(owner, BN name, ReLU name) for each `BatchNorm2d` whose output goes only into the ReLU after it.

    Read from execution order, which `nn.Sequential` children, a post-activation
    block's body names and each class's `_bn_relu` attribute give; a fused
    scorer can then run each pair as one kernel.
    """
    for owner in model.modules():
        if isinstance(owner, nn.Sequential):
            order: Sequence[str] = list(owner._modules)
        elif isinstance(owner, PostActBlock):
            order = owner._body_names
        else:
            order = getattr(owner, "_bn_relu", ())
        for first, second in pairwise(order):
            bn, relu = owner._modules.get(first), owner._modules.get(second)
            if isinstance(bn, nn.BatchNorm2d) and isinstance(relu, nn.ReLU):
                yield owner, first, second


def build_network(backbone: Backbone, block_names: Sequence[str], palette: Palette = DEFAULT_PALETTE) -> BlockNetwork:
    """A freshly initialised network with `block_names[i]` as the body of block i."""
    cls = WideResNet if backbone.family == "wrn" else ResNet
    return cls(backbone, block_names, palette)
