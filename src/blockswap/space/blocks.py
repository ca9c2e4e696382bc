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

Two baselines of the paper's Table 2 are registered too but stay out of
`DEFAULT_PALETTE`: `MBConv6` (MobileNetV2's inverted residual, a conv chain)
and `DARTS` (the DARTS V2 cell, a small graph of ops, `CellBlockType`).

The bottleneck names extend past the published ones: `ConvB{b}`, `A{n}B{b}` and
`G{g}B{b}` name the same chain for any ratio b and group setting (ResNeXt's
32-group bottleneck of ratio 2 is `A32B2`, of ratio 1 `A32B1`). Such a name
resolves on first use (`block_type`), in any process, so a Bottleneck teacher's
type need not be in the palette (`bottleneck_name`).
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..util.errors import BlockSwapError
from ..util.registry import Registry

__all__ = ["ConvSpec", "BlockType", "Palette", "DEFAULT_PALETTE", "register_block_type", "block_type",
           "registered_block_types", "conv_out_size", "init_weights", "CellSpec", "CellChain", "CellBlockType",
           "DartsCell", "DARTS_V2", "BASELINE_NAMES", "bottleneck_name", "has_block_type"]


@dataclass(frozen=True)
class ConvSpec:
    """One bias-free convolution of a body: channels, kernel, stride, group count and dilation.

    Padding is `dilation * (kernel // 2)`, so dilation changes neither the count nor the output size.
    """

    c_in: int
    c_out: int
    kernel: int
    stride: int = 1
    groups: int = 1
    dilation: int = 1

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
            padding=self.dilation * (self.kernel // 2),
            dilation=self.dilation,
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


def inverted_residual_chain(expansion: int) -> ConvChain:
    """MBConv: Conv1x1(C_in->e*C_in) -> DWConv3x3(e*C_in, s) -> Conv1x1(e*C_in->C_out) (MobileNetV2)."""

    def chain(c_in: int, c_out: int, stride: int) -> list[ConvSpec]:
        wide = expansion * c_in
        return [ConvSpec(c_in, wide, 1), ConvSpec(wide, wide, 3, stride, wide), ConvSpec(wide, c_out, 1)]

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
    family: str  # "S" standard, "G" grouped+pointwise, "B" bottleneck, "baseline", or a user label
    chain: ConvChain
    trailing_bn: bool = False  # end in BN in a pre-activation block too (MobileNetV2's linear bottleneck)

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
        if post_activation or self.trailing_bn:
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
            if i < len(convs) or post_activation or self.trailing_bn:
                layers[f"bn{i}"] = nn.BatchNorm2d(spec.c_out)
            if i < len(convs):
                layers[f"relu{i}"] = nn.ReLU(inplace=True)
        return nn.Sequential(layers)


@dataclass(frozen=True)
class CellSpec:
    """One DARTS cell genotype: two (op, input) pairs per intermediate node and the nodes concatenated as output.

    Inputs 0 and 1 are the two preprocessed cell inputs; node k (k >= 2) is the sum of ops 2(k-2) and 2(k-2)+1.
    """

    ops: tuple[tuple[str, int], ...]
    concat: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.ops or len(self.ops) % 2:
            raise ValueError("a cell needs two (op, input) pairs per intermediate node")
        for i, (op, source) in enumerate(self.ops):
            if op not in _CELL_OPS:
                raise ValueError(f"cell op {op!r} is not supported; valid choices: {', '.join(_CELL_OPS)}")
            if not 0 <= source < 2 + i // 2:
                raise ValueError(f"cell op {i} reads state {source}, which is not computed before it")
        if not self.concat or not all(0 <= k < 2 + len(self.ops) // 2 for k in self.concat):
            raise ValueError(f"cell output {self.concat} names states the cell does not have")


CellUnit = tuple[ConvSpec, ...]  # ReLU -> these convs back to back -> BN (DARTS's ReLUConvBN, DilConv, half a SepConv)


def _sep_conv(c: int, stride: int) -> list[CellUnit]:
    return [(ConvSpec(c, c, 3, stride, c), ConvSpec(c, c, 1)), (ConvSpec(c, c, 3, 1, c), ConvSpec(c, c, 1))]


def _dil_conv(c: int, stride: int) -> list[CellUnit]:
    return [(ConvSpec(c, c, 3, stride, c, dilation=2), ConvSpec(c, c, 1))]


def _skip(c: int, stride: int) -> list[CellUnit]:
    if stride != 1:
        raise ValueError("skip_connect on a cell input of a reduction cell (DARTS's FactorizedReduce) is not supported")
    return []


# The DARTS ops a cell may use: each maps (channels, stride) to its parametrised units, in order.
_CELL_OPS: dict[str, Callable[[int, int], list[CellUnit]]] = {
    "sep_conv_3x3": _sep_conv,
    "dil_conv_3x3": _dil_conv,
    "skip_connect": _skip,
    "max_pool_3x3": lambda c, stride: [],
}

# Liu et al. (ICLR 2019), genotypes.py of quark0/darts: the second-order search's CIFAR-10 cells.
DARTS_V2 = (
    CellSpec((("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
              ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)), (2, 3, 4, 5)),
    CellSpec((("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
              ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)), (2, 3, 4, 5)),
)


@dataclass(frozen=True)
class CellChain:
    """The chain of a cell type: its normal cell at stride 1, its reduction cell at stride 2.

    Called like any chain it lists every conv of the cell (both preprocessing convs, then each op's in order);
    `plan` says where each runs, which a flat list cannot.
    """

    normal: CellSpec
    reduce: CellSpec

    def plan(self, c_in: int, c_out: int, stride: int) -> tuple[CellSpec, int, list[CellUnit], list[list[CellUnit]]]:
        """The cell used at this stride, its node width C = C_out / |concat|, the preprocessing units and each
        op's units."""
        if stride not in (1, 2):
            raise ValueError(f"a cell has a normal (stride 1) and a reduction (stride 2) form, not stride {stride}")
        cell = self.normal if stride == 1 else self.reduce
        if c_out % len(cell.concat):
            raise ValueError(f"{c_out} channels do not split into {len(cell.concat)} concatenated cell nodes")
        width = c_out // len(cell.concat)
        preprocess = [(ConvSpec(c_in, width, 1),), (ConvSpec(c_in, width, 1),)]
        return cell, width, preprocess, [_CELL_OPS[op](width, stride if i < 2 else 1) for op, i in cell.ops]

    def __call__(self, c_in: int, c_out: int, stride: int) -> list[ConvSpec]:
        _, _, preprocess, ops = self.plan(c_in, c_out, stride)
        return [conv for units in (preprocess, *ops) for unit in units for conv in unit]


def _unit_module(unit: CellUnit) -> nn.Sequential:
    """ReLU -> convs -> BN. Not in place: a cell reads one state from several ops, and the block its input."""
    return nn.Sequential(nn.ReLU(inplace=False), *(c.build() for c in unit), nn.BatchNorm2d(unit[-1].c_out))


def _op_module(op: str, units: list[CellUnit], stride: int) -> nn.Module:
    if units:
        return nn.Sequential(*(_unit_module(u) for u in units))
    return nn.MaxPool2d(3, stride=stride, padding=1) if op == "max_pool_3x3" else nn.Identity()


class DartsCell(nn.Module):
    """A DARTS cell with both of its inputs fed by one tensor: preprocess twice, then nodes of summed op pairs."""

    def __init__(self, c_in: int, c_out: int, stride: int, chain: CellChain) -> None:
        super().__init__()
        cell, _, preprocess, units = chain.plan(c_in, c_out, stride)
        self.preprocess0, self.preprocess1 = (_unit_module(u) for u in preprocess)
        self.ops = nn.ModuleList(_op_module(op, u, stride if i < 2 else 1) for (op, i), u in zip(cell.ops, units))
        self.sources = [i for _, i in cell.ops]
        self.concat = list(cell.concat)

    def forward(self, x: Tensor) -> Tensor:
        states = [self.preprocess0(x), self.preprocess1(x)]
        for k in range(0, len(self.ops), 2):
            states.append(self.ops[k](states[self.sources[k]]) + self.ops[k + 1](states[self.sources[k + 1]]))
        return torch.cat([states[k] for k in self.concat], dim=1)


@dataclass(frozen=True)
class CellBlockType(BlockType):
    """A block whose body is a DARTS cell: the normal cell where the block keeps its size, the reduction cell
    where it strides.

    Mapping a cell (two inputs, the outputs of the two cells before it) onto a block (one input):
    - both cell inputs are the body's input (pre-activated in a WRN block), each through its own ReLU ->
      Conv1x1(C_in->C) -> BN preprocessing, as in DARTS where neither input needs FactorizedReduce;
    - C = C_out / 4, so the concatenated output (nodes 2..5) has the block's C_out channels and needs no
      projection, as a DARTS cell's output is the next cell's 4C-channel input;
    - the ops on the cell inputs of the reduction cell take the block's stride, as in DARTS;
    - the block's own shortcut is kept and added to the cell's output; a post-activation (ResNet) body ends in
      one more BN over C_out, like every other body of that style.
    Counts are exact in closed form from `CellChain.plan`: every unit is ReLU -> convs -> BN, pooling and
    identities have no parameters, and MACs count convolutions only (SPEC section 2), not max-pooling.
    """

    chain: CellChain

    def params(self, c_in: int, c_out: int, stride: int, post_activation: bool = False) -> int:
        """Closed-form trainable parameter count of the cell (convs + BN weight/bias) [+ trailing BN]."""
        _, _, preprocess, ops = self.chain.plan(c_in, c_out, stride)
        units = [u for group in (preprocess, *ops) for u in group]
        total = sum(c.params for u in units for c in u) + sum(2 * u[-1].c_out for u in units)
        return total + (2 * c_out if post_activation else 0)

    def macs(self, c_in: int, c_out: int, stride: int, size: int) -> int:
        """Closed-form multiply-accumulates of the cell's convs: an op on a cell input sees `size`, any other op
        the output size."""
        cell, _, preprocess, ops = self.chain.plan(c_in, c_out, stride)
        total = sum(u[0].macs(size, size) for u in preprocess)
        out_size = conv_out_size(size, 3, stride)
        for (_, source), units in zip(cell.ops, ops):
            h = size if source < 2 else out_size
            for conv in (c for u in units for c in u):
                h = conv_out_size(h, conv.kernel, conv.stride)
                total += conv.macs(h, h)
        return total

    def build(self, c_in: int, c_out: int, stride: int, post_activation: bool = False) -> nn.Sequential:
        """The body as `cell` [-> `bn`], so a post-activation block registers both under those names."""
        layers: OrderedDict[str, nn.Module] = OrderedDict(cell=DartsCell(c_in, c_out, stride, self.chain))
        if post_activation:
            layers["bn"] = nn.BatchNorm2d(c_out)
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


_REGISTRY: Registry[BlockType] = Registry(
    "block type", "a plugin's type needs that plugin loaded: blockswap --plugin MODULE_OR_FILE ...; in Python, "
    "blockswap.register_block_type")


def register_block_type(block: BlockType) -> BlockType:
    """Make `block` resolvable by name for genotypes, networks, checkpoints and the CLI.

    Registering the same type again is a no-op; another type under a taken
    name is refused. Returns the type, so it can be used as an expression.
    """
    if not isinstance(block, BlockType):
        raise BlockSwapError(f"register_block_type takes a BlockType, got {type(block).__name__}")
    return _REGISTRY.add(block.name, block)


def block_type(name: str) -> BlockType:
    """The registered type called `name`; BlockSwapError naming the choices if there is none.

    A bottleneck name of the published pattern (`ConvB{b}`, `A{n}B{b}`, `G{g}B{b}`) that is not registered yet
    is registered here, so such types resolve in every process without a plugin.
    """
    if name not in _REGISTRY and (made := _named_bottleneck(name)) is not None:
        register_block_type(made)
    return _REGISTRY[name]


def has_block_type(name: str) -> bool:
    """Whether `block_type(name)` resolves: registered, or a bottleneck name it registers on use."""
    return name in _REGISTRY or _named_bottleneck(name) is not None


_BOTTLENECK_NAME = re.compile(r"(?:Conv|A([1-9][0-9]*)|G([1-9][0-9]*))B([1-9][0-9]*)")


def _named_bottleneck(name: object) -> BlockType | None:
    """The bottleneck type a name of the published pattern stands for (None for any other name).

    `ConvB{b}`: dense, m = C_out / b; `A{n}B{b}`: n groups (n >= 2); `G{g}B{b}`: groups of g channels (g >= 2).
    """
    if not isinstance(name, str) or not (m := _BOTTLENECK_NAME.fullmatch(name)):
        return None
    groups, group_channels, ratio = (int(v) if v else 0 for v in m.groups())
    if groups == 1 or group_channels == 1:
        return None
    gamma = _n_groups(groups) if groups else _groups_of(group_channels) if group_channels else _dense
    return BlockType(name, "B", bottleneck_chain(ratio, gamma))


def bottleneck_name(ratio: int, groups: int = 1, group_channels: int | None = None) -> str:
    """The type name of Conv1x1(C_in->m) -> GConv3x3(m->m) -> Conv1x1(m->C_out) with C_out = ratio x m.

    Dense (`groups` 1): `ConvB{ratio}`; a fixed number of groups: `A{groups}B{ratio}`; with `group_channels`
    (groups of that many channels whatever m is): `G{group_channels}B{ratio}`. torchvision's ResNet-50 is
    `ConvB4`, wide_resnet50_2 `ConvB2`, resnext50_32x4d `A32B2`, resnext101_32x8d `A32B1`.
    """
    if group_channels is not None:
        return f"G{group_channels}B{ratio}"
    return f"ConvB{ratio}" if groups == 1 else f"A{groups}B{ratio}"


def registered_block_types() -> dict[str, BlockType]:
    """Every registered type by name, published ones first."""
    return dict(_REGISTRY)


DEFAULT_PALETTE = Palette(register_block_type(t) for t in _published_types())
PALETTE_NAMES: tuple[str, ...] = tuple(DEFAULT_PALETTE.names)


def _baseline_types() -> list[BlockType]:
    """Table 2's single-type baselines: registered so genotypes and `--palette` name them, never searched by default.

    MBConv6 is MobileNetV2's inverted residual, one per block, expanding the block's input 6x; like MobileNetV2
    and the published code's MBConv6 its projection ends in BN (no ReLU) in both block styles, and like that
    code it uses ReLU, not ReLU6. The block's own shortcut is kept. DARTS is `CellBlockType` over `DARTS_V2`.
    """
    return [BlockType("MBConv6", "baseline", inverted_residual_chain(6), trailing_bn=True),
            CellBlockType("DARTS", "baseline", CellChain(*DARTS_V2))]


BASELINE_NAMES: tuple[str, ...] = tuple(register_block_type(t).name for t in _baseline_types())


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
