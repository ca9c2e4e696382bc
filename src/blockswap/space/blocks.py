"""The block palette: the 23 residual-block bodies BlockSwap can swap in.

Follows SPEC section 2 (the published pytorch-blockswap names). Every body is a
chain of convolutions with BN -> ReLU between consecutive convs; post-activation
(ResNet) bodies add one trailing BN. Because a body is fully described by its
conv chain, its parameter count and MACs have closed forms that need no module
construction, which is what makes budget sampling a table look-up.

This module knows nothing about networks: it maps (C_in, C_out, stride) to a body.
Every type a genotype may name resolves through one registry (`block_type`):
the 23 published types are registered on import, and a user's type works
everywhere a published one does once `register_block_type` has seen it.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from torch import nn

from ..util.errors import BlockSwapError
from ..util.registry import Registry

__all__ = ["ConvSpec", "BlockType", "Palette", "DEFAULT_PALETTE", "register_block_type", "block_type", "registered_block_types", "conv_out_size", "init_weights"]


@dataclass(frozen=True)
class ConvSpec:
    """One bias-free convolution of a body: channels, kernel, stride and group count."""

    c_in: int
    c_out: int
    kernel: int
    stride: int = 1
    groups: int = 1

    @property
    def params(self) -> int:
        return self.c_out * (self.c_in // self.groups) * self.kernel * self.kernel

    def macs(self, h_out: int, w_out: int) -> int:
        return self.params * h_out * w_out

    def build(self) -> nn.Conv2d:
        return nn.Conv2d(
            self.c_in,
            self.c_out,
            self.kernel,
            stride=self.stride,
            padding=self.kernel // 2,
            groups=self.groups,
            bias=False,
        )


def conv_out_size(size: int, kernel: int, stride: int) -> int:
    """Spatial output size of a conv with padding kernel // 2 (3x3 pad 1, 1x1 pad 0, 7x7 pad 3)."""
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


def _check_groups(channels: int, groups: int) -> int:
    if groups < 1 or channels % groups:
        raise ValueError(f"{groups} groups do not divide {channels} channels")
    return groups


def _n_groups(n: int) -> Callable[[int], int]:
    """gamma(a) = n groups (the `A` types)."""
    return lambda a: _check_groups(a, n)


def _groups_of(g: int) -> Callable[[int], int]:
    """gamma(a) = a / g: groups of g channels each (the `G` types)."""

    def gamma(a: int) -> int:
        if a % g:
            raise ValueError(f"{a} channels do not split into groups of {g}")
        return a // g

    return gamma


def _depthwise(a: int) -> int:
    return a


def _dense(a: int) -> int:
    return 1


ConvChain = Callable[[int, int, int], list[ConvSpec]]


def standard_chain(c_in: int, c_out: int, stride: int) -> list[ConvSpec]:
    """S: Conv3x3(C_in->C_out, s) -> Conv3x3(C_out->C_out)."""
    return [ConvSpec(c_in, c_out, 3, stride), ConvSpec(c_out, c_out, 3)]


def grouped_chain(gamma: Callable[[int], int]) -> ConvChain:
    """G: each 3x3 conv of S becomes GConv3x3(a->a, gamma(a)) -> Conv1x1(a->b)."""

    def chain(c_in: int, c_out: int, stride: int) -> list[ConvSpec]:
        return [
            ConvSpec(c_in, c_in, 3, stride, gamma(c_in)),
            ConvSpec(c_in, c_out, 1),
            ConvSpec(c_out, c_out, 3, 1, gamma(c_out)),
            ConvSpec(c_out, c_out, 1),
        ]

    return chain


def bottleneck_chain(b: int, gamma: Callable[[int], int]) -> ConvChain:
    """B/BG: Conv1x1(C_in->m) -> GConv3x3(m->m, gamma(m), s) -> Conv1x1(m->C_out), m = C_out / b."""

    def chain(c_in: int, c_out: int, stride: int) -> list[ConvSpec]:
        if c_out % b:
            raise ValueError(f"bottleneck factor {b} does not divide {c_out} channels")
        m = c_out // b
        return [
            ConvSpec(c_in, m, 1),
            ConvSpec(m, m, 3, stride, gamma(m)),
            ConvSpec(m, c_out, 1),
        ]

    return chain


@dataclass(frozen=True)
class BlockType:
    """A palette entry: a named residual-block body defined by its conv chain.

    `chain(c_in, c_out, stride)` returns the body's convolutions in order and
    raises ValueError where the type cannot be built at that shape (e.g. groups
    that do not divide the channels). Subclass and override `build`/`params`/`macs`
    for bodies that are not a plain conv chain.
    """

    name: str
    family: str  # "S" standard, "G" grouped+pointwise, "B" bottleneck, or a user label
    chain: ConvChain

    def convs(self, c_in: int, c_out: int, stride: int) -> list[ConvSpec]:
        return self.chain(c_in, c_out, stride)

    def is_valid(self, c_in: int, c_out: int, stride: int) -> bool:
        """Whether this type can be built at this block shape."""
        try:
            self.convs(c_in, c_out, stride)
        except ValueError:
            return False
        return True

    def params(self, c_in: int, c_out: int, stride: int, post_activation: bool = False) -> int:
        """Closed-form trainable parameter count of the body (convs + BN weight/bias)."""
        convs = self.convs(c_in, c_out, stride)
        total = sum(c.params for c in convs)
        total += sum(2 * c.c_out for c in convs[:-1])
        if post_activation:
            total += 2 * convs[-1].c_out
        return total

    def macs(self, c_in: int, c_out: int, stride: int, size: int) -> int:
        """Closed-form multiply-accumulates of the body's convs for a size x size input."""
        total = 0
        for conv in self.convs(c_in, c_out, stride):
            size = conv_out_size(size, conv.kernel, conv.stride)
            total += conv.macs(size, size)
        return total

    def build(self, c_in: int, c_out: int, stride: int, post_activation: bool = False) -> nn.Sequential:
        """The body as conv -> BN -> ReLU -> ... -> conv [-> BN] with names conv1, bn1, relu1, ...

        The names make the all-`Conv` post-activation body match torchvision's
        BasicBlock keys (conv1, bn1, conv2, bn2).
        """
        convs = self.convs(c_in, c_out, stride)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for i, spec in enumerate(convs, start=1):
            layers[f"conv{i}"] = spec.build()
            if i < len(convs) or post_activation:
                layers[f"bn{i}"] = nn.BatchNorm2d(spec.c_out)
            if i < len(convs):
                layers[f"relu{i}"] = nn.ReLU(inplace=True)
        return nn.Sequential(layers)


def _published_types() -> list[BlockType]:
    types = [BlockType("Conv", "S", standard_chain)]
    types += [BlockType(f"DConvA{n}", "G", grouped_chain(_n_groups(n))) for n in (2, 4, 8, 16)]
    types += [BlockType(f"DConvG{g}", "G", grouped_chain(_groups_of(g))) for g in (2, 4, 8, 16)]
    types.append(BlockType("DConv", "G", grouped_chain(_depthwise)))
    types += [BlockType(f"ConvB{b}", "B", bottleneck_chain(b, _dense)) for b in (2, 4)]
    types += [BlockType(f"A{n}B2", "B", bottleneck_chain(2, _n_groups(n))) for n in (2, 4, 8, 16)]
    types += [BlockType(f"G{g}B2", "B", bottleneck_chain(2, _groups_of(g))) for g in (2, 4, 8, 16)]
    types += [BlockType(f"G{g}B4", "B", bottleneck_chain(4, _groups_of(g))) for g in (2, 4, 8)]
    return types


class Palette(Mapping[str, BlockType]):
    """An ordered, immutable set of block types that a search may place in any slot.

    Restrict it (`palette.only(["G4B2", "ConvB2"])`, `palette.families("B")`) or
    extend it (`palette.with_types(my_type)`) without editing the library.
    """

    def __init__(self, types: Iterable[BlockType]) -> None:
        self._types: dict[str, BlockType] = {}
        for t in types:
            if t.name in self._types:
                raise ValueError(f"duplicate block type name {t.name!r} in palette")
            self._types[t.name] = t
        if not self._types:
            raise ValueError("a palette needs at least one block type")

    def __getitem__(self, name: str) -> BlockType:
        try:
            return self._types[name]
        except KeyError:
            raise KeyError(
                f"unknown block type {name!r}; valid choices: {', '.join(self._types)}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._types)

    def __len__(self) -> int:
        return len(self._types)

    def __repr__(self) -> str:
        return f"Palette({list(self._types)})"

    @property
    def names(self) -> list[str]:
        return list(self._types)

    def only(self, names: Iterable[str]) -> Palette:
        """A palette with just these types (in the given order)."""
        return Palette(self[n] for n in names)

    def families(self, *families: str) -> Palette:
        """A palette with the types of these families (e.g. "B" for bottlenecks)."""
        return Palette(t for t in self._types.values() if t.family in families)

    def with_types(self, *types: BlockType) -> Palette:
        """This palette plus user-defined types."""
        return Palette([*self._types.values(), *types])


_REGISTRY: Registry[BlockType] = Registry("block type", "register your own with blockswap.register_block_type")


def register_block_type(block: BlockType) -> BlockType:
    """Make `block` resolvable by name for genotypes, networks, checkpoints and the CLI.

    Registering the same type again is a no-op; another type under a taken
    name is refused. Returns the type, so it can be used as an expression.
    """
    if not isinstance(block, BlockType):
        raise BlockSwapError(f"register_block_type takes a BlockType, got {type(block).__name__}")
    return _REGISTRY.add(block.name, block)


def block_type(name: str) -> BlockType:
    """The registered type called `name`; BlockSwapError naming the choices if there is none."""
    return _REGISTRY[name]


def registered_block_types() -> dict[str, BlockType]:
    """Every registered type by name, published ones first."""
    return dict(_REGISTRY)


DEFAULT_PALETTE = Palette(register_block_type(t) for t in _published_types())
PALETTE_NAMES: tuple[str, ...] = tuple(DEFAULT_PALETTE.names)


def init_weights(module: nn.Module) -> None:
    """SPEC init: conv ~ N(0, sqrt(2 / (k*k*C_out))), BN weight 1 bias 0, Linear bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
