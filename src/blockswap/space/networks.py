"""Residual networks built from a `Backbone` spec, with one registered block type in each slot.

Two block styles cover SPEC section 2: pre-activation (WRN, module names
conv1 / stages / bn / fc) and post-activation in torchvision's ResNet layout
(conv1 / bn1 / layer1.. / fc, so the all-`Conv` network loads torchvision
state dicts). Everything else (stem, stage lengths, widths, strides, input
size, classes) comes from the spec, so any backbone a user registers builds here.

Networks expose `forward_taps`, which returns the logits together with the
stage outputs (for attention transfer) and the block-body outputs (Fisher
probes), so no forward hooks are needed. `fixed_costs` measures the parameters
and MACs outside the block bodies on the network's own modules, built with
parameter-free stand-ins for the bodies (`build_skeleton`), so no per-backbone
formula exists to drift from the modules and no teacher body is ever allocated
(a ResNet-50's would be 20M parameters, a ResNet-152's 50M).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor, nn

from ..util.errors import BlockSwapError
from .backbones import Backbone, BlockShape
from .blocks import block_type, conv_out_size, init_weights

__all__ = [
    "Taps",
    "BlockNetwork",
    "PreActNetwork",
    "PostActNetwork",
    "PreActBlock",
    "PostActBlock",
    "FixedCosts",
    "build_network",
    "build_skeleton",
    "fixed_costs",
]


@dataclass
class Taps:
    """What `forward_taps` returns: logits, one output per stage, one body output per block."""

    logits: Tensor
    stages: list[Tensor]
    probes: list[Tensor]


class PreActBlock(nn.Module):
    """WRN block: h = ReLU(BN(x)); out = shortcut + body(h), shortcut = x or Conv1x1(h)."""

    def __init__(self, body: nn.Module, shape: BlockShape) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(shape.c_in)
        self.relu = nn.ReLU(inplace=False)
        self.body = body
        self.shortcut = (
            nn.Conv2d(shape.c_in, shape.c_out, 1, stride=shape.stride, bias=False) if shape.has_projection else None
        )

    def body_modules(self) -> list[nn.Module]:
        """The swappable part of the block."""
        return [self.body]

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
        self.body_names = [name for name, _ in body.named_children()]
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

    def body_modules(self) -> list[nn.Module]:
        """The swappable part of the block, in execution order."""
        return [getattr(self, name) for name in self.body_names]

    def body_forward(self, x: Tensor) -> Tensor:
        for name in self.body_names:
            x = getattr(self, name)(x)
        return x

    def forward_tap(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Block output and the body output (the Fisher probe)."""
        probe = self.body_forward(x)
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(shortcut + probe), probe

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_tap(x)[0]


Block = PreActBlock | PostActBlock


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
    def blocks(self) -> list[Block]:
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


class _StandIn(nn.Module):
    """A parameter-free body of a skeleton: zeros of the shape the real body would give (C_out channels, the
    3x3 conv's output size at the block's stride)."""

    def __init__(self, shape: BlockShape) -> None:
        super().__init__()
        self.channels, self.stride = shape.c_out, shape.stride

    def forward(self, x: Tensor) -> Tensor:
        h, w = (conv_out_size(n, 3, self.stride) for n in x.shape[-2:])
        return x.new_zeros(x.shape[0], self.channels, h, w)


def _bodies(backbone: Backbone, block_names: Sequence[str] | None) -> Iterator[tuple[nn.Module, BlockShape]]:
    """Each slot's body and shape; with `block_names` None, a `_StandIn` in every slot."""
    shapes = backbone.block_shapes()
    if block_names is None:
        for shape in shapes:
            yield nn.Sequential(OrderedDict(stand_in=_StandIn(shape))), shape
        return
    if len(block_names) != len(shapes):
        raise BlockSwapError(f"{backbone.name} has {len(shapes)} blocks, got {len(block_names)} block names")
    for i, (name, shape) in enumerate(zip(block_names, shapes)):
        try:
            body = block_type(name).build(shape.c_in, shape.c_out, shape.stride, backbone.post_activation)
        except ValueError as e:
            raise BlockSwapError(f"block {i} ({name}) cannot be built at {shape.c_in}->{shape.c_out}: {e}") from None
        yield body, shape


class PreActNetwork(BlockNetwork):
    """Stem conv, stages of pre-activation blocks, then BN -> ReLU -> pool -> Linear (WRN).

    `block_names` None builds the skeleton (`build_skeleton`).
    """

    def __init__(self, backbone: Backbone, block_names: Sequence[str] | None) -> None:
        super().__init__()
        self.backbone, self.block_names = backbone, tuple(block_names or ())
        b = backbone
        self.conv1 = nn.Conv2d(b.in_channels, b.stem_channels, b.stem_kernel, stride=b.stem_stride,
                               padding=b.stem_kernel // 2, bias=False)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if b.stem_pool else None
        bodies = _bodies(backbone, block_names)
        self.stages = nn.ModuleList(
            nn.Sequential(*(PreActBlock(*next(bodies)) for _ in range(n))) for n in b.stage_lengths
        )
        feat = b.stage_widths[-1]
        self.bn = nn.BatchNorm2d(feat)
        self.relu = nn.ReLU(inplace=False)
        self.fc = nn.Linear(feat, b.num_classes)

    def stage_modules(self) -> list[nn.Sequential]:
        return list(self.stages)

    def forward_stem(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        return x if self.maxpool is None else self.maxpool(x)

    def forward_head(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class PostActNetwork(BlockNetwork):
    """Torchvision's ResNet layout (conv1, bn1, layer1.., fc) with post-activation blocks.

    `block_names` None builds the skeleton (`build_skeleton`).
    """

    def __init__(self, backbone: Backbone, block_names: Sequence[str] | None) -> None:
        super().__init__()
        self.backbone, self.block_names = backbone, tuple(block_names or ())
        b = backbone
        self.conv1 = nn.Conv2d(b.in_channels, b.stem_channels, b.stem_kernel, stride=b.stem_stride,
                               padding=b.stem_kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(b.stem_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if b.stem_pool else None
        bodies = _bodies(backbone, block_names)
        self._stage_names = [f"layer{i}" for i in range(1, len(b.stage_lengths) + 1)]
        for name, n in zip(self._stage_names, b.stage_lengths):
            self.add_module(name, nn.Sequential(*(PostActBlock(*next(bodies)) for _ in range(n))))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(b.stage_widths[-1], b.num_classes)

    def stage_modules(self) -> list[nn.Sequential]:
        return [getattr(self, name) for name in self._stage_names]

    def forward_stem(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return x if self.maxpool is None else self.maxpool(x)

    def forward_head(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build_network(backbone: Backbone, block_names: Sequence[str], init: bool = True) -> BlockNetwork:
    """A network with `block_names[i]` as the body of block i, SPEC-initialised unless `init` is False."""
    net = (PostActNetwork if backbone.post_activation else PreActNetwork)(backbone, block_names)
    if init:
        init_weights(net)
    return net


def build_skeleton(backbone: Backbone, init: bool = True) -> BlockNetwork:
    """The network with a parameter-free `_StandIn` for every body: its stem, shortcuts, block BNs and head are
    the real modules (same names, same forward), at the cost of those parts only."""
    net = (PostActNetwork if backbone.post_activation else PreActNetwork)(backbone, None)
    if init:
        init_weights(net)
    return net


@dataclass(frozen=True)
class FixedCosts:
    """Parameters and MACs (one input image) outside the block bodies: stem, shortcuts, BNs, head."""

    params: int
    macs: int


def _macs(module: nn.Module, output: Tensor) -> int:
    """Multiply-accumulates of one Conv2d or Linear call for one image, from its output shape."""
    per_image = output[0].numel()
    if isinstance(module, nn.Conv2d):
        kernel = module.kernel_size[0] * module.kernel_size[1]
        return per_image * (module.in_channels // module.groups) * kernel
    return per_image * module.in_features


@lru_cache(maxsize=256)
def fixed_costs(backbone: Backbone) -> FixedCosts:
    """Counted on the skeleton (`build_skeleton`): every parameter and MAC of the network outside its bodies.

    MACs are those of convolutions and Linear layers for one image (SPEC
    section 2), read from each layer's output in one no-grad forward pass on
    the CPU. `torch.utils.flop_counter` gives the same figures (a test checks
    it) but costs about 2 s on its first use in a process, as does a forward
    pass on the meta device; this costs about 50 ms for WRN-40-2 and builds
    none of the teacher's bodies, so a ResNet-152 costs about as little.
    """
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        net = build_skeleton(backbone, init=False).eval()
        counted: list[int] = []
        handles = [m.register_forward_hook(lambda m, _, out: counted.append(_macs(m, out)))
                   for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        net(torch.zeros(1, backbone.in_channels, backbone.input_size, backbone.input_size))
        for handle in handles:
            handle.remove()
    return FixedCosts(sum(p.numel() for p in net.parameters()), sum(counted))
